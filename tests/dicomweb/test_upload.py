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
    assert [p.path.read_bytes() for p in parts] == contents
    assert [p.sha256 for p in parts] == [hashlib.sha256(c).hexdigest() for c in contents]
    assert [p.size for p in parts] == [len(c) for c in contents]
