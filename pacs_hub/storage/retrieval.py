"""Selecting the instances a retrieve names: C-MOVE (PS3.4 C.4.2) and C-GET (C.4.3).

A retrieve Identifier holds only unique keys (PS3.4 C.4.2.1.4, C.4.3.1.3): the
Query/Retrieve Level and, for a hierarchical retrieve (C.4.2.2.1, C.4.3.2.1), one
value of each unique key above the level and one or more values (a List of UID,
C.2.2.2.2) of the unique key at the level:

* PATIENT: Patient ID (a single value: it is not a UID);
* STUDY: Study Instance UID(s); SERIES: Series Instance UID(s);
* IMAGE: SOP Instance UID(s).

Lenient on purpose: a unique key *above* the level may be left out (many SCUs send
only the UIDs at the level, e.g. a list of SOP Instance UIDs from several series);
when present it must be a single value and it narrows the selection. Wildcards and
ranges are refused: they are matching keys, not unique keys.

The answer is a list of typed :class:`RetrieveItem` rows (SOP class, SOP instance,
transfer syntax, blob path), in the order the instances were stored, so a gateway
can send the stored bytes as they are. A blob of the cold tier is found only when its
item's bytes are first wanted (decompressed then, into the cold tier's cache), so a
retrieve of a cold study starts sending at once instead of after decompressing it all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from pacs_hub.dicom.header import is_valid_uid
from pacs_hub.errors import InvalidQuery
from pacs_hub.storage import cold
from pacs_hub.storage.blob_ref import BlobRef
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.models import Instance, Patient, Series, Study
from pacs_hub.storage.query import UNIQUE_KEYS, Level

CHUNK = 500
"""UIDs per ``IN`` list: well under SQLite's bound-parameter limit."""

COLUMNS: dict[Level, Any] = {
    Level.PATIENT: Patient.patient_id,
    Level.STUDY: Study.study_instance_uid,
    Level.SERIES: Series.series_instance_uid,
    Level.IMAGE: Instance.sop_instance_uid,
}


@dataclass(frozen=True, slots=True)
class RetrieveRequest:
    """What a retrieve asks for: the level and the unique-key values per level."""

    level: Level
    keys: Mapping[Level, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """One stored instance to send, with where its immutable bytes are."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    source: BlobRef | Callable[[], BlobRef]
    """Where the bytes are, or what finds them when first read (a cold blob)."""
    blob_key: str
    sha256: str
    size_bytes: int = 0
    """The stored file's size (0: unknown)."""
    pk: int = 0
    """The index row's id: rows stored later have larger ids (see ``after``)."""

    @property
    def blob(self) -> BlobRef:
        """Where the stored bytes are; a cold blob is decompressed into the cold tier's
        cache now if it is not there. Raises :class:`OSError` when it cannot be read,
        :class:`~pacs_hub.storage.blobs.BadBlobKey` for a key no store writes."""
        source = self.source
        return source if isinstance(source, BlobRef) else source()


def _check_value(level: Level, value: str) -> None:
    keyword = UNIQUE_KEYS[level]
    if any(c in value for c in "*?"):
        raise InvalidQuery(f"{keyword} {value[:24]!r}: a unique key cannot be a pattern")
    if level is not Level.PATIENT and not is_valid_uid(value):
        raise InvalidQuery(f"{keyword} {value[:24]!r} is not a valid UID")


def _level_keys(level: Level, values: Sequence[str], *, at_level: bool) -> tuple[str, ...]:
    """The values of one level's unique key, checked (PS3.4 C.4.2.2.1)."""
    cleaned = tuple(v.strip() for v in values if v.strip())
    keyword = UNIQUE_KEYS[level]
    if at_level and not cleaned:
        raise InvalidQuery(f"{level} retrieve needs {keyword}")
    if len(cleaned) > 1 and (level is Level.PATIENT or not at_level):
        raise InvalidQuery(f"{keyword} must be a single value above or at {level} level")
    for value in cleaned:
        _check_value(level, value)
    return cleaned


def parse_retrieve(
    level_text: str, levels: Sequence[Level], values: Mapping[str, Sequence[str]]
) -> RetrieveRequest:
    """Read a retrieve Identifier given as keyword -> values; raise :class:`InvalidQuery`.

    ``levels`` are the levels of the information model (PS3.4 C.6.1.1 Patient Root,
    C.6.2.1 Study Root).
    """
    raw = level_text.strip().upper()
    names = "/".join(levels)
    if raw not in {lv.value for lv in levels}:
        raise InvalidQuery(f"QueryRetrieveLevel {raw[:16] or 'missing'}: expected {names}")
    level = Level(raw)
    keys: dict[Level, tuple[str, ...]] = {}
    for each in levels:
        if each.depth > level.depth:
            break
        given = values.get(UNIQUE_KEYS[each], ())
        found = _level_keys(each, given, at_level=each is level)
        if found:
            keys[each] = found
    return RetrieveRequest(level, keys)


def _statement(request: RetrieveRequest) -> Select[Any]:
    stmt = (
        select(Instance)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
    )
    for level, uids in request.keys.items():
        if level is not request.level:
            stmt = stmt.where(COLUMNS[level] == uids[0])
    return stmt.order_by(Instance.id)


def _item(blobs: BlobStore, instance: Instance) -> RetrieveItem:
    key, size = instance.blob_key, instance.size_bytes or None
    found = functools.partial(blobs.ref, key, size)
    return RetrieveItem(
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        source=found if cold.is_cold(key) else found(),
        blob_key=instance.blob_key,
        sha256=instance.sha256,
        size_bytes=instance.size_bytes,
        pk=instance.id,
    )


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _select(
    session: Session, blobs: BlobStore, base: Select[Any], column: Any, values: Sequence[str]
) -> list[RetrieveItem]:
    """Rows of ``base`` whose ``column`` is in ``values``, a chunk at a time, no repeats."""
    found: dict[int, RetrieveItem] = {}
    for chunk in _chunks(list(dict.fromkeys(values))):
        clause: ColumnElement[bool] = column.in_(chunk)
        for instance in session.scalars(base.where(clause)):
            found.setdefault(instance.id, _item(blobs, instance))
    return [found[pk] for pk in sorted(found)]


def select_instances(
    session: Session, blobs: BlobStore, request: RetrieveRequest, after: int = 0
) -> list[RetrieveItem]:
    """Every stored instance the retrieve names (PS3.4 C.4.2.2.1, C.4.3.2.1).

    ``after``: only the rows whose id is larger (those indexed since a row was seen;
    a retrieve on demand sends what a pull stores as it arrives).
    """
    at_level = request.keys[request.level]
    base = _statement(request)
    if after:
        base = base.where(Instance.id > after)
    return _select(session, blobs, base, COLUMNS[request.level], at_level)


def instances_by_uid(session: Session, blobs: BlobStore, uids: Sequence[str]) -> list[RetrieveItem]:
    """The stored instances among ``uids`` (SOP Instance UIDs), in storage order."""
    base = select(Instance).order_by(Instance.id)
    return _select(session, blobs, base, Instance.sop_instance_uid, uids)


def _number(text: str) -> float:
    """An Instance or Series Number (IS) for sorting; unparsable ones sort last."""
    try:
        return float(text)
    except ValueError:
        return float("inf")


def representative_instance(
    session: Session, blobs: BlobStore, request: RetrieveRequest
) -> RetrieveItem | None:
    """The middle image of the study or series ``request`` names (PS3.18 10.4.1.1.3).

    Images are the instances with Rows (pixel data), ordered by Series Number then
    Instance Number (storage order on ties); ``None`` when there is no image.
    """
    stmt = _statement(request).add_columns(Series.series_number)
    stmt = stmt.where(COLUMNS[request.level] == request.keys[request.level][0])
    stmt = stmt.where(Instance.rows.is_not(None))
    rows = session.execute(stmt).all()
    if not rows:
        return None
    ordered = sorted(
        rows,
        key=lambda row: (_number(row[1]), _number(row[0].instance_number), row[0].id),
    )
    return _item(blobs, ordered[len(ordered) // 2][0])
