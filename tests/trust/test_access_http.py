"""One access policy on every HTTP path: the matrix path x role x consent state.

One hub with ``PACS_HUB_AUTH_REQUIRED=true``; establishments A, B and C, each with a
registered modality node that sends its studies with dcmtk's storescu; patient P has a
study at A (``PA``) and one at B (``PB``), linked to one regional patient; patient Q has
a study at C (``QC``). Callers: a regional admin, A's establishment admin, a radiologist
of A, a radiologist of C, a referring doctor named in a share of ``PA``, the bearer of a
share link to ``PA``, patient P, and an anonymous caller. P's ``regional-sharing``
consent goes through: none recorded, granted, withdrawn, refused.

The expected set (:data:`EXPECTED`) is derived from the rules of
:mod:`pacs_hub.trust.policy` and written out as a table. For every path, every caller
and every consent state: allowed answers carry the data; a refused one is 401 (no
credentials) or 403 (no right), or an empty, zero-total search, and carries no UID of
the study beyond the request's own path, no patient name or ID, no count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

import tests.conftest as shared
from tests.conftest import Hub, start_hub
from tests.regional.study_factory import make_study, storescu
from tests.trust.test_auth import code_flow

PASSWORD = "access-matrix-password"
DOCTOR_RPPS = "10101010101"
STUDIES = ("PA", "PB", "QC")
NAMES = {"PA": "SECRETP^ALPHA", "PB": "SECRETP^ALPHA", "QC": "HIDDENQ^BRAVO"}
PATIENT_IDS = {"PA": "PAT-P-A", "PB": "PAT-P-B", "QC": "PAT-Q-C"}
SENDERS = {"PA": ("A", "CT_A"), "PB": ("B", "CT_B"), "QC": ("C", "CT_C")}
CONSENTS = ("none", "granted", "withdrawn", "refused")
ROLES = (
    "regional-admin",
    "establishment-admin-A",
    "radiologist-A",
    "radiologist-C",
    "referring-doctor",
    "share-link",
    "patient-P",
    "anonymous",
)

# -- the expected table (rules of pacs_hub/trust/policy.py) ---------------------------------
# regional-admin: everything. Staff of A: their establishment (PA) and, as P's care team,
# P's other studies (PB) unless P objected (withdrawn/refused); Q never (no consent).
# Radiologist of C: C's study (QC); P's only with P's granted regional-sharing consent.
# Referring doctor: the share of PA (purpose named-doctor, its own consent), and P's
# studies while regional-sharing is granted (rule consent). Share link: exactly PA.
# Patient P: their own record (PA, PB). Anonymous: nothing (401).
ALL = {"PA", "PB", "QC"}
P_ALL = {"PA", "PB"}
EXPECTED: dict[str, dict[str, set[str]]] = {
    #                       none           granted          withdrawn     refused
    "regional-admin": dict(zip(CONSENTS, (ALL, ALL, ALL, ALL), strict=True)),
    "establishment-admin-A": dict(zip(CONSENTS, (P_ALL, P_ALL, {"PA"}, {"PA"}), strict=True)),
    "radiologist-A": dict(zip(CONSENTS, (P_ALL, P_ALL, {"PA"}, {"PA"}), strict=True)),
    "radiologist-C": dict(zip(CONSENTS, ({"QC"}, ALL, {"QC"}, {"QC"}), strict=True)),
    "referring-doctor": dict(zip(CONSENTS, ({"PA"}, P_ALL, {"PA"}, {"PA"}), strict=True)),
    "share-link": dict(zip(CONSENTS, ({"PA"},) * 4, strict=True)),
    "patient-P": dict(zip(CONSENTS, (P_ALL,) * 4, strict=True)),
    "anonymous": dict(zip(CONSENTS, (set(),) * 4, strict=True)),
}
STORE_ALLOWED = {"regional-admin", "establishment-admin-A", "radiologist-A", "radiologist-C"}
ADD_TO_PA = {"regional-admin", "establishment-admin-A", "radiologist-A"}
"""May add to P's study at A whatever P's consent (radiologist-C may store, not there)."""
ADMIN_ALLOWED = {"regional-admin"}


@dataclass
class Study:
    uid: str
    series: str
    sops: list[str]
    files: list[Path]


@dataclass
class World:
    hub: Hub
    studies: dict[str, Study]
    tokens: dict[str, str | None]
    regional_p: str
    consent_state: list[str] = field(default_factory=lambda: ["none"])

    def headers(self, role: str) -> dict[str, str]:
        token = self.tokens[role]
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, role: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers(role), **kw.pop("headers", {})}
        return httpx.get(f"{self.hub.url}{path}", headers=headers, timeout=30, **kw)


def _api(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    answer = httpx.request(
        method, f"{base}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code < 300, (path, answer.status_code, answer.text)
    return answer.json() if answer.content else None


def _send(hub: Hub, folder: Path, key: str) -> Study:
    uid, files = make_study(folder / key, patient_id=PATIENT_IDS[key], count=2)
    for path in files:  # a name per patient, to prove it never leaks
        ds = pydicom.dcmread(path)
        ds.PatientName = NAMES[key]
        ds.PatientBirthDate = "19800101" if key != "QC" else "19900202"
        ds.save_as(path, enforce_file_format=True)
    storescu(SENDERS[key][1], hub.ae_title, hub.dicom_port, files)
    first = pydicom.dcmread(files[0])
    sops = [str(pydicom.dcmread(p).SOPInstanceUID) for p in files]
    return Study(uid, str(first.SeriesInstanceUID), sops, files)


def _consent_text(base: str, token: str, purpose: str, doctor: str = "") -> str:
    params = {"purpose": purpose, "doctor_ref": doctor}
    answer = httpx.get(
        f"{base}/api/consents/text", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["sha256"])


def _users(base: str, admin: str, regional_p: str) -> dict[str, str | None]:
    accounts = {
        "regional-admin": {"roles": ["regional-admin"]},
        "establishment-admin-A": {"roles": ["establishment-admin"], "establishments": ["A"]},
        "radiologist-A": {"roles": ["radiologist"], "establishments": ["A"]},
        "radiologist-C": {"roles": ["radiologist"], "establishments": ["C"]},
        "referring-doctor": {"roles": ["referring-doctor"], "rpps": DOCTOR_RPPS},
        "patient-P": {"roles": ["patient"], "regional_id": regional_p},
    }
    tokens: dict[str, str | None] = {"anonymous": None}
    for name, fields in accounts.items():
        _api(base, admin, "POST", "/api/users", {"username": name, "password": PASSWORD, **fields})
        tokens[name] = str(code_flow(base, name, PASSWORD)["access_token"])
    return tokens


def _shares(base: str, tokens: dict[str, str | None], pa: str) -> str:
    """A share of PA with the referring doctor, and one by link; the link's session token."""
    radiologist = str(tokens["radiologist-A"])
    for recipient in (DOCTOR_RPPS, ""):
        sha = _consent_text(base, radiologist, "named-doctor", recipient)
        body = {"studies": [pa], "recipient": recipient, "consent_text_sha256": sha}
        created = _api(base, radiologist, "POST", "/api/shares", body)
    opened = httpx.get(f"{base}{created['link']}", follow_redirects=False)
    assert opened.status_code in (302, 303), opened.text
    return str(opened.cookies["pacs_hub_session"])


def _start_hub(root: Path) -> Hub:
    """A hub with the policy on, given 120 s (not 30) to answer /health: the machine
    running these tests may be loaded."""
    original = shared.wait_until

    def patient_wait(predicate: Any, timeout: float = 30.0, **kw: Any) -> None:
        original(predicate, timeout=max(timeout, 120.0), **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shared, "wait_until", patient_wait)
        return start_hub(root / "data", PACS_HUB_AUTH_REQUIRED="true")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("access-http")
    hub = _start_hub(root)
    try:
        base = hub.url
        password = (hub.data_dir / "initial-admin-password").read_text(encoding="utf-8").strip()
        admin = str(code_flow(base, "admin", password)["access_token"])
        for code in "ABC":
            body = {"code": code, "name": f"Etablissement {code}", "default_issuer": f"ISS-{code}"}
            _api(base, admin, "POST", "/api/establishments", body)
            node = {
                "ae_title": f"CT_{code}",
                "host": "127.0.0.1",
                "port": 104,
                "establishment": code,
            }
            _api(base, admin, "POST", "/api/nodes", {**node, "role": "modality"})
        studies = {key: _send(hub, root, key) for key in STUDIES}
        found = _api(base, admin, "GET", "/api/patients?patient_id=PAT-P-A&issuer=ISS-A")
        regional_p = str(found[0]["regional_id"])
        link = {"patient_id": "PAT-P-B", "issuer_of_patient_id": "ISS-B"}
        _api(base, admin, "POST", f"/api/patients/{regional_p}/link", link)
        tokens = _users(base, admin, regional_p)
        tokens["share-link"] = _shares(base, tokens, studies["PA"].uid)
        yield World(hub, studies, tokens, regional_p)
    finally:
        hub.stop()


@pytest.fixture(scope="module", params=CONSENTS)
def consent(request: pytest.FixtureRequest, world: World) -> str:
    """P's regional-sharing consent, moved forward in the order of CONSENTS."""
    state = str(request.param)
    if state != "none" and world.consent_state[-1] != state:
        token = str(world.tokens["radiologist-A"])
        sha = _consent_text(world.hub.url, token, "regional-sharing")
        body = {"patient": world.regional_p, "purpose": "regional-sharing", "status": state}
        _api(world.hub.url, token, "POST", "/api/consents", {**body, "text_sha256": sha})
        world.consent_state.append(state)
    assert world.consent_state[-1] == state, "consent states run in order"
    return state


# -- what a refusal may not carry ---------------------------------------------------------------


def _secrets(world: World, key: str, path: str, shown: set[str] | None = None) -> list[str]:
    """Strings of study ``key`` a refusal for ``path`` must not contain (its patient's
    name unless a study ``shown`` to the caller has the same patient)."""
    study = world.studies[key]
    uids = [study.uid, study.series, *study.sops]
    found = [u for u in uids if u not in path]
    same_patient = any(NAMES[k] == NAMES[key] for k in shown or set())
    return [*found, PATIENT_IDS[key], *([] if same_patient else [NAMES[key].split("^")[0]])]


def _refused(world: World, role: str, answer: httpx.Response, key: str, path: str) -> None:
    expected = 401 if role == "anonymous" else 403
    assert answer.status_code == expected, (role, path, answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("application/problem+json")
    for secret in _secrets(world, key, path):
        assert secret not in answer.text, (role, path, secret)


def _paths(world: World, key: str) -> dict[str, str]:
    study = world.studies[key]
    instance = f"/dicom-web/studies/{study.uid}/series/{study.series}/instances/{study.sops[0]}"
    return {
        "metadata": f"/dicom-web/studies/{study.uid}/metadata",
        "series-metadata": f"/dicom-web/studies/{study.uid}/series/{study.series}/metadata",
        "wado-study": f"/dicom-web/studies/{study.uid}",
        "wado-instance": instance,
        "frames": f"{instance}/frames/1",
        "rendered": f"{instance}/rendered",
        "thumbnail": f"/dicom-web/studies/{study.uid}/thumbnail",
        "bulkdata": f"{instance}/bulkdata/7FE00010",
    }


ACCEPT = {
    "wado-study": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    "wado-instance": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    "frames": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    "bulkdata": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    "rendered": "image/png",
    "thumbnail": "image/jpeg",
}


# -- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_retrieve_paths(world: World, consent: str, role: str) -> None:
    """WADO-RS, frames, bulk data, rendered, thumbnail and metadata of every study."""
    expected = EXPECTED[role][consent]
    for key in STUDIES:
        for name, path in _paths(world, key).items():
            headers = {"Accept": ACCEPT[name]} if name in ACCEPT else {}
            answer = world.get(role, path, headers=headers)
            if key in expected:
                assert answer.status_code == 200, (role, consent, key, name, answer.text[:300])
                assert answer.content
            else:
                _refused(world, role, answer, key, path)


@pytest.mark.parametrize("role", ROLES)
def test_search_paths(world: World, consent: str, role: str) -> None:
    """QIDO-RS studies, series, instances: only visible studies, totals counting them only."""
    expected = EXPECTED[role][consent]
    uids = {world.studies[k].uid: k for k in STUDIES}
    searches = ("/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances")
    for path in searches:
        answer = world.get(role, path)
        if role == "anonymous":
            _refused(world, role, answer, "PA", path)
            continue
        assert answer.status_code == 200, (role, path, answer.text[:300])
        found = {uids[m["0020000D"]["Value"][0]] for m in answer.json()}
        assert found == expected, (role, consent, path, found)
        per_study = 1 if path.endswith("studies") else 1 if path.endswith("series") else 2
        assert answer.headers["x-total-count"] == str(per_study * len(expected))
        for key in ALL - expected:
            for secret in _secrets(world, key, path, expected):
                assert secret not in answer.text, (role, path, secret)
    for key in STUDIES:
        study = world.studies[key]
        for path in (
            f"/dicom-web/studies/{study.uid}/series",
            f"/dicom-web/studies/{study.uid}/instances",
            f"/dicom-web/studies/{study.uid}/series/{study.series}/instances",
            f"/dicom-web/studies?StudyInstanceUID={study.uid}",
            f"/dicom-web/studies?PatientID={PATIENT_IDS[key]}",
        ):
            answer = world.get(role, path)
            if role == "anonymous":
                _refused(world, role, answer, key, path)
                continue
            assert answer.status_code == 200
            if key in expected:
                assert answer.json() and answer.headers["x-total-count"] != "0"
            else:
                assert answer.json() == [] and answer.headers["x-total-count"] == "0"
                assert "additional results" not in answer.headers.get("warning", "")


@pytest.mark.parametrize("role", ROLES)
def test_dicomweb_client_sees_what_the_policy_allows(world: World, consent: str, role: str) -> None:
    """The same through dicomweb-client, on a requests session carrying the bearer token."""
    session = requests.Session()
    session.headers.update(world.headers(role))
    client = DICOMwebClient(f"{world.hub.url}/dicom-web", session=session)
    expected = EXPECTED[role][consent]
    if role == "anonymous":
        with pytest.raises(requests.HTTPError) as raised:
            client.search_for_studies()
        assert raised.value.response.status_code == 401
        return
    found = {m["0020000D"]["Value"][0] for m in client.search_for_studies()}
    assert found == {world.studies[k].uid for k in expected}
    for key in STUDIES:
        study = world.studies[key]
        if key in expected:
            instance = client.retrieve_instance(study.uid, study.series, study.sops[0])
            assert instance.SOPInstanceUID == study.sops[0]
        else:
            with pytest.raises(requests.HTTPError) as raised:
                client.retrieve_instance(study.uid, study.series, study.sops[0])
            assert raised.value.response.status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_viewer_page(world: World, consent: str, role: str) -> None:
    """A viewer page naming a study: served when allowed, 403 when not, sign-in if anonymous."""
    expected = EXPECTED[role][consent]
    for key in STUDIES:
        path = f"/viewer?StudyInstanceUIDs={world.studies[key].uid}"
        answer = world.get(role, path, follow_redirects=False)
        if role == "anonymous":
            assert answer.status_code == 303 and "/auth/login" in answer.headers["location"]
        elif key in expected:
            assert answer.status_code in (200, 503), (role, key, answer.status_code)
        else:
            assert answer.status_code == 403, (role, consent, key, answer.status_code)
            for secret in _secrets(world, key, path):
                assert secret not in answer.text


# -- paths that do not depend on consent -------------------------------------------------------


def _stored_bytes(world: World, key: str) -> bytes:
    """The Part 10 file the hub stored (WADO-RS ``transfer-syntax=*``: byte for byte)."""
    study = world.studies[key]
    path = f"/dicom-web/studies/{study.uid}/series/{study.series}/instances/{study.sops[0]}"
    answer = world.get("regional-admin", path, headers={"Accept": ACCEPT["wado-instance"]})
    assert answer.status_code == 200
    boundary = answer.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    part = answer.content.split(f"--{boundary}".encode())[1]
    return part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")


@pytest.mark.parametrize("role", ROLES)
def test_stow(world: World, role: str) -> None:
    """STOW-RS: staff who may store get 200 (the stored instance again: a duplicate,
    nothing changes); adding to a study one may not see fails with 0x0124 (409); a
    share link, a patient, a referring doctor get 403; anonymous 401."""
    boundary = "access-matrix-boundary"
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body += _stored_bytes(world, "PA") + f"\r\n--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    headers = {**world.headers(role), "Content-Type": content_type}
    answer = httpx.post(f"{world.hub.url}/dicom-web/studies", content=body, headers=headers)
    if role in ADD_TO_PA:
        assert answer.status_code == 200, (role, answer.text[:300])
        assert world.studies["PA"].sops[0] in answer.text
    elif role in STORE_ALLOWED and world.consent_state[-1] != "granted":
        assert answer.status_code == 409, (role, answer.text[:300])
        failed = answer.json()["00081198"]["Value"][0]
        assert failed["00081197"]["Value"] == [0x0124]
        pa = world.studies["PA"]
        for secret in (pa.sops[1], PATIENT_IDS["PA"], NAMES["PA"]):  # beyond what was sent
            assert secret not in answer.text
    elif role in STORE_ALLOWED:
        assert answer.status_code == 200, (role, answer.text[:300])
    else:
        _refused(world, role, answer, "PA", "/dicom-web/studies")


@pytest.mark.parametrize("role", ROLES)
def test_regional_apis(world: World, role: str) -> None:
    """/api/patients (identity), /api/routing, /api/establishments: regional admins only."""
    for path in (
        "/api/patients?patient_id=PAT-P-A&issuer=ISS-A",
        f"/api/patients/{world.regional_p}",
        "/api/patients/candidates",
        "/api/routing/queue",
        "/api/establishments",
        "/api/nodes",
    ):
        answer = world.get(role, path)
        if role in ADMIN_ALLOWED:
            assert answer.status_code == 200, (role, path, answer.text[:200])
        else:
            _refused(world, role, answer, "PA", path)
            assert "PAT-P-B" not in answer.text


JOB_READERS = {"regional-admin", "establishment-admin-A", "radiologist-A", "radiologist-C"}


@pytest.mark.parametrize("role", ROLES)
def test_retrieve_api(world: World, role: str) -> None:
    """/api/retrieve: a pull of Q's study is decided like a retrieve of it (allowed: it is
    already here and no PACS holds it, 404; refused: 403); jobs are listed to staff."""
    qc = world.studies["QC"]
    headers = world.headers(role)
    answer = httpx.post(
        f"{world.hub.url}/api/retrieve", json={"study": qc.uid}, headers=headers, timeout=60
    )
    if role in {"regional-admin", "radiologist-C"}:
        assert answer.status_code == 404, (role, answer.text[:300])
    else:
        _refused(world, role, answer, "QC", "/api/retrieve")
    jobs = world.get(role, "/api/retrieve")
    if role in JOB_READERS:
        assert jobs.status_code == 200, (role, jobs.text[:300])
    else:
        _refused(world, role, jobs, "QC", "/api/retrieve")


def _audit(world: World, **params: str) -> list[dict[str, Any]]:
    answer = world.get("regional-admin", "/api/audit", params={**params, "limit": "1000"})
    assert answer.status_code == 200, answer.text[:300]
    return list(answer.json()["entries"])


def test_break_glass_needs_a_reason_and_is_flagged(world: World) -> None:
    """X-Access-Purpose: emergency without X-Access-Reason is a 400; with one, a
    break-glass role (radiologist, by default) opens the study, flagged in the trail."""
    study = world.studies["QC"]
    path = f"/dicom-web/studies/{study.uid}/metadata"
    no_reason = world.get("radiologist-A", path, headers={"X-Access-Purpose": "emergency"})
    assert no_reason.status_code == 400 and "X-Access-Reason" in no_reason.text
    bad = world.get("radiologist-A", path, headers={"X-Access-Purpose": "curiosity"})
    assert bad.status_code == 400
    emergency = {"X-Access-Purpose": "emergency", "X-Access-Reason": "polytrauma, unconscious"}
    answer = world.get("radiologist-A", path, headers=emergency)
    assert answer.status_code == 200, answer.text[:300]
    assert study.uid in world.get("radiologist-A", "/dicom-web/studies", headers=emergency).text
    flagged = [
        e
        for e in _audit(world, study=study.uid, user="radiologist-A")
        if e["rule"] == "break-glass"
    ]
    assert flagged and flagged[0]["detail"].get("break_glass") is True
    assert flagged[0]["reason"] == "polytrauma, unconscious"
    patient = world.get("patient-P", path, headers=emergency)  # not a break-glass role
    assert patient.status_code == 403


def test_every_deny_is_audited_frames_once_a_minute(world: World) -> None:
    """A deny is recorded each time; a run of frame requests on one study once a minute."""
    study = world.studies["QC"]
    instance = f"/dicom-web/studies/{study.uid}/series/{study.series}/instances/{study.sops[0]}"
    frames, accept = f"{instance}/frames/1", {"Accept": ACCEPT["frames"]}

    def count(user: str, outcome: str) -> int:
        return len(_audit(world, study=study.uid, user=user, outcome=outcome))

    denied, allowed = count("referring-doctor", "deny"), count("radiologist-C", "allow")
    for _ in range(3):
        assert world.get("referring-doctor", frames, headers=accept).status_code == 403
    for _ in range(5):
        assert world.get("radiologist-C", frames, headers=accept).status_code == 200
    assert count("referring-doctor", "deny") - denied == 3
    assert count("radiologist-C", "allow") - allowed <= 1
    assert world.get("regional-admin", "/api/audit/verify").json()["intact"] is True
