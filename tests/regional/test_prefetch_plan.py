"""Where prefetch looks for priors (in-process, no peer): which identities, which PACS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from pacs_hub.dicom.ins import nir_key
from pacs_hub.ingest import Ingestor
from pacs_hub.regional.establishments import create_establishment
from pacs_hub.regional.nodes import add_node
from pacs_hub.regional.prefetch import plan_lookups
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Node, Study
from tests.regional.study_factory import make_study

INS_BODY = "2690175123456"
INS = INS_BODY + nir_key(INS_BODY)


@pytest.fixture
def region(tmp_path: Path) -> Iterator[tuple[Database, Ingestor]]:
    """A: a modality, no PACS; C: a modality and two PACS; Z: a PACS, no establishment."""
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    create_establishment(db, "HOSP_A", "Hospital A", "ISSUER_A")
    create_establishment(db, "HOSP_C", "Clinic C", "ISSUER_C", ["ISSUER_C_OLD"])
    add_node(db, "A_MOD", "127.0.0.1", 104, "HOSP_A", role="modality")
    add_node(db, "C_MOD", "127.0.0.1", 104, "HOSP_C", role="modality")
    add_node(db, "C_PACS", "127.0.0.1", 1104, "HOSP_C", role="pacs")
    add_node(db, "C_PACS2", "127.0.0.1", 2104, "HOSP_C", role="pacs")
    add_node(db, "C_WS", "127.0.0.1", 3104, "HOSP_C", role="workstation")
    add_node(db, "Z_PACS", "127.0.0.1", 4104, role="pacs")
    yield db, Ingestor(db, BlobStore(tmp_path / "data"))
    db.dispose()


def arrive(
    region: tuple[Database, Ingestor], folder: Path, ae: str, **study: str
) -> list[tuple[str, str, str]]:
    """Ingest a study from ``ae``; the planned (Patient ID, issuer, PACS) lookups."""
    db, ingestor = region
    uid, files = make_study(folder, count=1, **study)
    for f in files:
        ingestor.ingest(f.read_bytes(), received_from_ae=ae)
    with db.reader() as session:
        found = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        return [
            (x.identity.patient_id, x.identity.issuer, x.node.ae_title)
            for x in plan_lookups(session, found)
        ]


def test_own_identity_goes_to_the_pacs_of_its_issuer(
    region: tuple[Database, Ingestor], tmp_path: Path
) -> None:
    # No issuer in the dataset: C's default issuer at ingest, so C's PACS (not its workstation).
    assert arrive(region, tmp_path / "1", "C_MOD", patient_id="C-1") == [
        ("C-1", "ISSUER_C", "C_PACS"),
        ("C-1", "ISSUER_C", "C_PACS2"),
    ]
    # An issuer C owns (not its default), sent by anyone.
    assert arrive(region, tmp_path / "2", "SOMEONE", patient_id="C-2", issuer="ISSUER_C_OLD") == [
        ("C-2", "ISSUER_C_OLD", "C_PACS"),
        ("C-2", "ISSUER_C_OLD", "C_PACS2"),
    ]
    # A owns the issuer and has no PACS: nobody else is asked for A's local ID.
    assert arrive(region, tmp_path / "3", "A_MOD", patient_id="A-1") == []


def test_unowned_issuer_falls_back_to_the_sender_then_to_every_pacs(
    region: tuple[Database, Ingestor], tmp_path: Path
) -> None:
    db, _ = region
    unknown = arrive(region, tmp_path / "1", "SOMEONE", patient_id="X-1", issuer="ELSEWHERE")
    assert unknown == [("X-1", "ELSEWHERE", n) for n in ("C_PACS", "C_PACS2", "Z_PACS")]
    with db.session() as session:  # the health check found C_PACS2 down
        session.execute(update(Node).where(Node.ae_title == "C_PACS2").values(health_status="down"))
    assert arrive(region, tmp_path / "2", "SOMEONE", patient_id="X-2") == [
        ("X-2", "", "C_PACS"),
        ("X-2", "", "Z_PACS"),
    ]


def test_linked_identities_go_to_their_own_establishment(
    region: tuple[Database, Ingestor], tmp_path: Path
) -> None:
    assert arrive(region, tmp_path / "c", "C_MOD", patient_id="C-9", ins=INS)
    arrive(region, tmp_path / "x", "SOMEONE", patient_id="X-9", issuer="NOBODY", ins=INS)
    # A's new study of the same person (same INS): A has no PACS, C-9 is asked at C's,
    # X-9 (an issuer nobody owns) is not asked anywhere.
    assert arrive(region, tmp_path / "a", "A_MOD", patient_id="A-9", ins=INS) == [
        ("C-9", "ISSUER_C", "C_PACS"),
        ("C-9", "ISSUER_C", "C_PACS2"),
    ]
