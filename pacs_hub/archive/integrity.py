"""Checking the archive: every indexed instance's blob read back and hashed again.

Each instance's SHA-256 and size were recorded when it was stored (ARCHITECTURE.md
invariant 5: blobs are immutable and checksummed). :func:`check_archive` reads every
blob the index names (or those of one study), whole, and compares: a blob that is
missing, shorter than recorded, unreadable, or whose bytes no longer hash to the
recorded SHA-256 is *damaged*, and said with its study, series and SOP Instance UIDs
and its blob key (no patient data). Nothing is changed: a damaged instance stays
indexed (its sender, a backup or a restore is where a good copy comes from).

The check reads beside a running hub (blobs never change once written; an instance
indexed after the check started is not checked). Reads are spread over a few threads:
``hashlib`` and ``pread`` release the GIL, so a check runs at the disk's speed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Select, func, select

from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Instance, Series, Study

LOGGER = logging.getLogger(__name__)
PAGE = 1000
"""Instances read from the index at a time (keyset pagination on the instance id)."""


@dataclass(frozen=True, slots=True)
class Indexed:
    """What the index records of one instance's blob."""

    id: int
    """The instance's row id (the order instances were indexed in)."""
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    blob_key: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Damage:
    """One instance whose blob is not what was stored, and how."""

    instance: Indexed
    problem: str
    """As :meth:`BlobStore.problem <pacs_hub.storage.blobs.BlobStore.problem>` says it."""


@dataclass(slots=True)
class IntegrityReport:
    """What :func:`check_archive` found."""

    checked: int = 0
    bytes_checked: int = 0
    damaged: list[Damage] = field(default_factory=list)

    @property
    def whole(self) -> int:
        """Instances whose blob is exactly what was stored."""
        return self.checked - len(self.damaged)


def _query(
    study_instance_uid: str | None,
) -> Select[int, str, str, str, str, str, int]:
    query = (
        select(
            Instance.id,
            Study.study_instance_uid,
            Series.series_instance_uid,
            Instance.sop_instance_uid,
            Instance.blob_key,
            Instance.sha256,
            Instance.size_bytes,
        )
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
    )
    if study_instance_uid is not None:
        query = query.where(Study.study_instance_uid == study_instance_uid)
    return query


def extent(database: Database, study_instance_uid: str | None = None) -> tuple[int, int]:
    """(instances, bytes) a check of the archive (or of one study) will read."""
    rows = _query(study_instance_uid).subquery()
    query = select(func.count(), func.coalesce(func.sum(rows.c.size_bytes), 0))
    with database.engine.connect() as conn:
        count, size = conn.execute(query).one()
    return int(count), int(size)


def log_damage(item: Indexed, problem: str, by: str) -> None:
    """Say at ERROR that ``item``'s blob is damaged (its UIDs and blob, no patient data)."""
    LOGGER.error(
        "%s: damaged blob %s (%s): study %s, series %s, instance %s",
        by,
        item.blob_key,
        problem,
        item.study_instance_uid,
        item.series_instance_uid,
        item.sop_instance_uid,
    )


def still_indexed(database: Database, item: Indexed) -> bool:
    """True when ``item``'s row still names its blob: a problem found in a blob whose
    instance was destroyed (or replaced) while it was read is no damage."""
    query = select(Instance.id).where(Instance.id == item.id, Instance.blob_key == item.blob_key)
    with database.engine.connect() as conn:
        return conn.execute(query).first() is not None


def indexed(
    database: Database, study_instance_uid: str | None = None, *, after: int = 0
) -> Iterator[Indexed]:
    """Every indexed instance (of one study) whose row id is above ``after``, in the
    order they were indexed, read :data:`PAGE` at a time."""
    query = _query(study_instance_uid).order_by(Instance.id).limit(PAGE)
    last = after
    while True:
        with database.engine.connect() as conn:
            rows = conn.execute(query.where(Instance.id > last)).all()
        for row in rows:
            yield Indexed(int(row[0]), row[1], row[2], row[3], row[4], row[5], int(row[6]))
        if len(rows) < PAGE:
            return
        last = rows[-1][0]


def check_archive(
    database: Database,
    blobs: BlobStore,
    *,
    study_instance_uid: str | None = None,
    jobs: int = 0,
    on_checked: Callable[[Indexed], None] | None = None,
) -> IntegrityReport:
    """Read back every indexed instance's blob (or those of one study) and compare it
    with its recorded size and SHA-256; changes nothing.

    ``jobs`` threads read at once (0: two per core, at most 8); ``on_checked`` is called
    with each instance, in index order, as each is checked.
    """
    jobs = jobs or min(8, 2 * len(os.sched_getaffinity(0)))
    report = IntegrityReport()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="integrity") as pool:
        items = indexed(database, study_instance_uid)
        # map() runs ahead of its consumer without bound: feed it a page at a time.
        while page := [item for _, item in zip(range(PAGE), items, strict=False)]:
            problems = pool.map(lambda i: blobs.problem(i.blob_key, i.sha256, i.size), page)
            for item, problem in zip(page, problems, strict=True):
                report.checked += 1
                report.bytes_checked += item.size
                if problem is not None and still_indexed(database, item):
                    report.damaged.append(Damage(item, problem))
                    log_damage(item, problem, "integrity check")
                if on_checked is not None:
                    on_checked(item)
    return report
