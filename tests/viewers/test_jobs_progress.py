"""A processing job's progress in OHIF's header (Debian's chromium, a real hub, issue 7).

The hub runs with the access policy on. A job is submitted over the API and, once it
runs, its worker process is paused with SIGSTOP: its record then holds still, so the
header must show exactly the stage and percent the API gives. After SIGCONT the job
finishes and the header offers its result series, which open and render. A user of
another establishment, on the study list, is shown no job (the jobs API filters by the
policy). No request leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright._impl._api_structures import Clip
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import Hub, wait_until
from tests.processing.helpers import CT
from tests.processing.test_workers import SLOW, _uid, _worker_pid, boot
from tests.trust.test_audit import service_token
from tests.viewers.test_browser import CHROMIUM, PageWatch, _launch, _wait_rendered, _watch

pytestmark = pytest.mark.browser

JOBS = "/api/processing/jobs"
CHIP = "[data-cy=pacs-hub-jobs-summary]"
TIMEOUT_MS = 60_000
HEADER: Clip = {"x": 0, "y": 0, "width": 700, "height": 60}  # kept in tmp_path for the report


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run 'make test' (installs Debian's chromium)")
    with sync_playwright() as playwright:
        launched = _launch(playwright)
        yield launched
        launched.close()


def _job(hub: Hub, key: str, headers: dict[str, str]) -> dict[str, Any]:
    answer = httpx.get(f"{hub.url}{JOBS}/{key}", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@contextmanager
def _page(browser: Browser, hub: Hub, path: str) -> Iterator[tuple[Page, PageWatch, list[str]]]:
    """A fresh browser context at ``path``; its jobs API answers recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        watch = _watch(context, page)
        answers: list[str] = []
        page.on(
            "response",
            lambda r: answers.append(f"{r.status} {r.url}") if JOBS in r.url else None,
        )
        page.goto(hub.url + path)
        yield page, watch, answers
    finally:
        context.close()


def test_header_follows_a_paused_job_then_opens_its_results(
    tmp_path: Path, browser: Browser
) -> None:
    hub = boot(tmp_path, PACS_HUB_AUTH_REQUIRED="true", PACS_HUB_PROCESSING_STALE_AFTER="600")
    stopped: int | None = None
    try:
        hub.cli("import", str(CT))
        hub.cli("establishments", "add", "ESTB", "Clinique B")
        admin_token = service_token(hub, "admin-svc", "regional-admin")
        outsider_token = service_token(hub, "outsider", "radiologist", establishment="ESTB")
        admin = {"Authorization": f"Bearer {admin_token}"}
        (series,) = httpx.get(f"{hub.url}/dicom-web/series", headers=admin, timeout=30).json()
        study, series_uid = _uid(series, "0020000D"), _uid(series, "0020000E")
        viewer = f"/viewer?StudyInstanceUIDs={study}&token={admin_token}"
        with _page(browser, hub, viewer) as (page, watch, answers):
            page.wait_for_selector("[data-cy=pacs-hub-jobs]", timeout=TIMEOUT_MS)
            assert page.locator(CHIP).count() == 0  # no job yet
            submitted = httpx.post(
                f"{hub.url}{JOBS}", json={"series_uid": series_uid, **SLOW}, headers=admin
            )
            assert submitted.status_code == 202, submitted.text
            key = submitted.json()["id"]
            wait_until(lambda: _job(hub, key, admin)["percent"] >= 5, timeout=180, interval=0.1)
            stopped = int(_worker_pid(hub, key))
            os.kill(stopped, signal.SIGSTOP)  # the job's record now holds still
            held = _job(hub, key, admin)
            assert held["state"] == "running" and 0 < held["percent"] < 90, held
            shown = f"{int(held['percent'] + 0.5)}% {held['stage']} \N{MIDDLE DOT} mpr+mip"
            chip = page.locator(CHIP)
            chip.get_by_text(shown, exact=True).wait_for(timeout=TIMEOUT_MS)
            page.screenshot(path=tmp_path / "header-running.png", clip=HEADER)
            job = page.locator(f"[data-cy=pacs-hub-job][data-job-id='{key}']")
            assert job.get_attribute("data-state") == "running"
            width = page.locator("[data-cy=pacs-hub-job-bar]").evaluate("e => e.style.width")
            assert float(str(width).rstrip("%")) == held["percent"]

            with _page(browser, hub, f"/?token={outsider_token}") as (other, other_watch, seen):
                other.wait_for_selector("[data-cy=pacs-hub-jobs]", timeout=TIMEOUT_MS)
                for _ in range(150):  # the page's first poll (events flow while it waits)
                    if any(a.startswith("200 ") for a in seen):
                        break
                    other.wait_for_timeout(200)
                assert any(a.startswith("200 ") for a in seen), seen
                assert other.locator(CHIP).count() == 0  # the policy hides the job
                other_watch.assert_clean()

            os.kill(stopped, signal.SIGCONT)
            stopped = None
            link = page.locator("[data-cy=pacs-hub-job-results]")
            link.wait_for(timeout=300_000)
            final = _job(hub, key, admin)
            assert final["state"] == "succeeded", final
            assert job.get_attribute("data-state") == "succeeded"
            assert chip.locator("[data-cy=pacs-hub-job-text]").inner_text() == "mpr+mip done"
            page.screenshot(path=tmp_path / "header-done.png", clip=HEADER)
            href = link.get_attribute("href") or ""
            assert href.startswith(f"/viewer?StudyInstanceUIDs={study}&SeriesInstanceUIDs=")
            assert href.rpartition("=")[2].split(",") == final["result_series"]
            assert all(f"study={study}" in a for a in answers), answers
            for asked, listed in ((study, [key]), (series_uid, [])):  # the API's study filter
                found = httpx.get(f"{hub.url}{JOBS}", params={"study": asked}, headers=admin)
                assert [j["id"] for j in found.json()] == listed, found.text
            assert all(a.startswith("200 ") for a in answers), answers
            link.click()
            page.wait_for_url("**SeriesInstanceUIDs=*")
            _wait_rendered(page, 1, tmp_path)
            watch.assert_clean()
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        hub.stop()
