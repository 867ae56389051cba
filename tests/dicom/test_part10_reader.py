"""The fast Part 10 reader gives exactly what pydicom's dcmread gives, or steps aside.

Its contract (pacs_hub/dicom/part10_reader.py): for the plain case, the same
FileDataset as ``dcmread(BytesIO(data))`` (same raw elements, file meta, preamble,
encodings); for anything else None, so the caller reads with pydicom.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import FileDataset

from pacs_hub.dicom.part10_reader import read_part10
from tests.dicom import encoded as enc

DATA = Path(__file__).parents[3] / "shared" / "data" / "dicom"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _reference(data: bytes) -> tuple[FileDataset | None, bool]:
    """dcmread's dataset (None when it raises) and whether it warned."""
    slow, caught = _warnings(lambda: pydicom.dcmread(io.BytesIO(data)))
    return slow, bool(caught)


def _warnings(
    read: Callable[[], FileDataset | None], *, may_raise: bool = True
) -> tuple[FileDataset | None, set[str]]:
    """What ``read`` returns (None when it raises and ``may_raise``) and its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = read()
        except Exception:
            if not may_raise:
                raise
            ds = None
    return ds, {str(w.message) for w in caught}


def _assert_same(fast: FileDataset, slow: FileDataset) -> None:
    assert fast.preamble == slow.preamble
    assert list(fast.file_meta._dict.items()) == list(slow.file_meta._dict.items())
    assert list(fast._dict.items()) == list(slow._dict.items())
    assert fast.original_encoding == slow.original_encoding
    assert fast.original_character_set == slow.original_character_set
    assert fast._character_set == slow._character_set
    assert fast.file_meta.original_encoding == slow.file_meta.original_encoding


def _files() -> list[Path]:
    skip = {".md", ".txt", ".json"}
    return sorted(
        p
        for p in DATA.rglob("*")
        if p.is_file() and p.suffix not in skip and "LICENSES" not in p.parts
        if p.name != "SHA256SUMS"
    )


def test_every_real_file_reads_as_pydicom_reads_it_or_is_left_to_pydicom() -> None:
    fast = 0
    for path in _files():
        data = path.read_bytes()
        ds = read_part10(data)
        if ds is None:
            continue
        slow, warned = _reference(data)
        assert slow is not None and not warned, path
        _assert_same(ds, slow)
        fast += 1
    assert fast >= 250  # the Explicit/Implicit VR Little Endian files of the shared data


def test_deflated_files_are_left_to_pydicom() -> None:  # PS3.5 A.5
    data = (DATA / "transfer_syntaxes/deflated_explicit_le_clunie.dcm").read_bytes()
    assert read_part10(data) is None


@pytest.mark.parametrize(
    "name",
    [
        "transfer_syntaxes/htj2k_lossy_rgb.dcm",
        "multiframe/us_multiframe_jpeg_baseline_120frames.dcm",
    ],
)
def test_encapsulated_pixel_data_is_read_item_by_item_as_pydicom_reads_it(name: str) -> None:
    data = (DATA / name).read_bytes()
    ds = read_part10(data)
    assert ds is not None
    slow, _ = _reference(data)
    assert slow is not None
    _assert_same(ds, slow)
    assert ds._dict[0x7FE00010].length == 0xFFFFFFFF


def test_encapsulated_pixel_data_without_its_delimiter_is_left_to_pydicom() -> None:
    data = (DATA / "transfer_syntaxes/htj2k_lossy_rgb.dcm").read_bytes()
    assert data.endswith(b"\xfe\xff\xdd\xe0\0\0\0\0")
    assert read_part10(data[:-8]) is None
    assert read_part10(data[:-4] + b"\x01\0\0\0") is None


def test_undefined_length_sequences_are_left_to_pydicom() -> None:
    data = (DATA / "multiframe/xa_multiframe_jpeg_baseline_96frames.dcm").read_bytes()
    assert read_part10(data) is None  # (0008,2112) and others: undefined-length SQ


def _body(syntax: enc.Syntax) -> bytes:
    return b"".join(
        [
            enc.element(syntax, 0x00080005, "CS", b"ISO_IR 100"),
            enc.element(syntax, 0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
            enc.element(syntax, 0x00080018, "UI", b"1.2.3.4\0"),
            enc.element(syntax, 0x00080060, "CS", b"CT"),
            enc.element(syntax, 0x00100010, "PN", enc.text("Müller^Hélène")),
            enc.element(syntax, 0x00100020, "LO", b""),
            enc.element(syntax, 0x00280010, "US", enc.numbers(syntax, "H", 2)),
            enc.element(syntax, 0x7FE00010, "OW", b"\x01\x02\x03\x04"),
        ]
    )


SYNTAXES = {s.uid: s for s in (enc.IMPLICIT_LE, enc.EXPLICIT_LE, enc.EXPLICIT_BE)}


@pytest.mark.parametrize("uid", [enc.IMPLICIT_LE.uid, enc.EXPLICIT_LE.uid])
def test_little_endian_files_are_read_by_the_fast_reader(uid: str) -> None:
    data = enc.part10(SYNTAXES[uid], _body(SYNTAXES[uid]))
    ds = read_part10(data)
    assert ds is not None
    slow, warned = _reference(data)
    assert slow is not None and not warned
    _assert_same(ds, slow)
    assert str(ds.PatientName) == "Müller^Hélène"


def test_big_endian_sequences_and_undefined_lengths_are_left_to_pydicom() -> None:
    big = enc.EXPLICIT_BE
    assert read_part10(enc.part10(big, _body(big))) is None
    explicit = enc.EXPLICIT_LE
    item = enc.item(explicit, enc.element(explicit, 0x00080100, "SH", b"T-D1100 "))
    with_sequence = _body(explicit) + enc.sequence(explicit, 0x00400275, [item], undefined=True)
    assert read_part10(enc.part10(explicit, with_sequence)) is None
    no_magic = bytearray(enc.part10(explicit, _body(explicit)))
    no_magic[128:132] = b"DICN"
    assert read_part10(bytes(no_magic)) is None


@pytest.mark.parametrize("uid", [enc.IMPLICIT_LE.uid, enc.EXPLICIT_LE.uid])
def test_repeated_or_unordered_elements_are_left_to_pydicom(uid: str) -> None:
    syntax = SYNTAXES[uid]
    data = bytearray(enc.part10(syntax, _body(syntax)))
    assert data[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) File Meta group length
    data[134] = 2  # now a second (0002,0002), before the first one (a damaged byte)
    assert read_part10(bytes(data)) is None
    body = _body(syntax)
    patient = enc.element(syntax, 0x00100010, "PN", enc.text("Müller^Hélène"))
    swapped = body.replace(patient, b"") + patient  # Patient's Name after Pixel Data
    assert read_part10(enc.part10(syntax, swapped)) is None
    repeated = body.replace(patient, patient + patient)
    assert read_part10(enc.part10(syntax, repeated)) is None


@settings(max_examples=300, deadline=None)
@given(
    syntax=st.sampled_from([enc.IMPLICIT_LE, enc.EXPLICIT_LE]),
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
)
def test_damaged_files_read_as_pydicom_reads_them_or_are_left_to_it(
    syntax: enc.Syntax, cut: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(enc.part10(syntax, _body(syntax)))
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    damaged = bytes(data[: len(data) - cut])
    # It must never raise: the caller reads with pydicom when it returns None.
    fast, fast_warnings = _warnings(lambda: read_part10(damaged), may_raise=False)
    if fast is None:
        return
    slow, slow_warnings = _warnings(lambda: pydicom.dcmread(io.BytesIO(damaged)))
    assert slow is not None
    _assert_same(fast, slow)
    # The same warnings (a bad value pydicom converts while reading): none of reading.
    assert fast_warnings == slow_warnings
