"""Orthanc (Debian) as a hospital PACS: it sends a study to the hub, then finds and
retrieves it back from the hub with C-FIND and C-MOVE, driven by its REST API."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pacs_hub.dicom.part10 import dataset_offset
from tests.conftest import Hub
from tests.peers import OrthancPeer, start_orthanc

pytestmark = pytest.mark.orthanc
CT = "volumes/ct_philips_ingenuity_head_phantom_axial_5mm"


def dataset_digest(part10: bytes) -> str:
    """SHA-256 of the dataset after the File Meta group (what C-STORE carries)."""
    return hashlib.sha256(part10[dataset_offset(io.BytesIO(part10)) :]).hexdigest()


@pytest.fixture
def orthanc(tmp_path: Path, hub: Hub) -> Iterator[OrthancPeer]:
    peer = start_orthanc(
        tmp_path / "orthanc",
        aet="HOSP_PACS",
        modalities={"hub": [hub.ae_title, "127.0.0.1", hub.dicom_port]},
    )
    hub.cli("nodes", "add", "HOSP_PACS", "127.0.0.1", str(peer.dicom_port))
    yield peer
    peer.stop()


def test_orthanc_sends_then_queries_and_retrieves_back(
    orthanc: OrthancPeer, hub: Hub, shared_data: Path
) -> None:
    files = sorted((shared_data / CT).iterdir())
    originals = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): dataset_digest(
            f.read_bytes()
        )
        for f in files
    }
    api = orthanc.api
    instance_ids = [api.upload_file(str(f))[0] for f in files]
    assert len(set(instance_ids)) == 28
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    patient_id = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientID)
    orthanc_study = api.studies.lookup(study_uid)

    api.modalities.send("hub", orthanc_study)  # Orthanc C-STOREs the study to the hub

    api.studies.delete(orthanc_study)
    assert api.studies.lookup(study_uid) is None
    found = api.modalities.query_studies("hub", {"PatientID": patient_id})
    assert [s.dicom_id for s in found] == [study_uid]
    assert found[0].tags.get("StudyInstanceUID") == study_uid

    api.modalities.move_study(from_modality="hub", dicom_id=study_uid)  # C-MOVE to Orthanc

    retrieved = api.studies.lookup(study_uid)
    assert retrieved is not None
    back = {}
    for orthanc_id in api.studies.get_instances_ids(retrieved):
        data = api.instances.get_file(orthanc_id)
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        back[uid] = dataset_digest(data)
    assert back == originals
