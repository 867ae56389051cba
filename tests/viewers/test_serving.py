"""Serving the viewer: SPA fallback, API paths kept out, app-config.js, gzip, cache headers.

A small stand-in for OHIF's build (same file-name shapes) keeps these tests independent
of npm; the browser tests in test_browser.py run the real OHIF.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pacs_hub.config import Settings, bundled_viewer_dir
from pacs_hub.web.viewer import FETCH_SCRIPT, IMMUTABLE, REVALIDATE, viewer_banner
from tests.conftest import app_client

INDEX = "<!doctype html><html><head><script src='/app-config.js'></script></head></html>"
BUNDLE = "app.bundle.0f6159c501addfe9.js"
BUNDLE_JS = "console.log('ohif');\n" * 200


@pytest.fixture
def fake_dist(tmp_path: Path) -> Path:
    """A viewer folder shaped like fetch.sh's output (hashed bundle + .gz, CSS, WASM)."""
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / BUNDLE).write_text(BUNDLE_JS)
    (dist / f"{BUNDLE}.gz").write_bytes(gzip.compress(BUNDLE_JS.encode()))
    (dist / "app.bundle.css").write_text("body{}")
    (dist / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (dist / "assets" / "favicon.ico").write_bytes(b"ico")
    (dist / ".ohif-version").write_text("@ohif/app@3.13.2 pruned gz-1\n")
    return dist


def _client(tmp_path: Path, viewer_dir: Path | None) -> Iterator[TestClient]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    settings = Settings(data_dir=data, viewer_dir=viewer_dir, ae_title="HUB_T", auth_required=False)
    with app_client(settings) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path, fake_dist: Path) -> Iterator[TestClient]:
    yield from _client(tmp_path, fake_dist)


@pytest.fixture
def bare_client(tmp_path: Path) -> Iterator[TestClient]:
    """A hub whose viewer folder is empty (not fetched)."""
    empty = tmp_path / "not-fetched"
    empty.mkdir()
    yield from _client(tmp_path, empty)


def test_study_list_and_client_routes_answer_index_html(client: TestClient) -> None:
    for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/viewer/dicomweb", "/local"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.text == INDEX, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert response.headers["cache-control"] == REVALIDATE, path


def test_api_paths_are_never_shadowed(client: TestClient) -> None:
    health = client.get("/health")
    assert health.headers["content-type"] == "application/json"
    assert "version" in health.json()
    assert client.get("/openapi.json").json()["info"]["title"] == "PACS Hub"
    assert client.post("/dicom-web/no-such-route").status_code == 404
    for path in ("/dicom-web", "/dicom-web/", "/dicom-web/no-such-route", "/health/x"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json", path


def test_missing_asset_is_404_not_index_html(client: TestClient) -> None:
    response = client.get("/app.bundle.ffffffffffffffff.js")
    assert response.status_code == 404
    assert client.get("/assets/nope.png").status_code == 404


def test_path_traversal_stays_inside_the_viewer_folder(client: TestClient) -> None:
    for path in ("/../data/index.sqlite3", "/%2e%2e/data/index.sqlite3", "/assets/../../data"):
        response = client.get(path)
        assert b"SQLite" not in response.content, path


def test_hashed_bundles_are_immutable_and_gzipped(client: TestClient, fake_dist: Path) -> None:
    response = client.get(f"/{BUNDLE}", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["cache-control"] == IMMUTABLE
    assert response.headers["content-type"].startswith("text/javascript")
    assert int(response.headers["content-length"]) == (fake_dist / f"{BUNDLE}.gz").stat().st_size
    assert response.text == BUNDLE_JS  # httpx decoded the gzip body


def test_gzipped_and_identity_answers_revalidate_separately(client: TestClient) -> None:
    etags = set()
    for accept in ("gzip", "identity"):
        first = client.get(f"/{BUNDLE}", headers={"Accept-Encoding": accept})
        etag = first.headers["etag"]
        again = client.get(f"/{BUNDLE}", headers={"Accept-Encoding": accept, "If-None-Match": etag})
        assert again.status_code == 304, accept
        since = {"Accept-Encoding": accept, "If-Modified-Since": first.headers["last-modified"]}
        assert client.get(f"/{BUNDLE}", headers=since).status_code == 304, accept
        etags.add(etag)
    assert len(etags) == 2  # a cache never mixes up the gzip and the identity body


def test_identity_when_gzip_is_not_accepted(client: TestClient) -> None:
    for accept in ("identity", "gzip;q=0", "br"):
        response = client.get(f"/{BUNDLE}", headers={"Accept-Encoding": accept})
        assert "content-encoding" not in response.headers, accept
        assert response.text == BUNDLE_JS, accept


def test_unhashed_files_revalidate_and_etag_gives_304(client: TestClient) -> None:
    css = client.get("/app.bundle.css")
    assert css.headers["cache-control"] == REVALIDATE
    again = client.get("/app.bundle.css", headers={"If-None-Match": css.headers["etag"]})
    assert again.status_code == 304
    wasm = client.get("/0ddf166f7a343eda.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.headers["cache-control"] == IMMUTABLE


def test_app_config_is_generated_same_origin_without_external_urls(client: TestClient) -> None:
    response = client.get("/app-config.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == REVALIDATE
    script = response.text
    assert not re.search(r"https?://", script), "app-config.js must name no external URL"
    assert 'window.location.origin + "/dicom-web"' in script
    assert '"ohif.tours"' in script
    assert "PACS Hub HUB_T" in script


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_app_config_runs_and_points_every_root_at_dicom_web(client: TestClient) -> None:
    script = client.get("/app-config.js").text
    runner = (
        "global.window = {location: {origin: 'http://127.0.0.1:9'}};"
        f"eval({json.dumps(script)});"
        "console.log(typeof window.config.whiteLabeling.createLogoComponentFn);"
        "console.log(JSON.stringify(window.config));"
    )
    out = subprocess.run(["node", "-e", runner], capture_output=True, text=True, check=True)
    logo, _, printed = out.stdout.partition("\n")
    assert logo == "function"  # the header's processing-jobs chip (jobs_badge.js)
    config = json.loads(printed)
    source = config["dataSources"][0]
    assert config["defaultDataSourceName"] == source["sourceName"] == "dicomweb"
    roots = {source["configuration"][k] for k in ("qidoRoot", "wadoRoot", "wadoUriRoot")}
    assert roots == {"http://127.0.0.1:9/dicom-web"}
    assert source["configuration"]["thumbnailRendering"] == "wadors"
    assert source["configuration"]["omitQuotationForMultipartRequest"] is True
    assert config["customizationService"] == [{"ohif.tours": {"$set": []}}]


def test_missing_viewer_says_how_to_fetch_it(bare_client: TestClient) -> None:
    for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3"):
        response = bare_client.get(path)
        assert response.status_code == 503, path
        assert response.headers["content-type"].startswith("text/html")
        assert "fetch.sh" in response.text
    assert bare_client.get("/app.bundle.0f6159c501addfe9.js").status_code == 404
    assert bare_client.get("/dicom-web/no-such-route").status_code == 404
    assert bare_client.get("/health").headers["content-type"] == "application/json"
    assert bare_client.get("/app-config.js").status_code == 200


def test_banner_names_the_viewer_url_or_why_it_is_missing(tmp_path: Path, fake_dist: Path) -> None:
    ready = Settings(data_dir=tmp_path, viewer_dir=fake_dist, http_port=8042)
    assert viewer_banner(ready) == "Viewer (@ohif/app@3.13.2): http://127.0.0.1:8042/"
    missing = Settings(data_dir=tmp_path, viewer_dir=tmp_path / "nowhere")
    assert "Viewer unavailable" in viewer_banner(missing)
    assert "fetch.sh" in viewer_banner(missing)


def test_default_viewer_dir_is_the_fetched_build_when_present() -> None:
    found = bundled_viewer_dir()
    expected = FETCH_SCRIPT.parent / "dist"
    assert found == (expected if expected.is_dir() else None)


def _bin_without_npm(tmp_path: Path) -> str:
    """A PATH holding only what fetch.sh needs before it looks for npm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "cat"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, bin_dir / tool)
    return str(bin_dir)


def test_fetch_script_is_idempotent(tmp_path: Path, fake_dist: Path) -> None:
    env = {"PATH": _bin_without_npm(tmp_path)}
    done = subprocess.run(
        [str(FETCH_SCRIPT), str(fake_dist)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "already in" in done.stdout


def test_fetch_script_without_npm_fails_clearly(tmp_path: Path) -> None:
    env = {"PATH": _bin_without_npm(tmp_path)}
    dest = tmp_path / "dest"
    failed = subprocess.run([str(FETCH_SCRIPT), str(dest)], env=env, capture_output=True, text=True)
    assert failed.returncode == 3
    assert "npm not found" in failed.stderr
    assert not dest.exists()
