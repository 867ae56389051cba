"""Legal retention and destruction (pacs_hub/archive/retention.py, destruction.py).

Studies stored through the ingest path by the nodes of two establishments, on SQLite
and on a real PostgreSQL server; the retention computed from their dates, the
destruction proposed, signed, executed, and what is left checked on disk, in the
index, in the audit trail, and against an index rebuilt from the blobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from pacs_hub.archive import destruction, retention
from pacs_hub.archive.integrity import check_archive
from pacs_hub.archive.models import DestructionStudy, destroyed_in
from pacs_hub.archive.reindex import reindex
from pacs_hub.backup import backfill
from pacs_hub.config import Settings
from pacs_hub.errors import InvalidQuery, StudyDestroyed
from pacs_hub.ingest import Ingestor
from pacs_hub.regional.establishments import create_establishment
from pacs_hub.regional.nodes import add_node
from pacs_hub.regional.pull import pull_study
from pacs_hub.storage import packs
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Instance, Patient, RegionalPatient, Series, Study
from pacs_hub.trust.models import AuditEvent
from pacs_hub.trust.users import UserFields, create_user
from tests.storage.conftest import as_part10, synthetic_dataset

OPERATOR = "system:cli-test"
PASSWORD = "correct horse battery"
# (name, patient, birth date, study date, sending node)
STUDIES = (
    ("S1", "P1", "19500101", "19900101", "CT_A"),
    ("S2", "P1", "19500101", "20000601", "CT_A"),
    ("S3", "P2", "19500101", "19950301", "CT_A"),
    ("S4", "P1", "19500101", "19910101", "CT_B"),
    ("S5", "P3", "19900909", "19950601", "CT_A"),
)


@dataclass
class World:
    settings: Settings
    database: Database
    blobs: BlobStore
    uids: dict[str, str]

    def name_of(self, uid: str) -> str:
        return next(k for k, v in self.uids.items() if v == uid)

    def regional(self, patient_id: str) -> str:
        with self.database.reader() as s:
            return str(
                s.scalars(
                    select(RegionalPatient.regional_id)
                    .join(Patient, Patient.regional_patient_pk == RegionalPatient.id)
                    .where(Patient.patient_id == patient_id)
                ).first()
            )

    def due(self, as_of: date, establishment: str | None = None) -> list[str]:
        with self.database.reader() as s:
            found = retention.due(s.connection(), self.settings, as_of, establishment=establishment)
        return sorted(self.name_of(f.study_instance_uid) for f in found)

    def count(self, model: type) -> int:
        with self.database.reader() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def keys_of(self, name: str) -> list[str]:
        with self.database.reader() as s:
            return list(
                s.scalars(
                    select(Instance.blob_key)
                    .join(Series, Instance.series_pk == Series.id)
                    .join(Study, Series.study_pk == Study.id)
                    .where(Study.study_instance_uid == self.uids[name])
                )
            )


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    blobs = BlobStore(data_dir)
    for code in ("ESTA", "ESTB"):
        create_establishment(database, code, f"Hospital {code}")
    add_node(database, "CT_A", "127.0.0.1", 104, "ESTA", role="modality")
    add_node(database, "CT_B", "127.0.0.1", 104, "ESTB", role="modality")
    add_node(database, "PACS_A", "127.0.0.1", 1, "ESTA", role="pacs")
    ingestor = Ingestor(database, blobs)
    uids = {}
    for name, patient, birth, day, node in STUDIES:
        uids[name] = generate_uid()
        series = generate_uid()
        for n in range(3):
            ds = synthetic_dataset(uids[name], series, patient_id=patient, pixel_bytes=3000 + n)
            ds.StudyDate, ds.PatientBirthDate = day, birth
            ingestor.ingest(as_part10(ds), received_from_ae=node)
    create_user(database, "dir", UserFields(roles=("regional-admin",), password=PASSWORD))
    create_user(
        database,
        "dim",
        UserFields(roles=("establishment-admin",), establishments=("ESTA",), password=PASSWORD),
    )
    create_user(database, "arch", UserFields(roles=("regional-admin",), password=PASSWORD))
    create_user(database, "dimr", UserFields(roles=("regional-admin",), password=PASSWORD))
    create_user(
        database,
        "other",
        UserFields(roles=("establishment-admin",), establishments=("ESTB",), password=PASSWORD),
    )
    create_user(database, "rad", UserFields(roles=("radiologist",), establishments=("ESTA",)))
    return World(settings, database, blobs, uids)


def test_the_retention_follows_the_last_contact_at_each_establishment(world: World) -> None:
    # S1 and S2: P1's last contact at ESTA is S2 (2000-06-01), so S1 waits for it;
    # S4: P1 at ESTB, its own last contact; S5: a child, kept to the 28th birthday
    assert world.due(date(2019, 1, 1)) == ["S3", "S4", "S5"]
    assert world.due(date(2020, 6, 1)) == ["S1", "S2", "S3", "S4", "S5"]
    assert world.due(date(2021, 1, 1), "ESTA") == ["S1", "S2", "S3", "S5"]
    with world.database.reader() as s:
        shown = retention.studies(s.connection(), world.settings, study_uids=[world.uids["S1"]])
    assert [(r.last_contact, r.retention_end, r.establishment) for r in shown] == [
        ("20000601", "20200601", "ESTA")
    ]
    retention.set_period(world.database, OPERATOR, "ESTA", 30)
    assert world.due(date(2021, 1, 1)) == ["S4"]
    retention.set_period(world.database, OPERATOR, "ESTA", None)
    assert world.due(date(2021, 1, 1)) == ["S1", "S2", "S3", "S4", "S5"]


def test_a_death_and_holds_move_the_end(world: World) -> None:
    p1 = world.regional("P1")
    retention.record_death(world.database, OPERATOR, p1, date(2003, 1, 1))
    # ten years from a death that came less than ten years after the last contact
    assert world.due(date(2013, 1, 1)) == ["S1", "S2", "S4"]
    retention.record_death(world.database, OPERATOR, p1, None)
    assert world.due(date(2013, 1, 1)) == ["S4"]
    hold = retention.place_hold(world.database, OPERATOR, "claim TGI-2019-12", regional_id=p1)
    study_hold = retention.place_hold(
        world.database, OPERATOR, "claim TGI-2020-3", study_uid=world.uids["S3"]
    )
    assert world.due(date(2030, 1, 1)) == ["S5"]
    assert [h["id"] for h in retention.holds(world.database)] == [hold, study_hold]
    retention.release_hold(world.database, OPERATOR, hold)
    with world.database.reader() as s:
        (s4,) = retention.studies(s.connection(), world.settings, study_uids=[world.uids["S4"]])
    assert s4.retention_end == "20110102"  # suspended one day (a day begun counts)
    assert world.due(date(2030, 1, 1)) == ["S1", "S2", "S4", "S5"]
    with pytest.raises(retention.UnknownHold):
        retention.release_hold(world.database, OPERATOR, hold)
    with pytest.raises(InvalidQuery):
        retention.place_hold(world.database, OPERATOR, "", study_uid=world.uids["S1"])
    with pytest.raises(InvalidQuery):
        retention.place_hold(world.database, OPERATOR, "x", study_uid="1.2", regional_id=p1)
    actions = audit_actions(world.database)
    assert actions.count("legal-hold") == 3 and actions.count("patient-death") == 2


def audit_actions(database: Database) -> list[str]:
    with database.reader() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def sign_all(world: World, destruction_id: int, dim: str = "dimr") -> None:
    """Director, DIM and the archives' visa (regional administrators sign for a
    destruction of the whole region; an establishment's own DIM for its own)."""
    assert destruction.sign(world.database, destruction_id, "director", "dir") == "proposed"
    assert destruction.sign(world.database, destruction_id, "dim", dim) == "proposed"
    assert (
        destruction.sign(world.database, destruction_id, "archives", "arch", "AD13-2021-0042")
        == "approved"
    )


def test_signatures_each_capacity_once_by_another_allowed_user(world: World) -> None:
    new = destruction.propose(
        world.database, world.settings, OPERATOR, date(2021, 1, 1), establishment="ESTA"
    )
    refused = [
        ("director", "rad", ""),  # a radiologist signs no destruction
        ("director", "other", ""),  # the administrator of another establishment
        ("director", "nobody", ""),
    ]
    for capacity, user, reference in refused:
        with pytest.raises(destruction.SignerNotAllowed):
            destruction.sign(world.database, new, capacity, user, reference)
    with world.database.reader() as s:
        denied = s.scalars(
            select(AuditEvent.actor_id).where(
                AuditEvent.action == "destruction-sign", AuditEvent.outcome == "deny"
            )
        ).all()
    assert denied == ["user:rad", "user:other", "user:nobody"]  # refusals are traced too
    with pytest.raises(InvalidQuery):
        destruction.sign(world.database, new, "archives", "arch", "")  # the visa's reference
    with pytest.raises(InvalidQuery):
        destruction.sign(world.database, new, "janitor", "arch")
    with pytest.raises(InvalidQuery):  # studies not yet due are never listed
        destruction.propose(world.database, world.settings, OPERATOR, date(2999, 1, 1))
    destruction.sign(world.database, new, "director", "dir")
    with pytest.raises(destruction.DestructionRefused):
        destruction.sign(world.database, new, "director", "arch")  # signed already
    with pytest.raises(destruction.DestructionRefused):
        destruction.sign(world.database, new, "dim", "dir")  # the same person twice
    with pytest.raises(destruction.DestructionRefused):
        destruction.execute(world.settings, world.database, world.blobs, new, OPERATOR)
    assert destruction.record(world.database, new)["state"] == "proposed"
    # a private establishment: no archives' visa
    destruction.cancel(world.database, new, OPERATOR, "redo as private")
    private = destruction.propose(
        world.database, world.settings, OPERATOR, date(2021, 1, 1), public=False
    )
    destruction.sign(world.database, private, "director", "dir")
    assert destruction.sign(world.database, private, "dim", "arch") == "approved"
    with pytest.raises(destruction.DestructionRefused):
        destruction.propose(world.database, world.settings, OPERATOR, date(2021, 1, 1))


def test_an_executed_destruction_leaves_nothing_and_keeps_its_record(world: World) -> None:
    before = world.count(Instance)
    new = destruction.propose(
        world.database, world.settings, OPERATOR, date(2019, 1, 1), establishment="ESTA"
    )
    listed = destruction.record(world.database, new)["studies"]
    assert sorted(world.name_of(s["study_instance_uid"]) for s in listed) == ["S3", "S5"]
    # listed once: a second proposal finds nothing more due at ESTA
    with pytest.raises(destruction.DestructionRefused):
        destruction.propose(
            world.database, world.settings, OPERATOR, date(2019, 1, 1), establishment="ESTA"
        )
    sign_all(world, new, dim="dim")
    gone_keys = world.keys_of("S3") + world.keys_of("S5")
    kept_keys = world.keys_of("S1") + world.keys_of("S4")
    seen: list[tuple[str, str]] = []
    done = destruction.execute(
        world.settings, world.database, world.blobs, new, OPERATOR,
        on_study=lambda uid, state: seen.append((world.name_of(uid), state)),
    )  # fmt: skip
    assert sorted(seen) == [("S3", "destroyed"), ("S5", "destroyed")]
    assert done["state"] == "done" and {s["state"] for s in done["studies"]} == {"destroyed"}
    assert [s["capacity"] for s in done["signatures"]] == ["director", "dim", "archives"]
    assert world.count(Instance) == before - 6
    with world.database.reader() as s:
        assert not s.scalars(
            select(Study.id).where(
                Study.study_instance_uid.in_([world.uids["S3"], world.uids["S5"]])
            )
        ).all()
        p2 = s.scalars(select(Patient).where(Patient.patient_id == "P2")).one()
        assert (p2.num_studies, p2.num_series, p2.num_instances) == (0, 0, 0)
        assert destroyed_in(s.connection(), world.uids["S3"]) == new
    for key in gone_keys:  # erased on disk
        assert world.blobs.problem(key, "0" * 64) in ("checksum mismatch", "missing")
        size = key.rsplit(":", 1)[1]
        assert world.blobs.ref(key).read_bytes() == bytes(int(size))
    report = check_archive(world.database, world.blobs, jobs=1)
    assert report.damaged == [] and report.whole == before - 6
    for key in kept_keys:
        assert world.blobs.ref(key).read_bytes()[128:132] == b"DICM"
    # the record: in the index and on disk, the audit trail says each study deleted
    record_file = destruction.folder(world.settings.data_dir) / f"{new}.json"
    assert record_file.exists() and world.uids["S3"] in record_file.read_text()
    with world.database.reader() as s:
        deleted = s.scalars(select(AuditEvent.study_uid).where(AuditEvent.action == "delete"))
        assert sorted(deleted) == sorted([world.uids["S3"], world.uids["S5"]])
    actions = audit_actions(world.database)
    for action in ("destruction-propose", "destruction-sign", "destruction-execute"):
        assert action in actions
    assert actions[-1] == "destruction-done"
    # never pulled back from the establishment's PACS
    with pytest.raises(StudyDestroyed):
        pull_study(world.settings, world.database, "PACS_A", world.uids["S3"])
    pacs = SimpleNamespace(node=SimpleNamespace(ae_title="PACS_A"), code="ESTA")
    settled = backfill._pull_one(world.settings, world.database, pacs, world.uids["S3"], 3)
    assert settled == {"done": True, "bytes": 0, "error": "", "got": 0}  # not failed forever
    with pytest.raises(destruction.DestructionRefused):
        destruction.execute(world.settings, world.database, world.blobs, new, OPERATOR)


def test_an_index_rebuilt_from_the_blobs_does_not_bring_them_back(
    world: World, tmp_path: Path
) -> None:
    new = destruction.propose(world.database, world.settings, OPERATOR, date(2019, 1, 1))
    sign_all(world, new)
    destruction.execute(world.settings, world.database, world.blobs, new, OPERATOR)
    fresh = Database(f"sqlite:///{tmp_path / 'rebuilt.sqlite3'}")
    try:
        digests = destruction.destroyed_digests(world.settings.data_dir)
        assert len(digests) == 9
        report = reindex(fresh, world.blobs, destroyed=digests)
        assert report.erased == 9 and report.indexed == 6 and report.problems == 0
        with fresh.reader() as s:
            left = set(s.scalars(select(Study.study_instance_uid)))
        assert left == {world.uids["S1"], world.uids["S2"]}
    finally:
        fresh.dispose()


def test_an_interrupted_execution_finishes_and_a_hold_placed_since_keeps_a_study(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    new = destruction.propose(world.database, world.settings, OPERATOR, date(2019, 1, 1))
    sign_all(world, new)
    retention.place_hold(world.database, OPERATOR, "claim 7", study_uid=world.uids["S5"])
    calls = {"n": 0}
    erase = BlobStore.erase

    def crash_on_second(self: BlobStore, key: str) -> bool:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("power cut")
        return erase(self, key)

    monkeypatch.setattr(BlobStore, "erase", crash_on_second)
    with pytest.raises(OSError):
        destruction.execute(world.settings, world.database, world.blobs, new, OPERATOR)
    with world.database.reader() as s:
        states = dict(
            s.execute(
                select(DestructionStudy.study_instance_uid, DestructionStudy.state).where(
                    DestructionStudy.destruction_pk == new
                )
            ).all()
        )
    assert "erasing" in states.values()
    assert destruction.record(world.database, new)["state"] == "executing"
    # an index rebuilt now (rows deleted, bytes not yet erased) leaves them out too
    fresh = Database(f"sqlite:///{tmp_path / 'rebuilt.sqlite3'}")
    try:
        digests = destruction.destroyed_digests(world.settings.data_dir)
        report = reindex(fresh, world.blobs, destroyed=digests)
        assert report.destroyed + report.erased == 3 and report.problems == 0
    finally:
        fresh.dispose()
    monkeypatch.setattr(BlobStore, "erase", erase)
    running = destruction._executing_alone(world.settings.data_dir, new)  # another one runs it
    with running, pytest.raises(destruction.DestructionRefused, match="another process"):
        destruction.execute(world.settings, world.database, world.blobs, new, OPERATOR)
    done = destruction.execute(world.settings, world.database, world.blobs, new, OPERATOR)
    by_name = {world.name_of(s["study_instance_uid"]): s for s in done["studies"]}
    assert by_name["S5"]["state"] == "kept"
    assert by_name["S5"]["kept_reason"] == "a legal hold is placed"
    assert {by_name[n]["state"] for n in ("S3", "S4")} == {"destroyed"}
    for name in ("S3", "S4"):
        assert world.keys_of(name) == []
    packs_found = [
        item
        for pack in (world.settings.data_dir / "blobs" / "packs").glob("*.pack")
        for item in packs.survey(pack)
    ]
    assert sum(isinstance(i, packs.Erased) for i in packs_found) == 6
    assert not any(isinstance(i, packs.Unreadable) for i in packs_found)
    assert len(world.keys_of("S5")) == 3


def test_an_instance_arriving_while_its_study_is_destroyed_is_recorded_and_erased(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = destruction.propose(
        world.database, world.settings, OPERATOR, date(2019, 1, 1), establishment="ESTA"
    )
    sign_all(world, new, dim="dim")
    late = synthetic_dataset(world.uids["S3"], patient_id="P2", pixel_bytes=2000)
    late.StudyDate, late.PatientBirthDate = "19950301", "19500101"
    append = destruction.append_line
    arrived: list[str] = []

    def then_one_arrives(path: Path, line: dict) -> None:  # type: ignore[type-arg]
        append(path, line)
        if line["study_instance_uid"] == world.uids["S3"] and not arrived:
            arrived.append(Ingestor(world.database, world.blobs).ingest(as_part10(late)).sha256)

    monkeypatch.setattr(destruction, "append_line", then_one_arrives)
    done = destruction.execute(world.settings, world.database, world.blobs, new, OPERATOR)
    assert {s["state"] for s in done["studies"]} == {"destroyed"}
    assert arrived and arrived[0] in destruction.destroyed_digests(world.settings.data_dir)
    assert world.keys_of("S3") == []
    pack_items = [
        item
        for pack in (world.settings.data_dir / "blobs" / "packs").glob("*.pack")
        for item in packs.survey(pack)
    ]
    assert sum(isinstance(i, packs.Erased) for i in pack_items) == 7  # S3's 3 + 1, S5's 3


def test_the_daily_count_of_what_is_due_reaches_the_metrics(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    from pacs_hub.archive import retention_sweep
    from pacs_hub.metrics import HubCollector

    with caplog.at_level("INFO", logger="pacs_hub.archive.retention_sweep"):
        counted = retention_sweep.sweep(world.settings, world.database)
    # as of today every study is due: ESTA's four and ESTB's one, 3 instances each
    assert {code: c["studies"] for code, c in counted["due"].items()} == {"ESTA": 4, "ESTB": 1}
    assert retention_sweep.load(world.settings)["due"] == counted["due"]
    assert not retention_sweep.due_now(world.settings)  # a restart does not count again
    soon = world.settings.model_copy(update={"retention_sweep_hours": 1e-9})
    assert retention_sweep.due_now(soon)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "4 stud(ies)" in said and "establishment ESTA" in said and "P1" not in said
    families = {f.name: f for f in HubCollector(world.settings, world.database, None).collect()}
    samples = {
        (s.name, s.labels["establishment"]): s.value
        for s in families["pacs_hub_retention_due_studies"].samples
        + families["pacs_hub_retention_due_bytes"].samples
    }
    assert samples[("pacs_hub_retention_due_studies", "ESTA")] == 4
    assert samples[("pacs_hub_retention_due_bytes", "ESTB")] == counted["due"]["ESTB"]["bytes"] > 0


def test_a_29_february_and_a_study_without_date(world: World) -> None:
    ingestor = Ingestor(world.database, world.blobs)
    leap, undated = generate_uid(), generate_uid()
    for uid, day in ((leap, "20000229"), (undated, "")):
        ds = synthetic_dataset(uid, patient_id=f"P-{day or 'none'}", pixel_bytes=1000)
        ds.StudyDate, ds.PatientBirthDate = day, "19500101"
        ingestor.ingest(as_part10(ds), received_from_ae="CT_A")
    world.uids.update(LEAP=leap, UNDATED=undated)
    retention.set_period(world.database, OPERATOR, "ESTA", 1)
    # 1 year after 29 February 2000 is 28 February 2001: due that very day
    assert "LEAP" in world.due(date(2001, 2, 28), "ESTA")
    assert "LEAP" not in world.due(date(2001, 2, 27), "ESTA")
    # no Study Date: the day the hub received it is the contact (today: not due)
    with world.database.reader() as s:
        (shown,) = retention.studies(s.connection(), world.settings, study_uids=[undated])
    assert shown.last_contact == retention.da(retention.now().date())
    assert "UNDATED" not in world.due(retention.now().date(), "ESTA")
