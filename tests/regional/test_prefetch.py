"""Prefetch of priors with real peers: Orthanc as establishment C's PACS (it knows the hub
and answers its C-FIND and C-MOVE), dcmtk's storescu as the modality of a new study."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from pacs_hub.dicom.ins import nir_key
from pacs_hub.regional import prefetch
from pacs_hub.regional.establishments import create_establishment
from pacs_hub.regional.nodes import add_node
from pacs_hub.regional.pull import JobStatus, list_jobs
from pacs_hub.storage.database import Database
from tests.conftest import Hub, free_port, start_hub, wait_until
from tests.peers import OrthancPeer, start_orthanc
from tests.regional.study_factory import make_study, storescu

pytestmark = pytest.mark.orthanc
TODAY = date.today()
INS_BODY = "1850275123456"
INS = INS_BODY + nir_key(INS_BODY)


def days_ago(days: int) -> str:
    return f"{TODAY - timedelta(days=days):%Y%m%d}"


@dataclass
class Region:
    """A hub, establishments A (no PACS) and C (Orthanc as its PACS)."""

    hub: Hub
    pacs_c: OrthancPeer

    def database(self) -> Database:
        return Database(f"sqlite:///{self.hub.data_dir / 'index.sqlite3'}", run_migrations=False)

    def jobs(self, study: str) -> list[JobStatus]:
        db = self.database()
        try:
            return list_jobs(db, study)
        finally:
            db.dispose()

    def has_study(self, study: str) -> bool:
        index = self.hub.data_dir / "index.sqlite3"
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
            row = conn.execute(
                "SELECT num_instances FROM studies WHERE study_instance_uid = ?", (study,)
            ).fetchone()
        return row is not None and row[0] > 0

    def upload(self, files: list[Path]) -> None:
        for f in files:
            self.pacs_c.api.upload_file(str(f))

    def wait_for_scan(self) -> None:
        """Wait until a prefetch scan started after now has finished (its marker moved)."""
        marker = self.hub.data_dir / "regional" / "prefetch.marker"
        start = datetime.now(UTC).replace(tzinfo=None)

        def scanned_after() -> bool:
            try:
                return datetime.fromisoformat(marker.read_text()) > start
            except (OSError, ValueError):
                return False

        wait_until(scanned_after, 60, interval=0.2, what="a prefetch scan")

    def wait_prefetched(self, study: str) -> JobStatus:
        wait_until(
            lambda: any(j.finished for j in self.jobs(study)),
            90,
            interval=0.3,
            what=f"prefetch of {study}",
        )
        jobs = self.jobs(study)
        assert len(jobs) == 1
        return jobs[0]


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    workdir = tmp_path_factory.mktemp("prefetch")
    hub = start_hub(
        workdir / "data",
        PACS_HUB_PREFETCH_MODALITIES="CT,MR",
        PACS_HUB_PREFETCH_MAX_AGE_DAYS="1825",
        PACS_HUB_HEALTH_CHECK_INTERVAL="0",
    )
    pacs_c = start_orthanc(
        workdir / "orthanc-c",
        aet="PACS_C",
        modalities={"HUB": (hub.ae_title, "127.0.0.1", hub.dicom_port)},
    )
    region = Region(hub, pacs_c)
    db = region.database()
    try:
        create_establishment(db, "HOSP_A", "Hospital A", "ISSUER_A")
        create_establishment(db, "HOSP_C", "Clinic C", "ISSUER_C")
        add_node(db, "A_MOD", "127.0.0.1", 104, "HOSP_A", role="modality")
        add_node(db, "C_MOD", "127.0.0.1", 104, "HOSP_C", role="modality")
        add_node(db, "PACS_C", "127.0.0.1", pacs_c.dicom_port, "HOSP_C", role="pacs")
        # A PACS that never answers (nothing listens): prefetch is best effort around it.
        add_node(db, "PACS_GONE", "127.0.0.1", free_port(), role="pacs")
    finally:
        db.dispose()
    yield region
    hub.stop()
    pacs_c.stop()


def test_new_study_pulls_the_priors_in_the_window_once(region: Region, tmp_path: Path) -> None:
    prior, prior_files = make_study(
        tmp_path / "prior", patient_id="P-1", modality="CT", study_date=days_ago(365)
    )
    old, old_files = make_study(
        tmp_path / "old", patient_id="P-1", modality="CT", study_date=days_ago(3650)
    )
    us, us_files = make_study(
        tmp_path / "us", patient_id="P-1", modality="US", study_date=days_ago(100)
    )
    other, other_files = make_study(
        tmp_path / "q", patient_id="Q-1", modality="CT", study_date=days_ago(100)
    )
    region.upload(prior_files + old_files + us_files + other_files)

    # A modality no establishment owns: P-1 has no issuer, every PACS is asked (PACS_GONE
    # refuses the connection and is skipped).
    new, new_files = make_study(tmp_path / "new", patient_id="P-1", modality="MR", count=2)
    storescu("SCANNER_X", region.hub.ae_title, region.hub.dicom_port, new_files)

    job = region.wait_prefetched(prior)
    assert (job.kind, job.state, job.node) == ("prefetch", "done", "PACS_C")
    assert job.received == len(prior_files)
    assert region.has_study(prior)
    region.wait_for_scan()
    for skipped in (old, us, other):
        assert not region.has_study(skipped) and region.jobs(skipped) == []
    assert region.jobs(new) == []  # the arrival itself is not pulled

    # A second new study of P-1: the prior is there already, it is not pulled twice.
    second, second_files = make_study(tmp_path / "second", patient_id="P-1", modality="CT")
    storescu("SCANNER_X", region.hub.ae_title, region.hub.dicom_port, second_files)
    region.wait_for_scan()
    assert region.jobs(prior) == [job]
    assert region.jobs(second) == []  # an arrival is never pulled


def test_linked_identity_priors_come_from_its_establishment_pacs(
    region: Region, tmp_path: Path
) -> None:
    # C's modality sends a study of C-77 (issuer ISSUER_C, INS known): a regional patient.
    _, c_files = make_study(tmp_path / "c", patient_id="C-77", modality="CT", ins=INS)
    storescu("C_MOD", region.hub.ae_title, region.hub.dicom_port, c_files)
    region.wait_for_scan()

    # Later, C's PACS holds a prior of C-77, and one of *its* patient A-11 (another person).
    prior, prior_files = make_study(
        tmp_path / "prior", patient_id="C-77", modality="MR", study_date=days_ago(700)
    )
    homonym, homonym_files = make_study(
        tmp_path / "homonym", patient_id="A-11", modality="CT", study_date=days_ago(30)
    )
    region.upload(prior_files + homonym_files)

    # A's modality sends a study of A-11 with the same INS: linked to C-77.
    _, a_files = make_study(tmp_path / "a", patient_id="A-11", modality="CT", ins=INS)
    storescu("A_MOD", region.hub.ae_title, region.hub.dicom_port, a_files)

    job = region.wait_prefetched(prior)
    assert (job.kind, job.state, job.node) == ("prefetch", "done", "PACS_C")
    assert region.has_study(prior)
    region.wait_for_scan()
    # A-11 belongs to A (issuer ISSUER_A), which has no PACS: C is not asked for A-11.
    assert not region.has_study(homonym) and region.jobs(homonym) == []


def test_wanted_applies_modalities_age_and_issuer() -> None:
    from pacs_hub.config import Settings

    settings = Settings(prefetch_modalities="ct, MR", prefetch_max_age_days=30)
    mine = prefetch.Identity("P", "ISSUER_A")

    def remote(days: int, modalities: str, issuer: str = "") -> prefetch.RemoteStudy:
        return prefetch.RemoteStudy("1.2.3", days_ago(days), frozenset(modalities.split()), issuer)

    assert prefetch.wanted(settings, remote(10, "CT SR"), mine, TODAY)
    assert not prefetch.wanted(settings, remote(10, "US"), mine, TODAY)
    assert not prefetch.wanted(settings, remote(40, "MR"), mine, TODAY)
    assert not prefetch.wanted(settings, remote(10, "MR", "ISSUER_B"), mine, TODAY)
    assert prefetch.wanted(settings, remote(10, "MR", "ISSUER_A"), mine, TODAY)
    anything = Settings(prefetch_modalities="", prefetch_max_age_days=0)
    assert prefetch.wanted(
        anything, prefetch.RemoteStudy("1.2.3", "", frozenset(), ""), mine, TODAY
    )
