"""Attribute matching of PS3.4 C.2.2.2 (placeholder: normalisation only, see find)."""

from __future__ import annotations


def normalise_name(name: str) -> str:
    """The form of a Person Name (PN) used for matching: upper case, spaces folded.

    PS3.4 C.2.2.2.1 lets PN matching be case-insensitive; the stored name is kept as
    received and answers always return it unchanged.
    """
    return " ".join(name.upper().split())
