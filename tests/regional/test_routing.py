"""Routing rules with real peers: dcmtk's storescu as establishment A's CT, Orthanc as the
destination (tele-radiology), the hub's persistent queue with retries and restarts."""

from __future__ import annotations

import io
import socket
import sqlite3
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacs_hub.regional import routing
from pacs_hub.regional.establishments import create_establishment
from pacs_hub.regional.nodes import add_node
from pacs_hub.regional.routing_rules import (
    InvalidRoutingRule,
    SeriesFacts,
    normalise_conditions,
    series_matches,
    study_matches,
)
from pacs_hub.storage.database import Database
from tests.blobs import blob_of, study_blob_keys
from tests.conftest import Hub, free_port, start_hub, wait_until
from tests.peers import OrthancPeer, start_orthanc
from tests.regional.study_factory import dataset_digest, make_study, storescu

pytestmark = pytest.mark.orthanc
MAX_ATTEMPTS = 6
SCAN_INTERVAL = timedelta(seconds=routing.SCAN_INTERVAL)
HUB_ENV = {
    "PACS_HUB_ROUTING_RETRY_BASE": "0.4",
    "PACS_HUB_ROUTING_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "PACS_HUB_HEALTH_CHECK_INTERVAL": "0",
    "PACS_HUB_PREFETCH_ENABLED": "false",
}


@dataclass
class Region:
    """A hub, establishments A and C with a CT each, Orthanc B as the reading site."""

    hub: Hub
    orthanc_b: OrthancPeer
    workdir: Path

    def database(self) -> Database:
        return Database(f"sqlite:///{self.hub.data_dir / 'index.sqlite3'}", run_migrations=False)

    def queue(self, **params: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.hub.url}/api/routing/queue", params=params, timeout=10)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()
        return items

    def item(self, study: str) -> dict[str, Any] | None:
        items = self.queue(study=study)
        assert len(items) <= 1
        return items[0] if items else None

    def wait_state(self, study: str, state: str, timeout: float = 60) -> dict[str, Any]:
        wait_until(
            lambda: (self.item(study) or {}).get("state") == state,
            timeout,
            interval=0.3,
            what=f"routing item of {study} {state}",
        )
        found = self.item(study)
        assert found is not None
        return found

    def wait_for_scan(self) -> None:
        """Wait until the routing scan ran twice after now (its marker moved)."""
        marker = self.hub.data_dir / "regional" / "routing-scan.marker"
        start = datetime.now(UTC).replace(tzinfo=None)

        def scanned_after() -> bool:
            try:
                return datetime.fromisoformat(marker.read_text()) > start + SCAN_INTERVAL
            except (OSError, ValueError):
                return False

        wait_until(scanned_after, 30, interval=0.2, what="a routing scan")

    def send(self, calling_ae: str, files: list[Path]) -> None:
        storescu(calling_ae, self.hub.ae_title, self.hub.dicom_port, files)


def orthanc_datasets(peer: OrthancPeer, study_uid: str) -> dict[str, str]:
    """SOP Instance UID -> dataset digest of the study's instances held by ``peer``."""
    found = peer.api.studies.lookup(study_uid)
    if found is None:
        return {}
    files = [peer.api.instances.get_file(i) for i in peer.api.studies.get_instances_ids(found)]
    return {
        str(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID): (
            dataset_digest(b)
        )
        for b in files
    }


def file_datasets(files: list[Path]) -> dict[str, str]:
    return {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): dataset_digest(
            f.read_bytes()
        )
        for f in files
    }


def hub_datasets(hub: Hub, study_uid: str) -> dict[str, str]:
    keys = study_blob_keys(hub.data_dir, study_uid)
    return {
        uid: dataset_digest(blob_of(hub.data_dir, key).read_bytes()) for uid, key in keys.items()
    }


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    workdir = tmp_path_factory.mktemp("routing")
    hub = start_hub(workdir / "data", **HUB_ENV)
    orthanc_b = start_orthanc(workdir / "orthanc-b", aet="PACS_B")
    region = Region(hub, orthanc_b, workdir)
    db = region.database()
    try:
        create_establishment(db, "HOSP_A", "Hospital A", "ISSUER_A")
        create_establishment(db, "HOSP_C", "Clinic C", "ISSUER_C")
        add_node(db, "A_CT", "127.0.0.1", 104, "HOSP_A", role="modality")
        add_node(db, "C_CT", "127.0.0.1", 104, "HOSP_C", role="modality")
        add_node(db, "PACS_B", "127.0.0.1", orthanc_b.dicom_port, role="destination")
        answer = httpx.post(
            f"{hub.url}/api/routing/rules",
            json={
                "name": "ct-of-a",
                "conditions": {"establishment": "hosp_a", "modality": "ct"},
                "destination": "PACS_B",
            },
        )
        assert answer.status_code == 201, answer.text
    finally:
        db.dispose()
    yield region
    region.hub.stop()
    orthanc_b.stop()


def test_ct_of_a_is_forwarded_byte_identical_others_are_not(region: Region, tmp_path: Path) -> None:
    mr_uid, mr_files = make_study(tmp_path / "mr", patient_id="PA1", modality="MR")
    other_uid, other_files = make_study(tmp_path / "c", patient_id="PC1", modality="CT")
    ct_uid, ct_files = make_study(tmp_path / "ct", patient_id="PA1", modality="CT", count=4)
    region.send("A_CT", mr_files)  # A's MR: no rule
    region.send("C_CT", other_files)  # C's CT: no rule
    region.send("A_CT", ct_files)

    item = region.wait_state(ct_uid, "sent")
    assert item["rule"] == "ct-of-a" and item["destination"] == "PACS_B"
    assert item["attempts"] == 1 and item["last_error"] == ""
    sent = orthanc_datasets(region.orthanc_b, ct_uid)
    assert sent == hub_datasets(region.hub, ct_uid) == file_datasets(ct_files)
    # The CT was queued after the other two arrived: they were seen and did not match.
    assert region.item(mr_uid) is None and region.item(other_uid) is None
    assert region.orthanc_b.api.studies.lookup(mr_uid) is None
    assert region.orthanc_b.api.studies.lookup(other_uid) is None

    shown = region.hub.cli("routing", "queue", "--study", ct_uid, "--json")
    assert '"state": "sent"' in shown.stdout


def test_new_instances_after_sent_requeue_the_study_duplicates_do_not(
    region: Region, tmp_path: Path
) -> None:
    ct_uid, first = make_study(tmp_path / "one", patient_id="PA2", modality="CT", count=2)
    region.send("A_CT", first)
    before = region.wait_state(ct_uid, "sent")

    region.send("A_CT", first)  # the same instances again: duplicates, nothing new
    region.wait_for_scan()
    assert region.item(ct_uid) == before

    _, more = make_study(
        tmp_path / "two", patient_id="PA2", modality="CT", count=2, study_uid=ct_uid
    )
    region.send("A_CT", more)
    wait_until(
        lambda: len(orthanc_datasets(region.orthanc_b, ct_uid)) == 4,
        60,
        interval=0.5,
        what="the new instances at Orthanc B",
    )
    after = region.wait_state(ct_uid, "sent")
    assert after["id"] == before["id"]  # one item per rule and study
    assert orthanc_datasets(region.orthanc_b, ct_uid) == file_datasets(first + more)


def test_a_study_is_never_sent_back_to_the_node_it_came_from(
    region: Region, tmp_path: Path
) -> None:
    region.hub.cli("routing", "add", "every-ot", "--modality", "OT", "--destination", "PACS_B")
    try:
        from_b, b_files = make_study(tmp_path / "b", patient_id="PB1", modality="OT")
        from_a, a_files = make_study(tmp_path / "a", patient_id="PA4", modality="OT")
        region.send("PACS_B", b_files)  # PACS_B itself sends an OT study to the hub
        region.send("A_CT", a_files)
        region.wait_state(from_a, "sent")
        region.wait_for_scan()
        assert region.item(from_b) is None
        assert region.orthanc_b.api.studies.lookup(from_b) is None
    finally:
        region.hub.cli("routing", "remove", "every-ot")


def test_a_hung_destination_does_not_hold_up_the_others(region: Region, tmp_path: Path) -> None:
    hung = socket.socket()  # listens, never answers: the hub waits until its ACSE timeout
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    db = region.database()
    try:
        add_node(db, "HUNG", "127.0.0.1", hung.getsockname()[1], role="destination")
    finally:
        db.dispose()
    for name, destination in (("nm-to-hung", "HUNG"), ("nm-to-b", "PACS_B")):
        region.hub.cli(
            "routing", "add", name, "--establishment", "HOSP_A", "--modality", "NM",
            "--destination", destination,
        )  # fmt: skip
    try:
        nm_uid, files = make_study(tmp_path / "nm", patient_id="PA5", modality="NM")
        region.send("A_CT", files)

        def state(rule: str) -> str:
            items = region.queue(study=nm_uid, rule=rule)
            return str(items[0]["state"]) if items else ""

        wait_until(lambda: state("nm-to-b") == "sent", 30, interval=0.3, what="nm-to-b sent")
        assert state("nm-to-hung") == "sending"  # still waiting for HUNG's answer
        assert orthanc_datasets(region.orthanc_b, nm_uid) == file_datasets(files)
    finally:
        region.hub.cli("routing", "remove", "nm-to-hung")
        region.hub.cli("routing", "remove", "nm-to-b")
        hung.close()


def test_unknown_destination_or_establishment_is_refused_nothing_stored(
    region: Region,
) -> None:
    before = httpx.get(f"{region.hub.url}/api/routing/rules").json()
    answer = httpx.post(
        f"{region.hub.url}/api/routing/rules",
        json={"name": "nowhere", "conditions": {"modality": "CT"}, "destination": "NO_SUCH_AE"},
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "NO_SUCH_AE" in answer.json()["detail"]
    answer = httpx.post(
        f"{region.hub.url}/api/routing/rules",
        json={
            "name": "no-such-place",
            "conditions": {"establishment": "HOSP_Z"},
            "destination": "PACS_B",
        },
    )
    assert answer.status_code == 422 and "HOSP_Z" in answer.json()["detail"]
    answer = httpx.post(
        f"{region.hub.url}/api/routing/rules",
        json={"name": "bad-key", "conditions": {"colour": "red"}, "destination": "PACS_B"},
    )
    assert answer.status_code == 422 and "colour" in answer.json()["detail"]
    refused = region.hub.cli(
        "routing", "add", "nowhere", "--modality", "CT", "--destination", "NO_SUCH_AE", check=False
    )
    assert refused.returncode == 2 and "NO_SUCH_AE" in refused.stdout
    assert httpx.get(f"{region.hub.url}/api/routing/rules").json() == before


def test_rules_listed_disabled_enabled_removed_through_cli_and_api(region: Region) -> None:
    hub = region.hub
    hub.cli(
        "routing",
        "add",
        "sr-to-b",
        "--modality",
        "SR",
        "--station",
        "x",
        "--destination",
        "PACS_B",
        "--disabled",
    )
    rule = httpx.get(f"{hub.url}/api/routing/rules/sr-to-b").json()
    assert rule["enabled"] is False
    assert rule["conditions"] == {"modality": ["SR"], "station": ["x"]}
    assert httpx.post(f"{hub.url}/api/routing/rules/sr-to-b/enable").json()["enabled"] is True
    assert "sr-to-b" in hub.cli("routing", "list").stdout
    hub.cli("routing", "disable", "sr-to-b")
    assert httpx.get(f"{hub.url}/api/routing/rules/sr-to-b").json()["enabled"] is False
    duplicate = httpx.post(
        f"{hub.url}/api/routing/rules",
        json={"name": "sr-to-b", "destination": "PACS_B"},
    )
    assert duplicate.status_code == 409
    assert httpx.delete(f"{hub.url}/api/routing/rules/sr-to-b").status_code == 204
    assert httpx.get(f"{hub.url}/api/routing/rules/sr-to-b").status_code == 404
    assert hub.cli("routing", "remove", "sr-to-b", check=False).returncode == 2


def test_destination_down_retries_survives_restart_then_delivers(
    region: Region, tmp_path: Path
) -> None:
    port = free_port()
    db = region.database()
    try:
        add_node(db, "PACS_D", "127.0.0.1", port, role="destination")
    finally:
        db.dispose()
    region.hub.cli(
        "routing",
        "add",
        "mr-of-c",
        "--establishment",
        "HOSP_C",
        "--modality",
        "MR",
        "--destination",
        "PACS_D",
    )
    mr_uid, files = make_study(tmp_path / "mr", patient_id="PC2", modality="MR")
    region.send("C_CT", files)
    wait_until(
        lambda: (region.item(mr_uid) or {}).get("attempts", 0) >= 2,
        60,
        interval=0.2,
        what="two failed attempts",
    )
    item = region.item(mr_uid)
    assert item is not None and item["state"] in ("queued", "sending")
    assert "PACS_D" in item["last_error"]

    # A crash while sending: the hub stops and the row is left 'sending'.
    region.hub.stop()
    index = region.hub.data_dir / "index.sqlite3"
    with sqlite3.connect(index) as conn:
        conn.execute("UPDATE routing_queue SET state = 'sending' WHERE id = ?", (item["id"],))
    region.hub = start_hub(region.hub.data_dir, **HUB_ENV)
    peer_d = start_orthanc(tmp_path / "orthanc-d", aet="PACS_D", dicom_port=port)
    try:
        delivered = region.wait_state(mr_uid, "sent", timeout=90)
        assert delivered["id"] == item["id"] and delivered["last_error"] == ""
        assert orthanc_datasets(peer_d, mr_uid) == file_datasets(files)
    finally:
        peer_d.stop()
        region.hub.cli("routing", "remove", "mr-of-c")


def test_destination_never_up_ends_failed_with_the_reason(region: Region, tmp_path: Path) -> None:
    db = region.database()
    try:
        add_node(db, "NOWHERE", "127.0.0.1", free_port(), role="destination")
    finally:
        db.dispose()
    region.hub.cli(
        "routing",
        "add",
        "us-of-a",
        "--establishment",
        "HOSP_A",
        "--modality",
        "US",
        "--destination",
        "NOWHERE",
    )
    us_uid, files = make_study(tmp_path / "us", patient_id="PA3", modality="US")
    region.send("A_CT", files)
    failed = region.wait_state(us_uid, "failed", timeout=90)
    assert failed["attempts"] == MAX_ATTEMPTS
    assert "no association with NOWHERE" in failed["last_error"]
    assert region.queue(state="failed", rule="us-of-a") == [failed]

    retried = httpx.post(f"{region.hub.url}/api/routing/queue/{failed['id']}/retry").json()
    assert retried["state"] == "queued" and retried["attempts"] == 0
    region.hub.cli("routing", "remove", "us-of-a")
    assert region.item(us_uid) is None


# -- the matcher, without peers ------------------------------------------------------

CODE = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=16)


@given(modality=CODE, station=CODE, establishment=CODE)
def test_conditions_ignore_case_and_are_and_ed(
    modality: str, station: str, establishment: str
) -> None:
    series = SeriesFacts(modality.upper(), "", station.lower(), frozenset({establishment}))
    wanted = normalise_conditions(
        {"modality": modality.lower(), "station": [station.upper()], "establishment": establishment}
    )
    assert series_matches(wanted, series)
    assert series_matches({}, series)  # no condition: every study
    other = SeriesFacts(modality + "X", "", station, frozenset({establishment}))
    assert not series_matches(wanted, other)  # one condition fails: no match
    assert study_matches(wanted, [other, series]) and not study_matches(wanted, [other])


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"colour": "red"}, "unknown condition"),
        ({"modality": 3}, "expected a string or a list of strings"),
        ({"modality": ["", " "]}, "is empty"),
        ({"station": "A\\B"}, "at most 64 characters"),
    ],
)
def test_bad_conditions_say_what_was_expected(conditions: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRoutingRule, match=message):
        normalise_conditions(conditions)
