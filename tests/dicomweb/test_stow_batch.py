"""STOW-RS requests of several parts, stored as one batch (dicomweb/stow.py), seen
in-process: an unexpected error on one part fails that part alone (0x0110)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from pacs_hub.config import Settings
from pacs_hub.dicomweb import stow
from tests.conftest import DATA, app_client
from tests.dicomweb.test_stow import multipart

CT = sorted((DATA / "volumes" / "ct_philips_ingenuity_head_phantom_axial_5mm").iterdir())[:3]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(Settings(data_dir=tmp_path, auth_required=False)) as running:
        yield running


def test_an_unexpected_error_on_one_part_fails_that_part_only(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [path.read_bytes() for path in CT]
    broken = pydicom.dcmread(CT[1]).SOPInstanceUID.encode()
    real = stow.parse_instance

    def parse(source: bytes | Path) -> object:
        if isinstance(source, bytes) and broken in source:
            raise RuntimeError("a bug, not a bad instance")
        return real(source)

    monkeypatch.setattr(stow, "parse_instance", parse)
    study = pydicom.dcmread(CT[0]).StudyInstanceUID  # a study in the path: headers parsed
    body, headers = multipart(files)
    answer = client.post(f"/dicom-web/studies/{study}", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    module = answer.json()
    assert [item["00081197"]["Value"] for item in module["00081198"]["Value"]] == [[0x0110]]
    assert len(module["00081199"]["Value"]) == 2
