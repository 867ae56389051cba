"""The multipart spooler (RFC 2046 5.1) on its own: parts written and hashed as fed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pacs_hub.dicomweb.upload import MultipartSpooler


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_each_part_is_written_and_hashed_whatever_the_chunking(tmp_path: Path, chunk: int) -> None:
    contents = [os.urandom(10_000), b"", b"--not-the-boundary\r\n" * 50, os.urandom(3)]
    boundary = "b0undary"
    body = b"preamble\r\n" + b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        for data in contents
    )
    body += f"--{boundary}--\r\nepilogue".encode()
    names = iter(range(100))
    spooler = MultipartSpooler(boundary, lambda: tmp_path / f"part{next(names)}")
    for start in range(0, len(body), chunk):
        spooler.feed(body[start : start + chunk])
    parts = spooler.finish()
    assert all(p.path is not None for p in parts if p.size)  # no budget: every byte to files
    assert [p.path.read_bytes() if p.path else bytes(p.data or b"") for p in parts] == contents
    assert [p.sha256 for p in parts] == [hashlib.sha256(c).hexdigest() for c in contents]
    assert [p.size for p in parts] == [len(c) for c in contents]


def test_parts_stay_in_memory_within_the_budget_and_the_rest_goes_to_files(
    tmp_path: Path,
) -> None:
    contents = [os.urandom(3000), os.urandom(4000), os.urandom(2000), b"", os.urandom(9000)]
    boundary = "bb"
    body = (
        b"".join(f"--{boundary}\r\n\r\n".encode() + data + b"\r\n" for data in contents)
        + f"--{boundary}--".encode()
    )
    names = iter(range(100))
    spooler = MultipartSpooler(boundary, lambda: tmp_path / f"part{next(names)}", 8000)
    for start in range(0, len(body), 1000):  # parts arrive a piece at a time
        spooler.feed(body[start : start + 1000])
    parts = spooler.finish()
    # 3000 + 4000 fit in 8000; the third would not (it spills, its first bytes
    # included), the empty one does; the last is over the budget alone.
    assert [p.data is not None for p in parts] == [True, True, False, True, False]
    assert [bytes(p.data) if p.data is not None else p.path.read_bytes() for p in parts] == (
        contents
    )
    assert [p.sha256 for p in parts] == [hashlib.sha256(c).hexdigest() for c in contents]
    assert sorted(tmp_path.iterdir()) == [tmp_path / "part0", tmp_path / "part1"]
    spooler.discard()
    assert list(tmp_path.iterdir()) == []
