"""Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) uses the hub as a remote server.

Orthanc is configured with the hub under ``DicomWeb.Servers``; through Orthanc's REST
API it QIDOs the hub, retrieves a study from the hub with WADO-RS into its own
storage, and STOWs a study of its own to the hub. Everything is checked on both
sides: what Orthanc holds and what the hub's index holds, by SOP Instance UID and
pixel bytes.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import DATA, Hub, start_hub
from tests.peers import OrthancPeer, start_orthanc

pytestmark = pytest.mark.orthanc
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CT = DATA / "volumes/ct_philips_ingenuity_head_phantom_axial_5mm"
MR = DATA / "volumes/mr_ge_mr750_epi_fmri_4d"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, OrthancPeer]]:
    if not PLUGIN.exists():
        raise RuntimeError(f"{PLUGIN} is missing: run 'make test' (installs orthanc-dicomweb)")
    root = tmp_path_factory.mktemp("orthanc-dicomweb")
    hub = start_hub(root / "hub")
    config = {
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {"hub": [f"{hub.url}/dicom-web/"]},
        },
    }
    try:
        orthanc = start_orthanc(root / "orthanc", extra_config=config)
    except BaseException:
        hub.stop()
        raise
    yield hub, orthanc
    orthanc.stop()
    hub.stop()


def hub_uids(hub: Hub) -> set[str]:
    with sqlite3.connect(hub.data_dir / "index.sqlite3") as db:
        return {uid for (uid,) in db.execute("SELECT sop_instance_uid FROM instances")}


def test_orthanc_queries_and_retrieves_a_study_from_the_hub(
    pair: tuple[Hub, OrthancPeer],
) -> None:
    hub, orthanc = pair
    hub.cli("import", str(CT))
    first = pydicom.dcmread(next(CT.iterdir()))
    qido = httpx.post(
        f"{orthanc.url}/dicom-web/servers/hub/qido",
        json={"Uri": "/studies", "Arguments": {"PatientID": first.PatientID}},
        timeout=60,
    )
    assert qido.status_code == 200, qido.text
    studies = qido.json()
    # Orthanc re-renders the answer in its own JSON ("Value" is a string)
    assert [s["0020000D"]["Value"] for s in studies] == [first.StudyInstanceUID]
    retrieve = httpx.post(
        f"{orthanc.url}/dicom-web/servers/hub/retrieve",
        json={"Resources": [{"Study": first.StudyInstanceUID}]},
        timeout=300,
    )
    assert retrieve.status_code == 200, retrieve.text
    found = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": first.StudyInstanceUID}},
    ).json()
    assert len(found) == 28
    originals = {}
    for path in CT.iterdir():
        ds = pydicom.dcmread(path)
        originals[ds.SOPInstanceUID] = ds.PixelData
    for orthanc_id in found:
        data = httpx.get(f"{orthanc.url}/instances/{orthanc_id}/file").content
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PixelData == originals[ds.SOPInstanceUID]


def test_orthanc_stows_a_study_to_the_hub(pair: tuple[Hub, OrthancPeer]) -> None:
    hub, orthanc = pair
    uids = set()
    for path in sorted(MR.iterdir())[:20]:
        answer = httpx.post(f"{orthanc.url}/instances", content=path.read_bytes())
        assert answer.status_code == 200, answer.text
        uids.add(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    study = answer.json()["ParentStudy"]
    stow = httpx.post(
        f"{orthanc.url}/dicom-web/servers/hub/stow", json={"Resources": [study]}, timeout=300
    )
    assert stow.status_code == 200, stow.text
    assert uids <= hub_uids(hub)
    # and the hub answers about them over QIDO as Orthanc sees it
    ds = pydicom.dcmread(next(MR.iterdir()), stop_before_pixels=True)
    qido = httpx.post(
        f"{orthanc.url}/dicom-web/servers/hub/qido",
        json={"Uri": f"/studies/{ds.StudyInstanceUID}/instances"},
        timeout=60,
    )
    assert {i["00080018"]["Value"] for i in qido.json()} == uids
