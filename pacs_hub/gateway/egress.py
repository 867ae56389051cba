"""Sending stored instances as they are: C-STORE sub-operations from the blob store.

Every C-STORE the hub sends of an instance it holds (C-MOVE and C-GET sub-operations,
PS3.4 C.4.2.2 / C.4.3.2, forwarding, restore) carries the stored file's dataset bytes
unchanged, in the transfer syntax they were received in: no decode, no re-encode. The
callers hand pynetdicom's ``Association.send_c_store`` a :class:`StoredFile` (a
``Dataset`` holding just the two UIDs, which pynetdicom's Move/Get SCP needs) and
:func:`enable_stored_file_sends` makes ``send_c_store`` send that file:

* a blob of at most :data:`IN_MEMORY_MAX` bytes (every image but the largest
  multi-frames, and every blob in a pack file) is read once: its File Meta
  Information is skipped in memory and the dataset bytes go out as they are, the
  C-STORE request written directly (:func:`send_loaded`: its command set encoded
  here, the P-DATA PDUs written by :mod:`~pacs_hub.gateway.pdata`, the response read
  as pynetdicom waits for it), or through pynetdicom's ``send_c_store``
  (:class:`LoadedFile`) when the association is not ready for a direct write;
* a larger one, a file of its own, is sent by pynetdicom's chunked-file path (which
  reads its meta, then streams the dataset from disk), so memory stays bounded.

Sub-operations sent one after the other (:func:`linked`: C-MOVE, C-GET, forwarding)
read the next instance's bytes while the peer stores the current one
(:func:`preload`), so that read is off the time each sub-operation takes.

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
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom import association as pynetdicom_association
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from pacs_hub.dicom.part10 import dataset_offset
from pacs_hub.gateway import deferred, pdata
from pacs_hub.storage.blob_ref import BlobRef
from pacs_hub.storage.retrieval import RetrieveItem

IN_MEMORY_MAX = 64 * 1024 * 1024
PRELOAD_MAX = 16 * 1024 * 1024
"""The next sub-operation's blob is read ahead (while the peer stores) up to this size."""
DEFLATED = "1.2.840.10008.1.2.1.99"
_INSTALL_LOCK = threading.Lock()


class StoredFile(Dataset):
    """A match handed to pynetdicom as a sub-operation: its UIDs, and its file.

    Only SOP Class UID and SOP Instance UID are set (pynetdicom reads the latter for
    the Failed SOP Instance UID List, C.4.2.1.4.2); the bytes sent are the stored
    blob's dataset, read from ``stored_blob`` by the patched ``send_c_store``.
    """

    stored_item: RetrieveItem
    stored_size: int
    stored_syntax: str
    stored_sop_class: str
    stored_sop_instance: str

    def __init__(self, item: RetrieveItem) -> None:
        super().__init__()
        self.add_new(0x00080016, "UI", item.sop_class_uid)
        self.add_new(0x00080018, "UI", item.sop_instance_uid)
        vars(self).update(  # plain attributes, past pydicom's keyword look-ups
            stored_item=item,
            stored_size=item.size_bytes,
            stored_syntax=item.transfer_syntax_uid,
            stored_sop_class=item.sop_class_uid,
            stored_sop_instance=item.sop_instance_uid,
        )

    @property
    def stored_blob(self) -> BlobRef:
        """Where the bytes are, found at the first use: a cold blob is decompressed
        when its send (or the preload before it) reads it, not when the retrieve is
        planned. Raises as :attr:`RetrieveItem.blob` (the sub-operation fails)."""
        found: BlobRef | None = vars(self).get("_stored_blob")
        if found is None:
            found = vars(self)["_stored_blob"] = self.stored_item.blob
        return found


def linked(items: Iterable[RetrieveItem]) -> Iterator[StoredFile]:
    """A :class:`StoredFile` per item, in order, each knowing the one after it
    (``following``), so that its send reads the next one's bytes (:func:`preload`)."""
    files = (StoredFile(item) for item in items)
    current = next(files, None)
    while current is not None:
        following = next(files, None)
        vars(current)["following"] = following
        yield current
        current = following


def preload(stored: StoredFile) -> None:
    """Read the dataset bytes of the sub-operation that follows ``stored`` (its
    ``following``, set by the retrieve handler) if small enough, for the next send;
    a blob that cannot be read is left for that send to fail."""
    following: StoredFile | None = vars(stored).pop("following", None)
    if following is None or not 0 < following.stored_size <= PRELOAD_MAX:
        return
    with suppress(OSError, ValueError):
        vars(following)["preloaded"] = stored_body(following)


def stored_body(stored: StoredFile) -> bytes | memoryview:
    """The stored file's dataset bytes (File Meta Information skipped, PS3.10 7.1),
    with the trailing NUL of PS3.5 A.5 when odd (deflated)."""
    data = stored.stored_blob.read_bytes()
    offset = dataset_offset(io.BytesIO(data))
    if (len(data) - offset) % 2:
        return data[offset:] + b"\x00"
    return memoryview(data)[offset:]


class LoadedFile(pdata.PreEncoded):
    """A stored file read once: its UIDs, its transfer syntax, its dataset bytes.

    pynetdicom takes it for a dataset to encode; the patched ``encode`` answers with
    :attr:`encoded` when asked for the stored transfer syntax, and with None (pynetdicom
    then fails the sub-operation) for any other: nothing is ever converted.
    """

    def __init__(self, stored: StoredFile, body: bytes | memoryview) -> None:
        super().__init__()
        self.SOPClassUID = stored.stored_sop_class
        self.SOPInstanceUID = stored.stored_sop_instance
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(stored.stored_syntax)
        self.encoded: bytes = bytes(body)
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
    """A large blob file's path for pynetdicom's chunked send (checked for parity if
    deflated)."""
    if stored.stored_syntax != DEFLATED:
        yield stored.stored_blob.file
        return
    with even_length(stored.stored_blob.file) as path:
        yield path


def _context_id(assoc: Association, sop_class: str, syntax: str) -> int | None:
    """The accepted context pynetdicom's ``send_c_store`` would pick for a stored
    file, when it carries the file's own transfer syntax (else None), per association."""
    cache: dict[tuple[str, str], int | None] | None = getattr(assoc, "_pacs_store_cx", None)
    if cache is None:
        cache = assoc._pacs_store_cx = {}  # type: ignore[attr-defined]
    key = (sop_class, syntax)
    if key not in cache:
        try:
            context = assoc._get_valid_context(sop_class, syntax, "scu", allow_conversion=True)
        except ValueError:
            cache[key] = None
        else:
            same = context.transfer_syntax[0] == syntax and context.context_id is not None
            cache[key] = int(context.context_id) if same else None  # type: ignore[arg-type]
    return cache[key]


def _status(assoc: Association, response: Any) -> Dataset:
    """What ``Association._check_received_status`` returns, made directly for a plain
    valid C-STORE response (a Status and nothing else, PS3.7 9.1.1.1.9)."""
    plain = isinstance(response, C_STORE) and response.is_valid_response
    optional = (getattr(response, name, None) for name in response.STATUS_OPTIONAL_KEYWORDS)
    if not plain or any(value is not None for value in optional):
        return assoc._check_received_status(response)
    status = Dataset()
    status.add_new(0x00000900, "US", response.Status)
    return status


def send_loaded(
    assoc: Association,
    stored: StoredFile,
    body: bytes | memoryview,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset | None:
    """``Association.send_c_store`` for a file read into memory, the message written
    directly (PS3.7 9.3.1.1, :func:`~pacs_hub.gateway.pdata.write_message`) instead of
    through pynetdicom's validating primitive; None (nothing sent) when this path
    does not apply: no context with the file's own transfer syntax (pynetdicom then
    fails it as before), or the association not ready for a direct write.

    The hand-over with the association's reactor and the wait for the response are
    pynetdicom's own (``send_c_store``: pause the reactor, send, ``get_msg``, resume).
    """
    sop_class, sop_instance = stored.stored_sop_class, stored.stored_sop_instance
    context_id = _context_id(assoc, sop_class, stored.stored_syntax)
    if context_id is None or not assoc.is_established or not pdata.silent(assoc):
        return None
    command = pdata.c_store_request_command(
        msg_id, sop_class, sop_instance, priority, originator_aet, originator_id
    )
    state = pdata.sending(assoc)
    assoc._reactor_checkpoint.clear()  # as send_c_store: pause the reactor first
    while not assoc._is_paused:
        time.sleep(0.0001)
    with state.lock:
        written = pdata.write_message(assoc, context_id, command, body)
        if written:
            state.count()
    if not written:
        assoc._reactor_checkpoint.set()
        return None
    # While the peer stores this one: the Pending C-MOVE response kept for it, then
    # the next instance's bytes read (pacs_hub.gateway.deferred, preload).
    deferred.flush()
    preload(stored)
    _cx, response = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    if response is None:  # the DIMSE timeout expired: pynetdicom aborts
        assoc._handle_no_response()
        return Dataset()
    return _status(assoc, response)


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
        pdata.pass_pre_encoded(pynetdicom_association)  # a LoadedFile goes out as read

        @functools.wraps(original)
        def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
            if not isinstance(dataset, StoredFile):
                return original(self, dataset, *args, **kwargs)
            size = dataset.stored_size or dataset.stored_blob.size  # 0: not known
            if size <= IN_MEMORY_MAX or not dataset.stored_blob.whole_file:
                body = vars(dataset).pop("preloaded", None) or stored_body(dataset)
                sent = send_loaded(self, dataset, body, *args, **kwargs)
                if sent is not None:
                    return sent
                return original(self, LoadedFile(dataset, body), *args, **kwargs)
            with _from_disk(dataset) as path:
                return original(self, path, *args, **kwargs)

        send_c_store._pacs_hub_files = True  # type: ignore[attr-defined]
        Association.send_c_store = send_c_store  # type: ignore[method-assign]
