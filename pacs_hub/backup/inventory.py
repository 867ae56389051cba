"""Enrolment of an establishment as a backup client, and what the hub holds of it.

The establishment's PACS is one of its registered nodes with role ``pacs``; the hub
side of a comparison is read from the index: studies whose establishment is the
client's (recorded at ingest from the sending node, or by the stand-in), with their
series and instance counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select

from pacs_hub.backup import state
from pacs_hub.config import Settings
from pacs_hub.errors import InvalidQuery
from pacs_hub.regional.scu import PacsNode, pacs_node
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, Instance, Node, Series, Study

CHUNK = 500


@dataclass(frozen=True, slots=True)
class Client:
    """An enrolled establishment: its code, primary key and PACS node."""

    code: str
    establishment_pk: int
    node: PacsNode


def _establishment(database: Database, code: str) -> Establishment:
    with database.reader() as session:
        est = session.scalars(select(Establishment).where(Establishment.code == code)).one_or_none()
        if est is None:
            raise state.NotEnrolled(f"no establishment with code {code!r}")
        session.expunge(est)
        return est


def _pacs_of(database: Database, est: Establishment, ae_title: str) -> PacsNode:
    if ae_title:
        node = pacs_node(database, ae_title)
    else:
        with database.reader() as session:
            titles = session.scalars(
                select(Node.ae_title).where(Node.establishment_pk == est.id, Node.role == "pacs")
            ).all()
        if len(titles) != 1:
            raise InvalidQuery(
                f"establishment {est.code} has {len(titles)} PACS node(s): name one with --node"
            )
        node = pacs_node(database, titles[0])
    with database.reader() as session:
        row = session.get(Node, node.pk)
        if row is None or row.establishment_pk != est.id:
            raise InvalidQuery(f"node {node.ae_title} does not belong to establishment {est.code}")
    return node


def enrol(settings: Settings, database: Database, code: str, ae_title: str = "") -> Client:
    """Enrol ``code`` (its PACS ``ae_title``, or its only PACS node); idempotent."""
    est = _establishment(database, code.strip())
    node = _pacs_of(database, est, ae_title.strip())

    def change(current: state.State) -> None:
        current["node"] = node.ae_title
        current.setdefault("enrolled_at", state.now_iso())
        current.setdefault("standin", "auto")

    state.update(settings, est.code, change, create=True)
    return Client(est.code, est.id, node)


def client(settings: Settings, database: Database, code: str) -> Client:
    """The enrolled establishment ``code``; :class:`~state.NotEnrolled` otherwise."""
    current = state.load(settings, code)
    est = _establishment(database, code)
    return Client(est.code, est.id, pacs_node(database, str(current["node"])))


def hub_studies(database: Database, establishment_pk: int) -> dict[str, int]:
    """Study Instance UID -> instances, of every study of the establishment in the hub."""
    stmt = select(Study.study_instance_uid, Study.num_instances).where(
        Study.establishment_pk == establishment_pk
    )
    with database.reader() as session:
        return {uid: int(n) for uid, n in session.execute(stmt).all()}


def study_counts(database: Database, uids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Study Instance UID -> (instances, bytes) for those of ``uids`` the hub holds."""
    wanted = list(uids)
    found: dict[str, tuple[int, int]] = {}
    with database.reader() as session:
        for start in range(0, len(wanted), CHUNK):
            stmt = select(Study.study_instance_uid, Study.num_instances, Study.size_bytes).where(
                Study.study_instance_uid.in_(wanted[start : start + CHUNK])
            )
            for uid, count, size in session.execute(stmt).all():
                found[uid] = (int(count), int(size))
    return found


def hub_series(database: Database, study: str) -> dict[str, int]:
    """Series Instance UID -> instances held by the hub, of ``study``."""
    stmt = (
        select(Series.series_instance_uid, func.count(Instance.id))
        .join(Study, Study.id == Series.study_pk)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Study.study_instance_uid == study)
        .group_by(Series.series_instance_uid)
    )
    with database.reader() as session:
        return {uid: int(n) for uid, n in session.execute(stmt).all()}


def studies_of_instances(database: Database, sop_uids: Iterable[str]) -> set[str]:
    """Study Instance UIDs of the given SOP Instance UIDs (those the hub holds)."""
    wanted = list(sop_uids)
    studies: set[str] = set()
    with database.reader() as session:
        for start in range(0, len(wanted), CHUNK):
            stmt = (
                select(Study.study_instance_uid)
                .join(Series, Series.study_pk == Study.id)
                .join(Instance, Instance.series_pk == Series.id)
                .where(Instance.sop_instance_uid.in_(wanted[start : start + CHUNK]))
                .distinct()
            )
            studies.update(session.scalars(stmt).all())
    return studies
