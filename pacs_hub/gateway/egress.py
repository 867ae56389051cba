"""Sending stored instances as they are: C-STORE sub-operations from the blob store.

Every C-STORE the hub sends of an instance it holds (C-MOVE and C-GET sub-operations,
PS3.4 C.4.2.2 / C.4.3.2, forwarding, restore) carries the stored file's dataset bytes
unchanged, in the transfer syntax they were received in: no decode, no re-encode. The
callers hand pynetdicom's ``Association.send_c_store`` a :class:`StoredFile` (a
``Dataset`` holding just the two UIDs, which pynetdicom's Move/Get SCP needs) and
:func:`enable_stored_file_sends` makes ``send_c_store`` send that file:

* a file of at most :data:`IN_MEMORY_MAX` bytes (every image but the largest
  multi-frames) is opened and read once: its File Meta Information is skipped in
  memory and the dataset bytes go out as they are (:class:`LoadedFile`);
* a larger one is sent by pynetdicom's chunked-file path (which reads its meta, then
  streams the dataset from disk), so memory stays bounded.

Either way the presentation context must match the stored transfer syntax exactly:
an instance with no such context fails as a sub-operation. The one change ever made:
an odd-length (deflated) dataset gets the trailing NUL of PS3.5 A.5.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom import association as pynetdicom_association
from pynetdicom.association import Association

from pacs_hub.dicom.part10 import dataset_offset
from pacs_hub.storage.retrieval import RetrieveItem

IN_MEMORY_MAX = 64 * 1024 * 1024
DEFLATED = "1.2.840.10008.1.2.1.99"
ENCODER = "encode"
_INSTALL_LOCK = threading.Lock()


class StoredFile(Dataset):
    """A match handed to pynetdicom as a sub-operation: its UIDs, and its file.

    Only SOP Class UID and SOP Instance UID are set (pynetdicom reads the latter for
    the Failed SOP Instance UID List, C.4.2.1.4.2); the bytes sent are the stored
    file's dataset, read from ``stored_path`` by the patched ``send_c_store``.
    """

    def __init__(self, item: RetrieveItem) -> None:
        super().__init__()
        self.SOPClassUID = item.sop_class_uid
        self.SOPInstanceUID = item.sop_instance_uid
        self.stored_path: Path = item.path
        self.stored_size: int = item.size_bytes
        self.stored_syntax: str = item.transfer_syntax_uid


class LoadedFile(Dataset):
    """A stored file read once: its UIDs, its transfer syntax, its dataset bytes.

    pynetdicom takes it for a dataset to encode; the patched ``encode`` answers with
    :attr:`encoded` when asked for the stored transfer syntax, and with None (pynetdicom
    then fails the sub-operation) for any other: nothing is ever converted.
    """

    def __init__(self, stored: StoredFile, data: bytes) -> None:
        super().__init__()
        self.SOPClassUID = stored.SOPClassUID
        self.SOPInstanceUID = stored.SOPInstanceUID
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(stored.stored_syntax)
        offset = dataset_offset(io.BytesIO(data))
        body = data[offset:]
        self.encoded: bytes = body + b"\x00" if len(body) % 2 else body
        syntax = UID(stored.stored_syntax)
        self.encoding = (syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)


@contextmanager
def even_length(path: Path) -> Iterator[Path]:
    """``path``, or a copy with one trailing NUL byte when its dataset has an odd length.

    Only a deflated dataset can have an odd length, and PS3.5 A.5 pads the deflated
    stream with a single trailing NUL to even length (some senders do not); a peer may
    refuse an odd PDV fragment (dcmtk: "Odd Fragment Length"). The stored blob is
    never changed.
    """
    with path.open("rb") as fp:
        offset = dataset_offset(fp)
        size = fp.seek(0, os.SEEK_END)
    if (size - offset) % 2 == 0:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pacs-hub-pad-") as folder:
        padded = Path(folder) / path.name
        shutil.copyfile(path, padded)
        with padded.open("ab") as fp:
            fp.write(b"\x00")
        yield padded


@contextmanager
def _from_disk(stored: StoredFile) -> Iterator[Path]:
    """A large file's path for pynetdicom's chunked send (checked for parity if deflated)."""
    if stored.stored_syntax != DEFLATED:
        yield stored.stored_path
        return
    with even_length(stored.stored_path) as path:
        yield path


def enable_stored_file_sends() -> None:
    """Make ``Association.send_c_store`` send a :class:`StoredFile` from its file.

    Small files: read once into a :class:`LoadedFile`, which the patched
    ``pynetdicom.association.encode`` passes through as it is. Large files: pynetdicom
    sends a file's dataset bytes unchanged when ``send_c_store`` gets a path and
    ``STORE_SEND_CHUNKED_DATASET`` is on (the switch only governs sends *from a path*,
    which the hub makes for stored blobs only). Idempotent, once per process.
    """
    with _INSTALL_LOCK:
        original = Association.send_c_store
        if getattr(original, "_pacs_hub_files", False):
            return
        _config.STORE_SEND_CHUNKED_DATASET = True
        encode = getattr(pynetdicom_association, ENCODER)  # dsutils.encode, as imported there

        @functools.wraps(encode)
        def encode_loaded(ds: Dataset, *args: Any, **kwargs: Any) -> bytes | None:
            if not isinstance(ds, LoadedFile):
                return cast(bytes | None, encode(ds, *args, **kwargs))
            wanted = (*args, kwargs.get("deflated", False))[:3]
            return ds.encoded if tuple(wanted) == ds.encoding else None

        @functools.wraps(original)
        def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
            if not isinstance(dataset, StoredFile):
                return original(self, dataset, *args, **kwargs)
            size = dataset.stored_size or dataset.stored_path.stat().st_size  # 0: not known
            if size <= IN_MEMORY_MAX:
                loaded = LoadedFile(dataset, dataset.stored_path.read_bytes())
                return original(self, loaded, *args, **kwargs)
            with _from_disk(dataset) as path:
                return original(self, path, *args, **kwargs)

        send_c_store._pacs_hub_files = True  # type: ignore[attr-defined]
        setattr(pynetdicom_association, ENCODER, encode_loaded)
        Association.send_c_store = send_c_store  # type: ignore[method-assign]
