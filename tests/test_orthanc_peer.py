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
from tests.blobs import stored_bytes
from tests.conftest import Hub
from tests.peers import OrthancPeer, start_orthanc

pytestmark = pytest.mark.orthanc
CT = "volumes/ct_philips_ingenuity_head_phantom_axial_5mm"  # 28 slices, one study


def dataset_digest(part10: bytes) -> str:
    """SHA-256 of the dataset after the File Meta group (what C-STORE carries)."""
    return hashlib.sha256(part10[dataset_offset(io.BytesIO(part10)) :]).hexdigest()


def sop_instance_uid(part10: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).SOPInstanceUID)


def hub_datasets(hub: Hub) -> dict[str, str]:
    """SOP Instance UID -> dataset digest of every instance in the hub's index and blobs."""
    return {uid: dataset_digest(data) for uid, data in stored_bytes(hub.data_dir).items()}


@pytest.fixture
def orthanc(tmp_path: Path, hub: Hub) -> Iterator[OrthancPeer]:
    peer = start_orthanc(
        tmp_path / "orthanc",
        aet="HOSP_PACS",
        modalities={"hub": (hub.ae_title, "127.0.0.1", hub.dicom_port)},
    )
    hub.cli("nodes", "add", "HOSP_PACS", "127.0.0.1", str(peer.dicom_port))
    yield peer
    peer.stop()


def test_orthanc_sends_then_queries_and_retrieves_back(
    orthanc: OrthancPeer, hub: Hub, shared_data: Path
) -> None:
    files = sorted((shared_data / CT).iterdir())
    originals = {sop_instance_uid(b): dataset_digest(b) for b in map(Path.read_bytes, files)}
    assert len(originals) == 28
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, patient_id = str(first.StudyInstanceUID), str(first.PatientID)
    api = orthanc.api
    for f in files:
        api.upload_file(str(f))
    orthanc_study = api.studies.lookup(study_uid)
    assert len(api.studies.get_instances_ids(orthanc_study)) == 28

    api.modalities.send("hub", orthanc_study)  # C-STORE, synchronous: raises on failure
    assert hub_datasets(hub) == originals  # indexed and stored byte-identical

    api.studies.delete(orthanc_study)
    assert api.studies.lookup(study_uid) is None
    found = api.modalities.query_studies(
        "hub", {"PatientID": patient_id, "NumberOfStudyRelatedInstances": ""}
    )  # C-FIND, Study level
    assert [s.dicom_id for s in found] == [study_uid]
    assert found[0].tags.get("NumberOfStudyRelatedInstances") == "28"

    api.modalities.move_study(from_modality="hub", dicom_id=study_uid)  # C-MOVE to Orthanc

    retrieved = api.studies.lookup(study_uid)
    assert retrieved is not None
    back = [api.instances.get_file(i) for i in api.studies.get_instances_ids(retrieved)]
    assert len(back) == 28
    assert {sop_instance_uid(b): dataset_digest(b) for b in back} == originals
