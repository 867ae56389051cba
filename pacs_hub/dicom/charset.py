"""Specific Character Set (0008,0005) for answers built from decoded index values.

The index keeps strings decoded (Unicode). An answer is encoded in the character
set the peer used in its request when that set can encode every value, else in
UTF-8 (ISO_IR 192): PS3.5 6.1 (character repertoires) and PS3.4 C.4.1.1.3
(the Identifier of a C-FIND response carries its own Specific Character Set).
ASCII-only answers need none.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings, custom_encoders

UTF8 = "ISO_IR 192"
DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


def charset_terms(value: Any) -> list[str]:
    """The defined terms of a Specific Character Set value (str, list or None)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [term.strip() for term in value.split("\\")]
    return [str(term).strip() for term in value]


@lru_cache(maxsize=64)
def _python_encoding(term: str) -> str:
    """Python codec for one defined term; the default repertoire is plain ASCII."""
    if term in DEFAULT_REPERTOIRE:
        return "ascii"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown term falls back to the default
        return convert_encodings([term])[0]


def _encodes(char: str, encoding: str) -> bool:
    encoder = custom_encoders.get(encoding)
    try:
        if encoder is not None:
            encoder(char, errors="strict")
        else:
            char.encode(encoding, errors="strict")
    except (UnicodeError, LookupError):
        return False
    return True


def can_encode(text: str, terms: Sequence[str]) -> bool:
    """Whether every character of ``text`` is in one of the character sets ``terms``.

    With code extensions (PS3.5 6.1.2.5) each character may come from any of the
    listed sets; ASCII is in all of them (G0 of every DICOM character set).
    """
    if text.isascii():
        return True
    encodings = [_python_encoding(term) for term in terms] or ["ascii"]
    return all(char.isascii() or any(_encodes(char, e) for e in encodings) for char in text)


def answer_charset(request_terms: Sequence[str], texts: Iterable[str]) -> list[str]:
    """The Specific Character Set an answer holding ``texts`` should declare.

    The request's own terms when they can encode every text, ``ISO_IR 192`` when
    they cannot, and none (empty list) for an all-ASCII answer to a request
    that declared none.
    """
    values = list(texts)
    if all(can_encode(text, request_terms) for text in values):
        return list(request_terms)
    return [UTF8]
