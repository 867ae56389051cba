"""Pack files (storage/packs.py) and blob references (storage/blob_ref.py)."""

from __future__ import annotations

import errno
import gc
import io
import itertools
import os
import threading
import time
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacs_hub.dicom import frames
from pacs_hub.errors import OutOfResources
from pacs_hub.storage import blobs as blobs_module
from pacs_hub.storage import packs
from pacs_hub.storage.blob_ref import BlobReader, BlobRef
from pacs_hub.storage.blobs import BadBlobKey, BlobStore, sha256_hex
from pacs_hub.storage.packs import PackWriter
from tests.conftest import DATA

CT_FILES = sorted((DATA / "volumes" / "ct_philips_ingenuity_head_phantom_axial_5mm").iterdir())


def _append(writer: PackWriter, data: bytes) -> tuple[str, int]:
    return writer.append(data, sha256_hex(data))


def _open_packs() -> set[str]:
    """The pack files this process holds open."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:  # the listing's own descriptor is gone once listed
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.endswith(packs.PACK_SUFFIX):
            held.add(target)
    return held


def test_small_blobs_share_a_pack_and_read_back_whole(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    contents = [os.urandom(n) for n in (1, 1000, 70_000, 3)]
    keys = [store.put(data, sha256_hex(data)) for data in contents]
    assert all(key.startswith("packs/") for key in keys)
    assert len({key.split(":")[0] for key in keys}) == 1  # one pack
    assert [store.read(key) for key in keys] == contents
    assert all(
        store.verify(key, sha256_hex(data)) for key, data in zip(keys, contents, strict=True)
    )
    (pack,) = (tmp_path / "blobs" / "packs").iterdir()
    found = [(r.offset, r.size, r.sha256) for r in packs.records(pack)]
    assert found == [
        (store.ref(k).offset, len(d), sha256_hex(d)) for k, d in zip(keys, contents, strict=True)
    ]
    assert pack.stat().st_size == sum(packs.HEADER.size + len(d) for d in contents)
    assert list((tmp_path / "blobs").rglob("*.dcm")) == []


def test_a_blob_larger_than_the_pack_limit_is_a_file_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs_module, "PACKED_MAX", 100)
    store = BlobStore(tmp_path)
    small, large = b"s" * 100, os.urandom(101)
    assert store.put(small, sha256_hex(small)).startswith("packs/")
    key = store.put(large, sha256_hex(large))
    assert key == BlobStore.key_for(sha256_hex(large))
    ref = store.ref(key)
    assert (ref.offset, ref.size) == (0, 101) and ref.whole_file
    assert store.read(key) == large
    assert not store.ref(store.put(small, sha256_hex(small))).whole_file


def test_a_dicom_file_in_a_pack_reads_like_the_file_deferred_values_included(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path)
    keys = [store.put(p.read_bytes(), sha256_hex(p.read_bytes())) for p in CT_FILES[:3]]
    ref = store.ref(keys[2])
    assert ref.offset > 0
    from_pack = pydicom.dcmread(ref.open(), defer_size=256)
    raw = from_pack.get_item(0x7FE00010, keep_deferred=True)
    assert raw is not None and raw.value is None  # deferred: read back from the stream
    from_file = pydicom.dcmread(CT_FILES[2])
    assert from_pack.PixelData == from_file.PixelData
    assert from_pack.SOPInstanceUID == from_file.SOPInstanceUID
    assert not isinstance(ref.open(), io.BufferedReader)  # pydicom would re-open by name
    assert getattr(ref.open(), "name", None) is None


def test_threads_appending_at_once_get_disjoint_ranges(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    written: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        for n in range(40):
            data = bytes([seed]) * (1 + (seed * 7919 + n * 104_729) % 50_000)
            key = store.put(data, sha256_hex(data))
            with lock:
                written.append((key, data))

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(written) == 320
    assert all(store.read(key) == data for key, data in written)
    ranges = sorted((store.ref(key).offset, store.ref(key).size) for key, _ in written)
    h = packs.HEADER.size
    assert all(a + n + h == b for (a, n), (b, _) in itertools.pairwise(ranges))
    assert sum(h + n for _, n in ranges) == sum(
        p.stat().st_size for p in (tmp_path / "blobs" / "packs").iterdir()
    )


def test_a_full_pack_is_closed_and_the_next_blob_starts_another(tmp_path: Path) -> None:
    before = _open_packs()
    writer = PackWriter(tmp_path / "packs", pack_bytes=1000)
    places = [_append(writer, bytes([i]) * 400) for i in range(5)]
    names = [name for name, _ in places]
    assert names[0] == names[1] != names[2] == names[3] != names[4]  # 2 x 400 fit, 3 do not
    h = packs.HEADER.size
    assert [offset for _, offset in places] == [h, 400 + 2 * h, h, 400 + 2 * h, h]
    assert _open_packs() - before == {
        str(tmp_path / "packs" / names[4])
    }  # only the pack in use stays open
    oversized = _append(writer, b"x" * 5000)  # bigger than a pack: alone in a new one
    assert oversized[1] == h and oversized[0] not in names
    writer.close()
    assert _open_packs() == before


def test_after_a_fork_the_child_never_appends_to_the_parents_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = PackWriter(tmp_path / "packs")
    parent_pack, _ = _append(writer, b"parent")
    monkeypatch.setattr(packs.os, "getpid", lambda: -1)
    child_pack, offset = _append(writer, b"child")
    assert child_pack != parent_pack and offset == packs.HEADER.size


def test_the_last_store_of_a_folder_gone_its_pack_is_closed(tmp_path: Path) -> None:
    gc.collect()  # stores other tests left for the collector close their packs now
    before = _open_packs()
    store = BlobStore(tmp_path)
    again = BlobStore(tmp_path)
    key = store.put(b"one", sha256_hex(b"one"))
    other = again.put(b"two", sha256_hex(b"two"))
    assert key.split(":")[0] == other.split(":")[0]  # one writer per folder and process
    del store, again
    gc.collect()
    assert _open_packs() == before


@pytest.mark.parametrize(
    "key",
    [
        "../index.sqlite3",
        "ab/../../x.dcm",
        "ab/cd/ef.dcm",
        "packs/../x:0:1",
        "packs/x.pack:1",
        "packs/x.pack:a:1",
        "packs/x.pack:-1:1",
        "packs/.hidden:0:1",
        "",
    ],
)
def test_keys_no_store_writes_are_refused(tmp_path: Path, key: str) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(BadBlobKey):
        store.ref(key)
    assert not store.exists(key) and not store.verify(key, "0" * 64)


def test_a_blob_missing_cut_short_or_changed_does_not_verify(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(5000)
    key = store.put(data, sha256_hex(data))
    ref = store.ref(key)
    assert store.exists(key) and store.verify(key, sha256_hex(data))
    with ref.file.open("r+b") as fp:
        fp.seek(ref.offset + 10)
        fp.write(b"\x00" if data[10] else b"\x01")
    assert not store.verify(key, sha256_hex(data))
    os.truncate(ref.file, ref.offset + 100)
    assert not store.exists(key) and not store.verify(key, sha256_hex(data))
    ref.file.unlink()
    assert not store.exists(key) and not store.verify(key, sha256_hex(data))
    with pytest.raises(FileNotFoundError):
        store.read(key)


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(-1, 9000)),
        st.tuples(st.just("seek"), st.integers(0, 9000), st.sampled_from([0, 1, 2])),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(prefix=st.integers(0, 3000), size=st.integers(0, 8000), ops=_OPS)
def test_a_blob_stream_behaves_as_a_bytes_stream_of_the_blob(
    tmp_path_factory: pytest.TempPathFactory, prefix: int, size: int, ops: list[tuple[int, ...]]
) -> None:
    path = tmp_path_factory.mktemp("stream") / "pack"
    content = os.urandom(prefix + size + 77)
    path.write_bytes(content)
    blob = content[prefix : prefix + size]
    ours: BlobReader = BlobReader(BlobRef(path, prefix, size))
    theirs = io.BytesIO(blob)
    for op in ops:
        if op[0] == "read":
            assert ours.read(op[1]) == theirs.read(op[1])
        else:
            _, value, whence = op
            offset = value if whence == os.SEEK_SET else value - 4500
            base = {os.SEEK_SET: 0, os.SEEK_CUR: theirs.tell(), os.SEEK_END: len(blob)}[whence]
            if base + offset >= 0:  # (a negative position is an error for both)
                assert ours.seek(offset, whence) == theirs.seek(offset, whence)
        assert ours.tell() == theirs.tell()
    ours.close()
    assert BlobRef(path, prefix, size).read_bytes() == blob
    assert b"".join(BlobRef(path, prefix, size).chunks(1000)) == blob


def _held(path: Path) -> int:
    """How many descriptors of this process are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except FileNotFoundError:
            continue
    return count


def test_a_header_read_from_a_pack_holds_no_file_open_until_a_deferred_value_is_read(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path)
    for path in CT_FILES[:2]:
        store.put(path.read_bytes(), sha256_hex(path.read_bytes()))
    data = CT_FILES[2].read_bytes()
    ref = store.ref(store.put(data, sha256_hex(data)))
    readers_before = _held(ref.file) - 1  # the pack writer's own descriptor
    header = frames.read_header(ref, "1.2.840.10008.1.2.1")
    assert _held(ref.file) - 1 == readers_before == 0
    assert header.PixelData == pydicom.dcmread(CT_FILES[2]).PixelData  # read now, from the blob
    pixels = frames.stored_pixels(ref, "1.2.840.10008.1.2.1")
    native = frames.stored_frames(pixels, [0])
    assert next(native) == pydicom.dcmread(CT_FILES[2]).PixelData


def test_a_pack_reads_back_without_the_index_up_to_where_a_crash_cut_it(tmp_path: Path) -> None:
    writer = PackWriter(tmp_path)
    contents = [os.urandom(n) for n in (10, 0, 3000, 7)]
    places = [_append(writer, data) for data in contents]
    pack = tmp_path / places[0][0]
    expected = [(offset, len(d)) for (_, offset), d in zip(places, contents, strict=True)]
    assert [(r.offset, r.size) for r in packs.records(pack)] == expected
    whole = pack.read_bytes()
    # A crash mid-write leaves a record cut short, or its header alone, or a few bytes:
    for end in (len(whole) - 1, len(whole) - 7, len(whole) - 7 - packs.HEADER.size + 3):
        pack.write_bytes(whole[:end])
        assert [(r.offset, r.size) for r in packs.records(pack)] == expected[:3]
    pack.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # a changed byte: not intact
    assert [(r.offset, r.size) for r in packs.records(pack)] == expected[:3]


@pytest.mark.parametrize("release_bytes", [64 << 20, 1])  # 1: pages handed back every record
def test_a_survey_reads_past_a_damaged_record_to_the_next_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release_bytes: int
) -> None:
    monkeypatch.setattr(packs, "_RELEASE_BYTES", release_bytes)
    writer = PackWriter(tmp_path)
    # The third blob holds a record header of its own: magic bytes in a blob are no record.
    fake = packs.HEADER.pack(packs.MAGIC, 4, bytes(32)) + b"abcd"
    contents = [os.urandom(500), os.urandom(9000), b"x" * 10 + fake + b"y" * 10, os.urandom(5)]
    places = [_append(writer, data) for data in contents]
    pack = tmp_path / places[0][0]
    found = list(packs.survey(pack))
    assert [(f.record.offset, f.data) for f in found if isinstance(f, packs.Found)] == [
        (offset, data) for (_, offset), data in zip(places, contents, strict=True)
    ]
    whole = bytearray(pack.read_bytes())
    whole[places[1][1] + 100] ^= 0xFF  # bit rot in the second blob
    whole[places[0][1] - 40] ^= 0xFF  # and in the first one's header (its length)
    pack.write_bytes(bytes(whole) + packs.MAGIC + b"\x01")  # and a crash's cut-short end
    survey = list(packs.survey(pack))
    second_end = places[1][1] + len(contents[1])
    assert survey[0] == packs.Unreadable(0, second_end, end=False)
    assert [(f.record.offset, f.data) for f in survey[1:3] if isinstance(f, packs.Found)] == [
        (places[2][1], contents[2]),
        (places[3][1], contents[3]),
    ]
    assert survey[3] == packs.Unreadable(len(whole), 9, end=True)
    assert len(survey) == 4
    empty = tmp_path / "empty.pack"
    empty.touch()
    assert list(packs.survey(empty)) == []


def test_a_failed_write_answers_storage_full_and_the_next_blob_starts_a_new_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = PackWriter(tmp_path)
    first, _ = _append(writer, b"before")
    real = os.pwritev

    def full(fd: int, buffers: list[memoryview], offset: int) -> int:
        real(fd, [buffers[0][:5]], offset)  # part of the header, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(packs.os, "pwritev", full)
    with pytest.raises(OutOfResources, match="storage full"):
        _append(writer, b"lost")
    monkeypatch.setattr(packs.os, "pwritev", real)
    after, offset = _append(writer, b"after")
    assert after != first and offset == packs.HEADER.size
    assert [r.size for r in packs.records(tmp_path / first)] == [len(b"before")]
    assert [r.size for r in packs.records(tmp_path / after)] == [len(b"after")]


def test_a_new_pack_folder_is_synced_in_its_parent_before_any_pack_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = packs.sync_folder
    monkeypatch.setattr(packs, "sync_folder", lambda f: (synced.append(f), real(f)))
    _append(PackWriter(tmp_path / "new" / "packs"), b"one")
    assert synced == [tmp_path / "new", tmp_path / "new" / "packs"]


def test_a_batch_is_appended_with_one_data_sync_per_pack(
    tmp_path: Path, data_syncs: list[int]
) -> None:
    writer = PackWriter(tmp_path, pack_bytes=1000)
    blobs = [bytes([i]) * 250 for i in range(5)]  # 3 fit in a pack of 1000, then a new one
    places = writer.append_many([(b, sha256_hex(b)) for b in blobs])
    names = [name for name, _ in places]
    assert names[0] == names[1] == names[2] != names[3] == names[4]
    assert len(data_syncs) == 2  # one per pack, not one per blob
    for (name, offset), blob in zip(places, blobs, strict=True):
        with (tmp_path / name).open("rb") as fp:
            fp.seek(offset)
            assert fp.read(len(blob)) == blob
    assert [r.size for r in packs.records(tmp_path / names[0])] == [250, 250, 250]
    assert writer.append_many([]) == []
    writer.close()


def test_a_batch_whose_sync_fails_raises_and_the_next_blob_starts_a_new_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = PackWriter(tmp_path)
    first, _ = _append(writer, b"before")
    assert str(tmp_path / first) in _open_packs()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(packs, "_sync", full)
    with pytest.raises(OutOfResources, match="storage full"):
        writer.append_many([(b"one", sha256_hex(b"one")), (b"two", sha256_hex(b"two"))])
    monkeypatch.undo()
    assert str(tmp_path / first) not in _open_packs()  # the pack that failed its sync is closed
    after, offset = _append(writer, b"after")
    assert after != first and offset == packs.HEADER.size
    writer.close()


def test_threads_appending_at_once_share_data_syncs_and_return_once_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: an append returns only after a data sync that began once its bytes
    were written has finished; appends waiting together share one sync."""
    syncs: list[tuple[int, float]] = []  # (pack size when the sync began, when it ended)
    real = packs._sync

    def slow(fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(0.05)
        real(fd)
        syncs.append((size, time.monotonic()))

    monkeypatch.setattr(packs, "_sync", slow)
    writer = PackWriter(tmp_path)
    start = threading.Barrier(8)
    done: list[tuple[int, float]] = []  # (end of the blob in the pack, when append returned)

    def one(i: int) -> None:
        data = bytes([i]) * 1000
        start.wait()
        _name, offset = _append(writer, data)
        done.append((offset + len(data), time.monotonic()))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(done) == 8
    assert len(syncs) < 8  # shared
    for end, returned in done:
        assert any(size >= end and ended <= returned for size, ended in syncs), (end, syncs)


def test_when_a_shared_data_sync_fails_every_append_waiting_on_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        time.sleep(0.05)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(packs, "_sync", failing)
    writer = PackWriter(tmp_path)
    start = threading.Barrier(6)
    outcomes: list[object] = []

    def one(i: int) -> None:
        start.wait()
        try:
            outcomes.append(_append(writer, bytes([i]) * 100))
        except OSError as exc:
            outcomes.append(exc.errno)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [errno.EIO] * 6  # none reported durable


def test_an_erased_record_is_zeroed_stepped_over_and_never_read_again(tmp_path: Path) -> None:
    writer = packs.PackWriter(tmp_path)
    blobs = [bytes([n]) * (5000 + n) for n in range(3)]
    places = [writer.append(b, sha256_hex(b)) for b in blobs]
    writer.close()
    pack = tmp_path / places[0][0]
    size = pack.stat().st_size
    assert packs.erase(pack, places[1][1], len(blobs[1])) is True
    assert packs.erase(pack, places[1][1], len(blobs[1])) is False  # already erased
    whole = pack.read_bytes()
    assert len(whole) == size  # the pack keeps its length (a hole, not a cut)
    start = places[1][1]
    assert whole[start : start + len(blobs[1])] == bytes(len(blobs[1]))
    assert whole[start - packs.HEADER.size : start - packs.HEADER.size + 8] == packs.ERASED
    found = list(packs.survey(pack))
    assert found[1] == packs.Erased(start, len(blobs[1]))
    assert [f.data for f in found if isinstance(f, packs.Found)] == [blobs[0], blobs[2]]
    assert [r.offset for r in packs.records(pack)] == [places[0][1], places[2][1]]


def test_erase_refuses_a_place_where_no_record_starts(tmp_path: Path) -> None:
    writer = packs.PackWriter(tmp_path)
    data = b"x" * 4000
    name, offset = writer.append(data, sha256_hex(data))
    writer.close()
    pack = tmp_path / name
    before = pack.read_bytes()
    for where, size in ((offset + 1, len(data)), (offset, len(data) - 1), (10, 5)):
        with pytest.raises(ValueError):
            packs.erase(pack, where, size)
    assert pack.read_bytes() == before


def test_a_blob_file_is_erased_by_removing_it(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"\x01" * (blobs_module.PACKED_MAX + 1)
    key = store.put(data, sha256_hex(data))
    assert not key.startswith("packs/")
    assert store.erase(key) is True
    assert store.problem(key, sha256_hex(data)) == "missing"
    assert store.erase(key) is False
