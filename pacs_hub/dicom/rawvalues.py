"""Element values read straight from their encoded bytes (PS3.5 6.2, 7.1), no pydicom objects.

Each function here gives what pydicom's conversion of the same raw element gives,
for the values it is sure about, and raises :class:`NeedsPydicom` for anything else
(a code extension escape, a value that does not decode, an IS/DS that is not a plain
number, an ambiguous VR...), so that the caller converts that element the slow way.
The decisions mirror pydicom 3's ``values.convert_value`` and ``DataElement``:

* AE: Latin-1, split on backslash, each value stripped;
* AS, CS, DA, DT, TM: Latin-1, trailing spaces and NULs removed, then split;
* UI: the same, then each value stripped;
* SH, LO, UC: Specific Character Set (PS3.5 6.1), split, each value right-stripped;
* ST, LT, UT: Specific Character Set, right-stripped, never split;
* PN: like SH, then component groups split on ``=`` (PS3.5 6.2.1);
* IS, DS: Latin-1 decimal strings;
* binary numbers: struct with the element's byte order.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import pydicom.hooks as pydicom_hooks
from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import _LUT_DESCRIPTOR_TAGS

UNDEFINED_LENGTH = 0xFFFFFFFF
ESC = 0x1B
AMBIGUOUS_VRS = frozenset({"US or SS", "OB or OW", "US or OW", "US or SS or OW"})
NUMBER_FORMATS = {
    "US": "H",
    "SS": "h",
    "UL": "L",
    "SL": "l",
    "UV": "Q",
    "SV": "q",
    "FL": "f",
    "FD": "d",
}
NUMBER_SIZES = {vr: struct.calcsize("=" + fmt) for vr, fmt in NUMBER_FORMATS.items()}
TRIMMED_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})
"""Default repertoire VRs read by right-stripping spaces and NULs, then splitting."""
MULTI_TEXT_VRS = frozenset({"SH", "LO", "UC"})
SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
PLAIN_STRING_VRS = TRIMMED_VRS | MULTI_TEXT_VRS | SINGLE_TEXT_VRS | {"AE", "UI", "UR"}
"""VRs whose values pydicom holds as plain ``str`` (UI as its ``str`` subclass)."""
BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
IS_TOKEN = re.compile(r" *[+-]?[0-9]+ *")
DS_TOKEN = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
LUT_DESCRIPTORS = frozenset(int(tag) for tag in _LUT_DESCRIPTOR_TAGS)


class NeedsPydicom(Exception):
    """The fast reading cannot vouch for this element: convert it with pydicom."""


def pydicom_settings_supported() -> bool:
    """Whether pydicom is configured the way the fast reading assumes (its defaults)."""
    return (
        not config.datetime_conversion
        and not config.use_DS_numpy
        and not config.use_IS_numpy
        and not config.use_DS_decimal
        and not config.use_none_as_empty_text_VR_value
        and config.replace_un_with_known_vr
        and config.settings.infer_sq_for_un_vr
        and config.settings.reading_validation_mode != config.RAISE
        and pydicom_hooks.hooks.raw_element_vr is pydicom_hooks.raw_element_vr
        and pydicom_hooks.hooks.raw_element_value is pydicom_hooks.raw_element_value
        and not pydicom_hooks.hooks.raw_element_kwargs
    )


def dataset_encodings(ds: Dataset) -> list[str]:
    """The codecs pydicom decodes the text of ``ds`` with (its own or inherited charset)."""
    found = ds.original_character_set or ds._character_set
    if isinstance(found, str):
        return [found]
    return list(found) or [default_encoding]


@lru_cache(maxsize=4096)
def public_vr(tag: int) -> str | None:
    """The dictionary VR of a public tag (repeating groups included), None if unknown."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


@lru_cache(maxsize=1024)
def _private_vr(tag: int, creator: str) -> str:
    try:
        return str(private_dictionary_VR(tag, creator))
    except KeyError:
        return "UN"


def element_vr(tag: int, vr: str | None, value: bytes | None, creator: Any) -> str:
    """The VR pydicom converts a raw element with (hook ``raw_element_vr``).

    ``creator`` is called with the private creator tag when the VR depends on the
    Private Creator value (a private element without an explicit VR).
    """
    is_private = bool(tag & 0x10000)
    if vr is None:
        found = public_vr(tag)
        if found is not None:
            return found
        if not is_private:
            raise NeedsPydicom("tag not in the dictionary")
        return _private_element_vr(tag, creator)
    if vr == "UN":
        if is_private:
            return _private_element_vr(tag, creator)
        if value is None or len(value) < 0xFFFF:
            return public_vr(tag) or "UN"
    return vr


def _private_element_vr(tag: int, creator: Any) -> str:
    element = tag & 0xFFFF
    if 0x0010 <= element < 0x0100:
        return "LO"
    if not element & 0xFF00:
        return "UN"
    name = creator((tag & 0xFFFF0000) | (element >> 8))
    return _private_vr(tag, name) if name is not None else "UN"


def decode_text(value: bytes, encodings: Sequence[str]) -> str:
    """Text of a SH/LO/UC/ST/LT/UT/PN value in the dataset's character set."""
    if ESC in value:
        raise NeedsPydicom("ISO 2022 code extension")
    try:
        return value.decode(encodings[0])
    except (UnicodeError, LookupError) as exc:
        raise NeedsPydicom("undecodable text") from exc


def _latin1(value: bytes) -> str:
    return value.decode("latin-1")


def _split(text: str) -> list[str]:
    """pydicom's values: one empty value means none (VM 0)."""
    parts = text.split("\\")
    return [] if parts == [""] else parts


def string_values(vr: str, value: bytes, encodings: Sequence[str]) -> list[str]:
    """The values of a string VR (not PN, IS, DS) as pydicom holds them."""
    if vr in TRIMMED_VRS:
        return _split(_latin1(value).rstrip(" \x00"))
    if vr in MULTI_TEXT_VRS:
        parts = [part.rstrip("\x00 ") for part in decode_text(value, encodings).split("\\")]
        return [] if parts == [""] else parts
    if vr in SINGLE_TEXT_VRS:
        text = decode_text(value, encodings).rstrip("\x00 ")
        return [text] if text else []
    if vr == "UI":  # pydicom's UID strips each value
        parts = [part.strip() for part in _latin1(value).rstrip("\x00 ").split("\\")]
        return [] if parts == [""] else parts
    if vr == "AE":
        parts = [part.strip() for part in _latin1(value).split("\\")]
        return [] if parts == [""] else parts
    if vr == "UR":  # never split (pydicom keeps a backslash in a UR value)
        text = _latin1(value).rstrip()
        return [text] if text else []
    raise NeedsPydicom(f"VR {vr}")


def person_names(value: bytes, encodings: Sequence[str]) -> list[tuple[str, ...]]:
    """Component groups of each PN value, trailing empty groups dropped (PS3.5 6.2.1)."""
    text = decode_text(value.rstrip(b"\x00 "), encodings)
    names = []
    for name in text.split("\\"):
        groups = name.split("=")
        while groups and not groups[-1]:
            groups.pop()
        names.append(tuple(groups))
    if len(names) == 1 and not names[0]:
        return []
    if not all(names):
        raise NeedsPydicom("an empty name among several")  # pydicom leaves the element out
    return names


def integer_strings(value: bytes) -> list[str]:
    """The IS values as written (each a plain integer), or [] for none."""
    tokens = _latin1(value).rstrip(" \x00").split("\\")
    if tokens == [""]:
        return []
    if not all(IS_TOKEN.fullmatch(token) for token in tokens):
        raise NeedsPydicom("IS value not a plain integer")
    return tokens


def decimal_strings(value: bytes) -> list[str]:
    """The DS values as written (each a plain decimal number), or [] for none."""
    tokens = _latin1(value).strip().rstrip(" \x00").split("\\")
    if tokens == [""]:
        return []
    if not all(DS_TOKEN.fullmatch(token) for token in tokens):
        raise NeedsPydicom("DS value not a plain decimal")
    return tokens


def numbers(tag: int, vr: str, value: bytes, little: bool) -> list[Any]:
    """Binary numbers (US, SS, UL, SL, UV, SV, FL, FD) in the element's byte order."""
    size = NUMBER_SIZES[vr]
    if len(value) % size or (tag in LUT_DESCRIPTORS and vr != "US"):
        raise NeedsPydicom("length not a multiple of the value size, or signed LUT")
    count = len(value) // size
    return list(struct.unpack(f"{'<' if little else '>'}{count}{NUMBER_FORMATS[vr]}", value))


def tags(value: bytes, little: bool) -> list[str]:
    """AT values as 8 hex digits (PS3.18 F.2.3)."""
    if len(value) % 4:
        raise NeedsPydicom("AT length not a multiple of 4")
    pairs = struct.unpack(f"{'<' if little else '>'}{len(value) // 2}H", value)
    return [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]


@lru_cache(maxsize=256)
def charset_encodings(value: bytes) -> tuple[str, ...]:
    """Python codecs of a raw Specific Character Set (0008,0005) value, as pydicom reads it."""
    terms = _latin1(value).rstrip(" \x00").split("\\")
    return tuple(convert_encodings(terms[0] if len(terms) == 1 else terms))
