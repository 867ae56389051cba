"""The cold tier's storage (pacs_hub/storage/cold.py): compressed records read back byte
for byte, through the cache, erased, surveyed without the index, damage detected."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from pacs_hub.storage import cold, packs
from pacs_hub.storage.blobs import BlobStore
from tests.conftest import DATA

CT_FOLDER = DATA / "volumes" / "ct_philips_ingenuity_head_phantom_axial_5mm"


def real_ct(count: int) -> list[bytes]:
    files = sorted(path for path in CT_FOLDER.rglob("*") if path.is_file() and path.suffix != ".md")
    found = [path.read_bytes() for path in files]
    found = [data for data in found if data[128:132] == b"DICM"]
    assert len(found) >= count
    return found[:count]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "data")


def test_real_ct_compressed_losslessly_and_read_back_through_the_cache(store: BlobStore) -> None:
    slices = real_ct(3)
    keys = store.put_cold([(data, digest(data)) for data in slices])
    assert all(cold.is_cold(key) for key in keys)
    stored = sum(cold.place(key).stored for key in keys)
    assert stored < 0.7 * sum(map(len, slices))  # CT compresses (about 2.5x here)
    for key, data in zip(keys, slices, strict=True):
        assert cold.read(store.blobs, key) == data
        ref = store.ref(key)  # what every reader gets: the decompressed copy
        assert ref.read_bytes() == data and ref.whole_file
        assert ref.file.parent == store.blobs / cold.CACHE
        assert store.verify(key, digest(data)) and store.exists(key)
    # a copy already made is served as it is (no second decompression)
    again = store.ref(keys[0])
    os.utime(again.file, (1, 1))
    assert store.ref(keys[0]).file == again.file
    assert again.file.stat().st_mtime > 1  # used: touched, trimmed last


def test_the_cache_is_trimmed_least_recently_used_first(store: BlobStore) -> None:
    slices = real_ct(3)
    keys = store.put_cold([(data, digest(data)) for data in slices])
    refs = [store.ref(key) for key in keys]
    for age, ref in zip((300, 200, 100), refs, strict=True):
        when = time.time() - 3600 - age
        os.utime(ref.file, (when, when))
    size = refs[0].size
    use = cold.trim_cache(store.blobs, max_bytes=2 * size + size // 2)
    assert use.removed == 1 and not refs[0].file.exists() and refs[1].file.exists()
    kept = cold.trim_cache(store.blobs, max_bytes=0, keep_seconds=10 * 3600)
    assert kept.removed == 0  # used within keep_seconds: never removed
    assert store.ref(keys[0]).read_bytes() == slices[0]  # decompressed again when asked
    assert cold.clear_cache(store.blobs) == 3


def test_erased_records_are_gone_and_surveyed_as_such(store: BlobStore) -> None:
    slices = real_ct(2)
    keys = store.put_cold([(data, digest(data)) for data in slices])
    cached = store.ref(keys[0]).file
    assert store.erase(keys[0]) is True
    assert store.erase(keys[0]) is False
    assert not cached.exists()  # its decompressed copy went with it
    with pytest.raises(FileNotFoundError):
        store.ref(keys[0])
    assert store.problem(keys[0], digest(slices[0])) == "missing"
    assert not store.exists(keys[0]) and store.exists(keys[1])
    (pack,) = cold.cold_packs(store.blobs)
    found = list(cold.survey(pack))
    assert [type(item).__name__ for item in found] == ["Erased", "Found"]
    assert isinstance(found[1], cold.Found)
    assert (found[1].key, found[1].sha256, found[1].data) == (keys[1], digest(slices[1]), slices[1])
    with pytest.raises(ValueError):
        cold.erase(store.blobs, keys[1].replace(":", ":1", 1))  # no record starts there


def test_a_damaged_record_is_said_and_the_next_one_found(store: BlobStore) -> None:
    slices = real_ct(3)
    keys = store.put_cold([(data, digest(data)) for data in slices])
    where = cold.place(keys[1])
    with where.path(store.blobs).open("r+b") as fp:
        fp.seek(where.offset + where.stored // 2)
        fp.write(b"\x00" * 64)
    assert store.problem(keys[1], digest(slices[1])) is not None
    assert store.problem(keys[0], digest(slices[0])) is None
    with pytest.raises(cold.ColdRecordError):
        store.ref(keys[1])
    found = list(cold.survey(where.path(store.blobs)))
    assert [type(item).__name__ for item in found] == ["Found", "Unreadable", "Found"]
    assert isinstance(found[1], packs.Unreadable) and not found[1].end
    assert [item.key for item in found if isinstance(item, cold.Found)] == [keys[0], keys[2]]


def test_keys_no_cold_writer_makes_are_refused(store: BlobStore) -> None:
    for key in ("cold/x.zpack:1:2", "cold/../a.zpack:56:1:1", "cold/a.zpack:-1:1:1"):
        with pytest.raises(ValueError):
            cold.place(key)
        assert not store.exists(key)
