"""QIDO-RS (PS3.18 10.6) and WADO-RS metadata (10.4.1.1.2) against a real hub.

dicomweb-client (not written here) drives every search resource; httpx checks the
exact headers, paging and the problem+json answers to bad requests.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.conftest import DATA, Hub, start_hub

CT = DATA / "volumes/ct_philips_ingenuity_head_phantom_axial_5mm"
FRENCH = DATA / "charsets/clunie/chrFren.dcm"  # "Buc^Jérôme" in ISO_IR 100
GERMAN = DATA / "charsets/clunie/chrGerm.dcm"
DICOM_JSON = "application/dicom+json"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(tmp_path_factory.mktemp("qido") / "data")
    running.cli("import", str(CT), str(DATA / "charsets"), str(DATA / "modalities"), check=False)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(hub: Hub) -> DICOMwebClient:
    return DICOMwebClient(f"{hub.url}/dicom-web")


@pytest.fixture(scope="module")
def ct() -> pydicom.Dataset:
    return pydicom.dcmread(next(CT.iterdir()), stop_before_pixels=True)


def value(item: dict, tag: str) -> object:  # type: ignore[type-arg]
    return item[tag]["Value"][0] if "Value" in item.get(tag, {}) else None


def index_count(hub: Hub, sql: str) -> int:
    with sqlite3.connect(hub.data_dir / "index.sqlite3") as db:
        return int(db.execute(sql).fetchone()[0])


def test_every_search_resource(client: DICOMwebClient, hub: Hub, ct: pydicom.Dataset) -> None:
    studies = client.search_for_studies()
    assert len(studies) == index_count(hub, "SELECT count(*) FROM studies")
    found = client.search_for_studies(search_filters={"PatientID": ct.PatientID})
    assert [value(s, "0020000D") for s in found] == [ct.StudyInstanceUID]
    study = found[0]
    assert value(study, "00201208") == 28  # NumberOfStudyRelatedInstances
    assert study["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert value(study, "00081190").endswith(f"/dicom-web/studies/{ct.StudyInstanceUID}")
    series = client.search_for_series(study_instance_uid=ct.StudyInstanceUID)
    assert [value(s, "0020000E") for s in series] == [ct.SeriesInstanceUID]
    assert value(series[0], "00201209") == 28
    all_series = client.search_for_series(search_filters={"Modality": "CT"})
    assert ct.SeriesInstanceUID in [value(s, "0020000E") for s in all_series]
    assert all("0020000D" in s and "00100020" in s for s in all_series)  # study keys too
    in_series = client.search_for_instances(
        study_instance_uid=ct.StudyInstanceUID, series_instance_uid=ct.SeriesInstanceUID
    )
    assert len(in_series) == 28
    assert {value(i, "00080016") for i in in_series} == {ct.SOPClassUID}
    in_study = client.search_for_instances(study_instance_uid=ct.StudyInstanceUID)
    assert {value(i, "00080018") for i in in_study} == {value(i, "00080018") for i in in_series}
    anywhere = client.search_for_instances(search_filters={"SOPInstanceUID": ct.SOPInstanceUID})
    assert [value(i, "0020000E") for i in anywhere] == [ct.SeriesInstanceUID]
    assert value(anywhere[0], "00280010") == ct.Rows


def test_includefield_by_tag_keyword_and_all(client: DICOMwebClient, ct: pydicom.Dataset) -> None:
    filters = {"StudyInstanceUID": ct.StudyInstanceUID}
    by_tag = client.search_for_studies(search_filters=filters, fields=["00081030"])
    assert value(by_tag[0], "00081030") == ct.StudyDescription
    by_keyword = client.search_for_series(
        search_filters=filters, fields=["SeriesDescription", "StationName"]
    )
    assert value(by_keyword[0], "0008103E") == ct.SeriesDescription
    # Not in the index: read from the stored metadata of the series' first instance.
    extra = client.search_for_series(search_filters=filters, fields=["Manufacturer"])
    assert value(extra[0], "00080070") == ct.Manufacturer
    everything = client.search_for_studies(search_filters=filters, fields=["all"])
    assert "00100040" in everything[0] and "00200010" in everything[0]


def test_specific_character_set_and_fuzzy_names(client: DICOMwebClient) -> None:
    french = pydicom.dcmread(FRENCH, stop_before_pixels=True)
    assert french.SpecificCharacterSet == "ISO_IR 100"
    exact = client.search_for_studies(search_filters={"PatientName": "Buc^Jérôme"})
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in exact] == ["Buc^Jérôme"]
    assert exact[0]["00080005"]["Value"] == ["ISO_IR 192"]
    assert client.search_for_studies(search_filters={"PatientName": "jerome"}) == []
    fuzzy = client.search_for_studies(search_filters={"PatientName": "jerome"}, fuzzymatching=True)
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in fuzzy] == ["Buc^Jérôme"]
    german = client.search_for_studies(search_filters={"PatientName": "rudi*"}, fuzzymatching=True)
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in german] == ["Äneas^Rüdiger"]


def test_paging_with_total_count(hub: Hub) -> None:
    url = f"{hub.url}/dicom-web/instances"
    total = index_count(hub, "SELECT count(*) FROM instances")
    seen: list[str] = []
    offset = 0
    while True:
        answer = httpx.get(url, params={"limit": "10", "offset": str(offset)})
        assert answer.status_code == 200
        assert answer.headers["content-type"] == DICOM_JSON
        assert int(answer.headers["x-total-count"]) == total
        page = answer.json()
        seen += [value(i, "00080018") for i in page]  # type: ignore[misc]
        more = offset + len(page) < total
        assert ("additional results" in answer.headers.get("warning", "")) is more
        if not more:
            break
        offset += 10
    assert len(seen) == len(set(seen)) == total
    empty = httpx.get(url, params={"SOPInstanceUID": "1.2.3.4"})
    assert empty.status_code == 200 and empty.json() == []


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"StudyDate": "2020-01-01"}, "StudyDate"),
        ({"NoSuchKeyword": "x"}, "NoSuchKeyword"),
        ({"limit": "100000000000"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"offset": "x"}, "offset"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
        ({"Limit": "5"}, "lower case"),
    ],
)
def test_bad_parameters_are_400_problem_json(hub: Hub, params: dict[str, str], detail: str) -> None:
    answer = httpx.get(f"{hub.url}/dicom-web/studies", params=params)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert detail in answer.json()["detail"]


def test_bad_path_uid_and_accept(hub: Hub) -> None:
    for path in (
        "/studies/1.2.x/series",
        "/studies/..%2F..%2Fetc/series",
        "/studies/1..2/instances",
    ):
        answer = httpx.get(f"{hub.url}/dicom-web{path}")
        assert answer.status_code == 400, path
        assert answer.headers["content-type"] == "application/problem+json", path
    answer = httpx.get(f"{hub.url}/dicom-web/studies", headers={"Accept": "application/xml"})
    assert answer.status_code == 406
    assert answer.headers["content-type"] == "application/problem+json"


def test_sequence_matching_is_ignored_with_a_warning(hub: Hub) -> None:
    answer = httpx.get(
        f"{hub.url}/dicom-web/studies", params={"00081032.00080100": "X", "limit": "1"}
    )
    assert answer.status_code == 200
    assert "00081032.00080100" in answer.headers["warning"]


def test_series_metadata_is_dicom_json_without_pixel_data(
    client: DICOMwebClient, ct: pydicom.Dataset
) -> None:
    metadata = client.retrieve_series_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert len(metadata) == 28
    by_uid = {value(m, "00080018"): m for m in metadata}
    for path in CT.iterdir():
        original = pydicom.dcmread(path)
        item = by_uid[original.SOPInstanceUID]
        pixel = item["7FE00010"]
        assert set(pixel) == {"vr", "BulkDataURI"}
        assert pixel["BulkDataURI"].endswith(
            f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
            f"/instances/{original.SOPInstanceUID}/bulkdata/7FE00010"
        )
        expected = original.to_json_dict(bulk_data_threshold=1 << 30)
        expected.pop("7FE00010")
        item.pop("7FE00010")
        assert item == {k: v for k, v in expected.items() if not k.endswith("0000")}
        break
    geometry = [value(m, "00200032") for m in metadata]
    assert all(g is not None for g in geometry)  # ImagePositionPatient for MPR


def test_study_and_instance_metadata(hub: Hub, ct: pydicom.Dataset) -> None:
    base = f"{hub.url}/dicom-web/studies/{ct.StudyInstanceUID}"
    study = httpx.get(f"{base}/metadata")
    assert study.status_code == 200 and study.headers["content-type"] == DICOM_JSON
    assert len(study.json()) == 28
    one = httpx.get(f"{base}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}/metadata")
    assert [value(m, "00080018") for m in one.json()] == [ct.SOPInstanceUID]
    missing = httpx.get(f"{hub.url}/dicom-web/studies/1.2.3.4/metadata")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_metadata_of_an_instance_indexed_before_metadata_was_stored(
    hub: Hub, ct: pydicom.Dataset
) -> None:
    """Rows of an index migrated from revision 0001 have no metadata: made from the blob."""
    with sqlite3.connect(hub.data_dir / "index.sqlite3") as db:
        db.execute(
            "UPDATE instances SET metadata_json = NULL WHERE sop_instance_uid = ?",
            (ct.SOPInstanceUID,),
        )
    url = (
        f"{hub.url}/dicom-web/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
        f"/instances/{ct.SOPInstanceUID}/metadata"
    )
    first = httpx.get(url).json()
    assert value(first[0], "00080018") == ct.SOPInstanceUID
    assert "BulkDataURI" in first[0]["7FE00010"]
    with sqlite3.connect(hub.data_dir / "index.sqlite3") as db:
        cached = db.execute(
            "SELECT metadata_json IS NOT NULL FROM instances WHERE sop_instance_uid = ?",
            (ct.SOPInstanceUID,),
        ).fetchone()[0]
    assert cached == 1
    assert httpx.get(url).json() == first
    assert json.dumps(first)


def test_nested_pixel_data_becomes_bulk_data(client: DICOMwebClient, hub: Hub) -> None:
    path = DATA / "modalities/pt_acrin_flt_breast.dcm"  # has an Icon Image Sequence
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    metadata = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    icon = metadata["00880200"]["Value"][0]["7FE00010"]
    assert icon["BulkDataURI"].endswith(
        f"/instances/{ds.SOPInstanceUID}/bulkdata/00880200/0/7FE00010"
    )
    assert Path(path).exists()
