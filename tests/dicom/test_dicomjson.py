"""The stored DICOM JSON (PS3.18 F.2) made from raw elements equals pydicom's, byte for byte.

:func:`dicomjson.reference_json` converts every element with pydicom (the encoder
the hub had before the raw reading); :func:`dicomjson.encode` must give the same
text on every shared file, read the three ways the hub reads them, and on
synthetic datasets covering each VR, empty and multiple values, nested sequences,
the three uncompressed transfer syntaxes and several character sets.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.charset import encode_string
from pydicom.dataset import Dataset

from pacs_hub.dicom import dicomjson
from pacs_hub.dicom.header import DEFER_SIZE, parse_instance
from pacs_hub.errors import HubError
from tests.conftest import DATA
from tests.dicom.encoded import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    SYNTAXES,
    Syntax,
    element,
    fragments,
    item,
    numbers,
    part10,
    sequence,
    tag_with_vr,
    text,
)

NOT_DICOM = {"README.md", "SHA256SUMS"}
SHARED_FILES = sorted(
    p.relative_to(DATA)
    for p in DATA.rglob("*")
    if p.is_file() and "LICENSES" not in p.parts and p.name not in NOT_DICOM
    if p.suffix not in (".txt", ".md")
)


def reference_text(ds: Dataset) -> str:
    """The JSON text the pydicom-only encoder gives, or the exception it raises."""
    try:
        found = dicomjson.reference_json(ds)
    except Exception as exc:  # the old encoder's failure is part of its behaviour
        return f"raised {type(exc).__name__}"
    return json.dumps(found, separators=(",", ":"), ensure_ascii=False)


def encoded_text(ds: Dataset) -> str:
    """The decompressed stored text :func:`dicomjson.encode` gives, or what it raises."""
    try:
        stored = dicomjson.encode(ds)
    except Exception as exc:
        return f"raised {type(exc).__name__}"
    return zlib.decompress(stored).decode("utf-8")


def assert_same(read: Callable[[], Dataset]) -> str:
    """Both encoders on two separate reads (conversion changes a dataset in place)."""
    expected = reference_text(read())
    assert encoded_text(read()) == expected
    return expected


# --- every shared file ------------------------------------------------------------------


@pytest.mark.parametrize("name", SHARED_FILES, ids=str)
def test_shared_file_read_from_memory(name: Path) -> None:
    data = (DATA / name).read_bytes()
    assert_same(lambda: pydicom.dcmread(io.BytesIO(data), force=True))


@pytest.mark.parametrize("name", SHARED_FILES, ids=str)
def test_shared_file_read_with_deferred_values(name: Path) -> None:
    """As the metadata backfill reads a blob: values over 1 KiB left on disk."""
    path = DATA / name
    assert_same(lambda: pydicom.dcmread(path, defer_size=1024, force=True))


@pytest.mark.parametrize("name", SHARED_FILES, ids=str)
def test_shared_file_after_header_parse(name: Path) -> None:
    """As ingest has it: the dataset the header parse returns (some elements converted)."""
    data = (DATA / name).read_bytes()
    try:
        parse_instance(data)
    except HubError:
        pytest.skip("refused at ingest")
    assert_same(lambda: parse_instance(data)[1])


def test_spooled_file_with_pixel_data_left_on_disk(tmp_path: Path) -> None:
    """STOW-RS parses a spooled file: pixel data beyond DEFER_SIZE is never read."""
    path = tmp_path / "us.dcm"
    path.write_bytes((DATA / "multiframe/us_multiframe_jpeg_baseline_120frames.dcm").read_bytes())
    assert path.stat().st_size > DEFER_SIZE
    text_out = assert_same(lambda: parse_instance(path)[1])
    assert '"7FE00010":{"vr":"OB","BulkDataURI":"7FE00010"}' in text_out


def test_plain_ct_needs_no_pydicom_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast reading is really used: no element of a plain CT goes through pydicom."""
    slow: list[str] = []
    original = dicomjson._pydicom_element

    def spy(ds: Dataset, tag: object, path: str, walk: dicomjson.Walker) -> object:
        slow.append(path)
        return original(ds, tag, path, walk)  # type: ignore[arg-type]

    monkeypatch.setattr(dicomjson, "_pydicom_element", spy)
    ct = sorted((DATA / "volumes/ct_philips_ingenuity_head_phantom_axial_5mm").iterdir())[0]
    stored = dicomjson.encode(parse_instance(ct.read_bytes())[1])
    assert slow == []
    assert json.loads(zlib.decompress(stored))["00080060"] == {"vr": "CS", "Value": ["CT"]}


# --- synthetic datasets -------------------------------------------------------------------

Body = Callable[[Syntax], bytes]


def _strings(s: Syntax) -> bytes:
    values = {
        "AE": "  STORESCU \\ B ",
        "AS": "045Y",
        "CS": "ORIGINAL\\PRIMARY\\\\AXIAL ",
        "DA": "20240101\\20240102",
        "DT": "20240101101010.5+0100",
        "TM": "101010.123 ",
        "LO": " lead\\trail \x00",
        "SH": "A\\",
        "UC": "long\\code",
        "LT": "a\\b \r\n text  ",
        "ST": "  ",
        "UT": "x\\y\x00",
        "UR": "http://host/p q\\r ",
        "UI": "1.2.3\\1.2.4\x00",
    }
    return b"".join(element(s, tag_with_vr(vr), vr, text(v)) for vr, v in values.items())


def _empty_values(s: Syntax) -> bytes:
    vrs = ["AE", "CS", "DA", "DS", "FD", "FL", "IS", "LO", "LT", "OB", "OW", "PN", "SH"]
    vrs += ["SL", "SQ", "SS", "ST", "TM", "UI", "UL", "UN", "US", "UT", "AT", "UV", "OF"]
    return b"".join(element(s, tag_with_vr(vr), vr, b"") for vr in vrs if vr != "UN")


def _person_names(s: Syntax) -> bytes:
    names = ["Doe^John", "=", "A\\\\B", "A==C", "Doe^Jane=^=", "  ", "X\\Y^Z ", "^^^^"]
    return b"".join(element(s, tag_with_vr("PN", i), "PN", text(n)) for i, n in enumerate(names))


def _numbers_as_text(s: Syntax) -> bytes:
    is_values = ["12", " -3 \\+4", "0012 ", "  ", "1.0", "abc", "1\\\\2", "1_0"]
    ds_values = ["1.5\\-2e3\\.5 \\ 5.", "nan", "1_0", "  ", "1\\\\2", " 1E+02", "inf", "1e999"]
    out = [element(s, tag_with_vr("IS", i), "IS", text(v)) for i, v in enumerate(is_values)]
    out += [element(s, tag_with_vr("DS", i), "DS", text(v)) for i, v in enumerate(ds_values)]
    return b"".join(out)


def _binary_numbers(s: Syntax) -> bytes:
    return b"".join(
        (
            element(s, tag_with_vr("US"), "US", numbers(s, "H", 512)),
            element(s, tag_with_vr("US", 1), "US", numbers(s, "H", 1, 2, 65535)),
            element(s, tag_with_vr("SS"), "SS", numbers(s, "h", -5, 7)),
            element(s, tag_with_vr("UL"), "UL", numbers(s, "L", 4000000000)),
            element(s, tag_with_vr("SL"), "SL", numbers(s, "l", -70000)),
            element(s, tag_with_vr("UV"), "UV", numbers(s, "Q", 2**63 + 1)),
            element(s, tag_with_vr("SV"), "SV", numbers(s, "q", -(2**40), 3)),
            element(s, tag_with_vr("FL"), "FL", numbers(s, "f", 0.1, float("nan"), -2.5)),
            element(s, tag_with_vr("FD"), "FD", numbers(s, "d", 1e-300, 2.0 / 3)),
            element(s, tag_with_vr("AT"), "AT", numbers(s, "H", 0x0010, 0x0010)),
            element(s, tag_with_vr("AT", 1), "AT", numbers(s, "H", 0x0028, 0x0010, 0x7FE0, 0x0010)),
            element(s, tag_with_vr("AT", 2), "AT", numbers(s, "H", 0x0028, 0x0010, 0x7FE0)),
        )
    )


def _binary_values(s: Syntax) -> bytes:
    return b"".join(
        (
            element(s, tag_with_vr("OB"), "OB", b"\x01\x02\x03\x00"),
            element(s, tag_with_vr("OB", 1), "OB", bytes(range(256)) * 300),  # over BULK_THRESHOLD
            element(s, tag_with_vr("OD"), "OD", numbers(s, "d", 1.5, 2.5)),
            element(s, tag_with_vr("OF"), "OF", numbers(s, "f", 1.5)),
            element(s, tag_with_vr("OL"), "OL", numbers(s, "L", 7)),
            element(s, tag_with_vr("OV"), "OV", numbers(s, "Q", 9)),
            element(s, tag_with_vr("OW"), "OW", b"\\\\ab"),
            element(s, 0x7FE00010, "OW", numbers(s, "H", *range(16))),
        )
    )


def _private_and_unknown(s: Syntax) -> bytes:
    return b"".join(
        (
            element(s, 0x00080000, "UL", numbers(s, "L", 10)),  # group length
            element(s, 0x00080070, "UN" if not s.implicit else "LO", text("ACME")),
            element(s, 0x00090010, "LO", text("NOBODY KNOWN")),
            element(s, 0x00091001, "UN", text("opaque")),
            element(s, 0x00290010, "LO", text("SIEMENS CSA HEADER")),
            element(s, 0x00291010, "UN" if not s.implicit else "OB", b"SV10\x04\x03"),
            element(s, 0x00291020, "OB", b"\x00\x01"),
            element(s, 0x00331001, "UN", b"\x01\x02"),  # no private creator
        )
    )


def _ambiguous(s: Syntax) -> bytes:
    return b"".join(
        (
            element(s, 0x00280103, "US", numbers(s, "H", 1)),
            element(s, 0x00280106, "SS", numbers(s, "h", -100)),
            element(s, 0x00281101, "SS", numbers(s, "h", 0, -32768, 16)),
            element(s, 0x00281201, "OW", numbers(s, "H", 1, 2, 3, 4)),
        )
    )


def _sequences(s: Syntax) -> bytes:
    ref = b"".join(
        (
            element(s, 0x00081150, "UI", text("1.2.840.10008.5.1.4.1.1.2\x00")),
            element(s, 0x00081155, "UI", text("1.2.3.4.5\x00")),
        )
    )
    inner = sequence(s, 0x00400260, [item(s, ref), item(s, b"", undefined=True)], undefined=True)
    nested = item(s, inner + element(s, 0x00400254, "LO", text("step")))
    icon = b"".join(
        (
            element(s, 0x00280010, "US", numbers(s, "H", 2)),
            element(s, 0x7FE00010, "OB", b"\x00" * 4),
        )
    )
    encapsulated = element(s, 0x00280011, "US", numbers(s, "H", 2)) + fragments(
        s, 0x7FE00010, [b"\xff\xd8\xff\xd9"]
    )
    private_item = element(s, 0x00090010, "LO", text("NOBODY")) + element(
        s, 0x00091001, "UN", b"\x05\x06"
    )
    return b"".join(
        (
            sequence(s, 0x00081140, [item(s, ref), item(s, ref, undefined=True)]),
            sequence(s, 0x00081111, []),
            sequence(s, 0x00082112, [item(s, b"")]),
            sequence(s, 0x00400275, [nested], undefined=True),
            sequence(s, 0x00880200, [item(s, icon), item(s, encapsulated, undefined=True)]),
            sequence(s, 0x00400555, [item(s, private_item)]),
        )
    )


def _implicit_items_in_un(s: Syntax) -> bytes:
    """PS3.5 6.2.2: a UN sequence of undefined length holds implicit VR items."""
    implicit = IMPLICIT_LE if s.little else s
    body = element(implicit, 0x0040A040, "CS", text("TEXT")) + element(
        implicit, 0x0040A160, "UT", text("hello")
    )
    return sequence(s, 0x0040A730, [item(implicit, body)], undefined=True, vr="UN")


CASES: dict[str, Body] = {
    "strings": _strings,
    "empty": _empty_values,
    "person names": _person_names,
    "IS and DS": _numbers_as_text,
    "binary numbers": _binary_numbers,
    "binary values": _binary_values,
    "private and unknown": _private_and_unknown,
    "ambiguous VRs": _ambiguous,
    "sequences": _sequences,
    "implicit items in UN": _implicit_items_in_un,
}


def _dataset(syntax: Syntax, body: bytes) -> Callable[[], Dataset]:
    data = part10(syntax, body)
    return lambda: pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["implicit LE", "explicit LE", "explicit BE"])
@pytest.mark.parametrize("case", CASES)
def test_synthetic_dataset(syntax: Syntax, case: str) -> None:
    expected = assert_same(_dataset(syntax, CASES[case](syntax)))
    assert not expected.startswith("raised")


CHARSETS = {
    "": ("latin-1", "Smith^Jérôme"),
    "ISO_IR 100": ("latin-1", "Buc^Jérôme"),
    "ISO_IR 192": ("utf-8", "Wang^XiaoDong=王^小東="),
    "GB18030": ("gb18030", "Wang^XiaoDong=王^小东="),
    "ISO_IR 138": ("iso8859_8", "שרון^דבורה"),
    "ISO_IR 999": ("latin-1", "Unknown^Charset"),
}


@pytest.mark.parametrize("syntax", [EXPLICIT_LE, IMPLICIT_LE], ids=["explicit", "implicit"])
@pytest.mark.parametrize("charset", CHARSETS)
def test_character_sets(syntax: Syntax, charset: str) -> None:
    """Text decoded in the dataset's Specific Character Set, and in an item's own one."""
    codec, name = CHARSETS[charset]
    own = element(syntax, 0x00080005, "CS", text("ISO_IR 192")) + element(
        syntax, 0x00100010, "PN", text("Ĳssel^Ŧom", "utf-8")
    )
    body = b"".join(
        (
            element(syntax, 0x00080005, "CS", text(charset)) if charset else b"",
            element(syntax, 0x00081030, "LO", text(name.split("=")[0] + "\\second ", codec)),
            element(syntax, 0x00100010, "PN", text(name, codec)),
            element(syntax, 0x00104000, "LT", text(name + " \\ note", codec)),
            sequence(
                syntax,
                0x00101002,
                [
                    item(syntax, own),
                    item(syntax, element(syntax, 0x00100020, "LO", text(name[:5], codec))),
                ],
            ),
        )
    )
    assert_same(_dataset(syntax, body))


def test_iso_2022_code_extensions() -> None:
    """Escape sequences (PS3.5 6.1.2.5) are left to pydicom: same text as before."""
    encoded = encode_string("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", ["shift_jis", "iso2022_jp"])
    assert b"\x1b$B" in encoded
    body = element(EXPLICIT_LE, 0x00080005, "CS", text("ISO 2022 IR 13\\ISO 2022 IR 87"))
    body += element(EXPLICIT_LE, 0x00100010, "PN", encoded + b" " * (len(encoded) % 2))
    expected = assert_same(_dataset(EXPLICIT_LE, body))
    assert "山田^太郎" in expected


def test_undecodable_text() -> None:
    """Bytes that are not UTF-8 under ISO_IR 192: pydicom's replacement characters."""
    body = element(EXPLICIT_LE, 0x00080005, "CS", text("ISO_IR 192"))
    body += element(EXPLICIT_LE, 0x00100010, "PN", b"Caf\xe9^X ")
    body += element(EXPLICIT_LE, 0x00100020, "LO", b"\xff\xfe")
    expected = assert_same(_dataset(EXPLICIT_LE, body))
    assert "\ufffd" in expected


def test_wrong_length_number_fails_as_before() -> None:
    """A US of 3 bytes: pydicom raises; the fast reading leaves it to pydicom."""
    body = element(EXPLICIT_LE, 0x00280010, "US", b"\x01\x02\x03")
    expected = assert_same(_dataset(EXPLICIT_LE, body))
    assert expected.startswith("raised")


# --- random elements ------------------------------------------------------------------------

STRING_VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"]
STRING_VRS += ["UC", "UI", "UR", "UT"]
ALPHABET = " \\\x00=^.+-eE0123456789AZaz\té\r"
RANDOM_CHARSETS = [None, "", "ISO_IR 100", "ISO_IR 192", "GB18030", "\\ISO 2022 IR 87"]
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "AT": "H"}
IS_COMPARABLE = 15
"""IS values compared with pydicom are cut to 15 characters (PS3.5 allows 12): pydicom
reads a larger integer through a float, exact only up to 2**53, the hub keeps it exact
(test_an_integer_string_beyond_doubles_keeps_every_digit)."""


@st.composite
def random_element(draw: st.DrawFn, syntax: Syntax) -> tuple[int, bytes]:
    vr = draw(st.sampled_from([*STRING_VRS, *NUMBER_FORMATS, "OB", "SQ"]))
    tag = tag_with_vr(vr, draw(st.integers(0, 3)))
    if vr in STRING_VRS:
        value = draw(
            st.one_of(
                st.text(ALPHABET, max_size=24).map(lambda t: t.encode("latin-1")),
                st.binary(max_size=12),
            )
        )
        if vr == "IS":
            value = value[:IS_COMPARABLE]
        if draw(st.booleans()) and not syntax.implicit:
            vr = "UN"  # a known tag sent as UN: read with its dictionary VR
    elif vr in NUMBER_FORMATS:
        value = draw(st.binary(max_size=16))
    elif vr == "OB":
        value = draw(st.binary(max_size=8))
    else:
        inner = draw(
            st.lists(st.tuples(st.sampled_from(STRING_VRS), st.text(ALPHABET)), max_size=3)
        )
        body = b"".join(
            element(
                syntax, tag_with_vr(v), v, (t[:IS_COMPARABLE] if v == "IS" else t).encode("latin-1")
            )
            for v, t in dict(inner).items()
        )
        return tag, sequence(syntax, tag, [item(syntax, body)], undefined=draw(st.booleans()))
    return tag, element(syntax, tag, vr, value)


@st.composite
def random_dataset(draw: st.DrawFn) -> tuple[Syntax, bytes]:
    syntax = draw(st.sampled_from(SYNTAXES))
    elements = dict(draw(st.lists(random_element(syntax), min_size=1, max_size=8)))
    charset = draw(st.sampled_from(RANDOM_CHARSETS))
    if charset is not None:
        elements[0x00080005] = element(syntax, 0x00080005, "CS", text(charset))
    return syntax, b"".join(elements[tag] for tag in sorted(elements))


def test_an_integer_string_beyond_doubles_keeps_every_digit() -> None:
    """IS 2**53 + 1 (longer than PS3.5's 12 characters, but sent): the value stays the
    integer received, where pydicom's reading (the reference) rounds it to 2**53."""
    syntax = SYNTAXES[0]
    body = element(syntax, tag_with_vr("IS"), "IS", b"9007199254740993")
    assert encoded_text(_dataset(syntax, body)()).endswith('"Value":[9007199254740993]}}')
    assert reference_text(_dataset(syntax, body)()).endswith('"Value":[9007199254740992]}}')


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dataset())
def test_random_elements(drawn: tuple[Syntax, bytes]) -> None:
    syntax, body = drawn
    assert_same(_dataset(syntax, body))


def test_number_helper_byte_order() -> None:
    """The test encoder itself: big endian really swaps bytes."""
    assert numbers(EXPLICIT_BE, "H", 1) == struct.pack(">H", 1) == b"\x00\x01"
