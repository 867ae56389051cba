"""``GET /metrics`` (pacs_hub/metrics.py): what a real hub counted, over DICOM from dcmtk
and over HTTP, added up across its processes; what it reads at scrape time; who may
scrape."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pacs_hub import metrics
from tests.conftest import Hub, dcmtk, start_hub
from tests.regional.study_factory import make_study, storescu
from tests.trust.test_auth import code_flow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(hub: Hub, headers: dict[str, str] | None = None) -> tuple[str, Samples]:
    answer = httpx.get(f"{hub.url}/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return answer.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def busy_hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub with two gateway and two HTTP processes (counts are added up)."""
    hub = start_hub(tmp_path / "data", processes=2, PACS_HUB_HTTP_PROCESSES="2")
    yield hub
    hub.stop()


def test_the_hub_counts_what_it_did_without_patient_data(busy_hub: Hub, tmp_path: Path) -> None:
    hub = busy_hub
    study_uid, files = make_study(tmp_path / "study", patient_id="METRICS-1", count=4)
    for one in files[:2]:  # separate associations: either gateway process may take them
        storescu("MODALITY", hub.ae_title, hub.dicom_port, [one])
    storescu("MODALITY", hub.ae_title, hub.dicom_port, files[2:])
    storescu("MODALITY", hub.ae_title, hub.dicom_port, files[:1])  # again: a duplicate
    other = pydicom.dcmread(files[3])
    other.ImageComments = "other bytes, same SOP Instance UID"
    conflict = tmp_path / "conflict.dcm"
    other.save_as(conflict, enforce_file_format=True)
    subprocess.run(  # refused with 0xA900 (kept the first): a failure, nothing changed
        [dcmtk("storescu"), "-aec", hub.ae_title, "127.0.0.1", str(hub.dicom_port), conflict],
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [dcmtk("echoscu"), "-aec", hub.ae_title, "127.0.0.1", str(hub.dicom_port)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for _ in range(3):
        found = httpx.get(f"{hub.url}/dicom-web/studies", params={"StudyInstanceUID": study_uid})
        assert found.status_code == 200
    httpx.get(f"{hub.url}/dicom-web/studies/{study_uid}/series", timeout=30)

    text, samples = scrape(hub)
    assert value(samples, "pacs_hub_dimse_requests_total", service="C-STORE") == 6
    assert value(samples, "pacs_hub_dimse_requests_total", service="C-ECHO") == 1
    assert (
        value(samples, "pacs_hub_dimse_responses_total", service="C-STORE", status="success") == 5
    )
    assert (
        value(samples, "pacs_hub_dimse_responses_total", service="C-STORE", status="failure") == 1
    )
    assert value(samples, "pacs_hub_ingested_instances_total", door="dicom", outcome="stored") == 4
    assert (
        value(samples, "pacs_hub_ingested_instances_total", door="dicom", outcome="duplicate") == 1
    )
    assert (
        value(samples, "pacs_hub_ingested_instances_total", door="dicom", outcome="rejected") == 1
    )
    stored = value(samples, "pacs_hub_archive_bytes")
    assert stored > 0
    assert value(samples, "pacs_hub_ingested_bytes_total", door="dicom") == stored
    assert value(samples, "pacs_hub_archive_instances") == 4
    assert value(samples, "pacs_hub_archive_studies") == 1
    assert value(samples, "pacs_hub_gateway_processes_alive") == 2
    qido = {"route": "/dicom-web/studies", "method": "GET", "status": "200"}
    assert value(samples, "pacs_hub_http_requests_total", **qido) == 3
    series = {"route": "/dicom-web/studies/{study}/series", "method": "GET", "status": "200"}
    assert value(samples, "pacs_hub_http_requests_total", **series) == 1
    assert (
        value(samples, "pacs_hub_http_request_duration_seconds_count", route="/dicom-web/studies")
        == 3
    )
    assert value(samples, "pacs_hub_integrity_damaged_instances", cycle="last") == 0
    assert value(samples, "pacs_hub_routing_queue", state="queued") == 0
    # Labels name services, doors and route templates: no UID, no patient.
    assert study_uid not in text and "METRICS-1" not in text
    # The scrape itself is counted (by the HTTP process that answered it).
    _, again = scrape(hub)
    assert (
        value(again, "pacs_hub_http_requests_total", route="/metrics", method="GET", status="200")
        >= 1
    )


def test_a_scraper_needs_the_token_or_an_administrator(tmp_path: Path) -> None:
    hub = start_hub(
        tmp_path / "data", PACS_HUB_AUTH_REQUIRED="true", PACS_HUB_METRICS_TOKEN="s3cret-scrape"
    )
    try:
        anonymous = httpx.get(f"{hub.url}/metrics", timeout=30)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        wrong = httpx.get(
            f"{hub.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=30
        )
        assert wrong.status_code == 401
        scrape(hub, {"Authorization": "Bearer s3cret-scrape"})
        password = (hub.data_dir / "initial-admin-password").read_text(encoding="utf-8").strip()
        admin = code_flow(hub.url, "admin", password)["access_token"]
        scrape(hub, {"Authorization": f"Bearer {admin}"})
    finally:
        hub.stop()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0x0000, "success"),
        (0xB000, "warning"),
        (0x0001, "warning"),
        (0xA700, "failure"),
        (0xC000, "failure"),
        (0x0122, "failure"),
    ],
)
def test_dicom_statuses_fall_in_their_class(status: int, kind: str) -> None:
    assert metrics.status_class(status) == kind  # PS3.7 Annex C
