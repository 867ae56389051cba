"""schemathesis against the hub's OpenAPI document with the access policy on.

Every operation of ``/openapi.json`` (DICOMweb, the regional and trust APIs, ``/auth``)
is called with inputs schemathesis generates (a few per operation: a bounded run):

* without credentials: no operation answers 500; every ``/api`` and ``/dicom-web`` one
  answers 401 (the sign-in gate), and no answer carries the seeded study's data;
* as an out-of-scope caller (a radiologist of an establishment with no study, and the
  patient of no study): no 500, and no answer carries the seeded study's UIDs, its
  patient's name or Patient ID.

A study of establishment A is seeded first; generated path parameters name it only by
chance, so the named paths are the matrix of :mod:`tests.trust.test_access_http`; here
the point is every operation, with inputs nobody wrote by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import Hub
from tests.regional.study_factory import make_study, storescu
from tests.trust.test_access_http import _api, _start_hub
from tests.trust.test_auth import code_flow

PASSWORD = "openapi-matrix-password"
SECRET_NAME = "OPENAPISECRET^PATIENT"
SECRET_ID = "PAT-OPENAPI-1"
EXAMPLES = 3
BUDGET = 90.0
"""Seconds for the whole run: a bounded fuzz, not an exhaustive one."""
OPEN = ("/auth", "/health", "/share", "/openapi.json", "/docs", "/redoc", "/app-config.js")


@dataclass
class Seeded:
    hub: Hub
    study_uid: str
    series_uid: str
    sop_uid: str
    tokens: dict[str, str]

    @property
    def uids(self) -> dict[str, str]:
        """Path parameters of the DICOMweb routes, naming the seeded instance."""
        return {"study": self.study_uid, "series": self.series_uid, "sop": self.sop_uid}

    @property
    def secrets(self) -> tuple[str, ...]:
        return (*self.uids.values(), SECRET_ID, SECRET_NAME.split("^")[0])


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    root = tmp_path_factory.mktemp("access-openapi")
    hub = _start_hub(root)
    try:
        base = hub.url
        password = (hub.data_dir / "initial-admin-password").read_text(encoding="utf-8").strip()
        admin = str(code_flow(base, "admin", password)["access_token"])
        for code in ("A", "D"):
            _api(base, admin, "POST", "/api/establishments", {"code": code, "name": code})
        node = {"ae_title": "CT_A", "host": "127.0.0.1", "port": 104, "establishment": "A"}
        _api(base, admin, "POST", "/api/nodes", {**node, "role": "modality"})
        study_uid, files = make_study(root / "study", patient_id=SECRET_ID, count=1)
        ds = pydicom.dcmread(files[0])
        ds.PatientName = SECRET_NAME
        ds.save_as(files[0], enforce_file_format=True)
        storescu("CT_A", hub.ae_title, hub.dicom_port, files)
        users = {
            "outsider": {"roles": ["radiologist"], "establishments": ["D"]},
            "stranger": {"roles": ["referring-doctor"], "rpps": "99999999999"},
        }
        tokens = {}
        for name, fields in users.items():
            body = {"username": name, "password": PASSWORD, **fields}
            _api(base, admin, "POST", "/api/users", body)
            tokens[name] = str(code_flow(base, name, PASSWORD)["access_token"])
        yield Seeded(hub, study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), tokens)
    finally:
        hub.stop()


def _open(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPEN)


def _check(case: Any, seeded: Seeded) -> None:
    """One generated request, sent anonymously and as each out-of-scope caller."""
    base = seeded.hub.url
    where = f"{case.method} {case.formatted_path}"
    anonymous = case.call(base_url=base, timeout=30)
    assert anonymous.status_code != 500, (where, anonymous.content[:300])
    leaked = [s for s in seeded.secrets if s not in case.formatted_path]
    assert not any(s in anonymous.content.decode("utf-8", "replace") for s in leaked), where
    if not _open(case.path):
        assert anonymous.status_code == 401, (where, anonymous.status_code)
    for name, token in seeded.tokens.items():
        answer = case.call(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code != 500, (name, where, answer.content[:300])
        text = answer.content.decode("utf-8", "replace")
        for secret in seeded.secrets:  # a UID the request named may be echoed, no other
            assert secret in case.formatted_path or secret not in text, (name, where, secret)


def test_no_data_for_unauthenticated_or_out_of_scope_callers(seeded: Seeded) -> None:
    """Every operation, a few generated inputs each (``EXAMPLES``), within ``BUDGET`` s."""
    schema = schemathesis.openapi.from_url(f"{seeded.hub.url}/openapi.json")
    started, failures, tried = time.monotonic(), [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if time.monotonic() - started > BUDGET:
            break

        named = {k: v for k, v in seeded.uids.items() if "{" + k + "}" in operation.path}
        strategies = [operation.as_strategy()]
        if named:  # the seeded study's own UIDs in the path, so refusals are put to the test
            strategies.append(operation.as_strategy(path_parameters=named))
        for strategy in strategies:

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def run(case: Any) -> None:
                _check(case, seeded)

            try:
                run()
            except AssertionError as exc:
                failures.append(f"{operation.label}: {exc}"[:600])
        tried += 1
    assert tried >= 60, f"only {tried} operations tried within {BUDGET}s"
    assert not failures, "\n".join(failures)


def test_the_schema_is_served_and_names_the_dicomweb_paths(seeded: Seeded) -> None:
    document = httpx.get(f"{seeded.hub.url}/openapi.json").json()
    assert "/dicom-web/studies" in document["paths"]
    assert "/api/patients" in document["paths"]
