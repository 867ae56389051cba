"""A hub's stored instances read back in tests, whatever kind of blob holds them
(a range of a pack file or a file of its own, pacs_hub/storage/blobs.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pacs_hub.storage.blob_ref import BlobRef
from pacs_hub.storage.blobs import blob_ref


def blob_keys(data_dir: Path) -> dict[str, str]:
    """SOP Instance UID -> blob key of every instance in the hub's SQLite index."""
    index = data_dir / "index.sqlite3"
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT sop_instance_uid, blob_key FROM instances").fetchall()
    return dict(rows)


def study_blob_keys(data_dir: Path, study: str) -> dict[str, str]:
    """SOP Instance UID -> blob key of every instance of ``study`` in the SQLite index."""
    index = data_dir / "index.sqlite3"
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT i.sop_instance_uid, i.blob_key FROM instances i"
            " JOIN series s ON i.series_pk = s.id JOIN studies t ON s.study_pk = t.id"
            " WHERE t.study_instance_uid = ?",
            (study,),
        ).fetchall()
    return dict(rows)


def blob_of(data_dir: Path, key: str) -> BlobRef:
    """Where blob ``key`` of the hub with data folder ``data_dir`` is."""
    return blob_ref(data_dir / "blobs", key)


def stored_bytes(data_dir: Path) -> dict[str, bytes]:
    """SOP Instance UID -> stored Part 10 bytes of every indexed instance."""
    return {uid: blob_of(data_dir, key).read_bytes() for uid, key in blob_keys(data_dir).items()}
