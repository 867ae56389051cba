"""Authentication against real hubs (PACS_HUB_AUTH_REQUIRED=true).

- The embedded issuer: first-start admin password (file 0600), code flow with state,
  nonce and PKCE (httpx, and in Debian's chromium through the login page), the session
  cookie that authenticates OHIF's QIDO requests, ``?token=`` on a viewer URL (never in
  the hub's log), client_credentials for a service account, /api/users for admins only.
- A second OpenID provider, started here on its own port with its own RSA keys,
  publishing discovery and a JWK Set and signing Pro Santé Connect-style tokens: they are
  accepted only by a hub whose PACS_HUB_OIDC_DISCOVERY_URL points at it, and refused
  for acr below eidas1, a wrong audience, an expiry, a tampered signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from playwright.sync_api import Browser, Request, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from pacs_hub.trust.claims import _psc_facts
from pacs_hub.trust.principal import Role
from pacs_hub.trust.tokens import acr_rank
from tests.conftest import DATA, Hub, free_port, start_hub, wait_until
from tests.viewers.test_browser import CHROMIUM, CHROMIUM_ARGS

CT_SERIES = DATA / "volumes" / "ct_philips_ingenuity_head_phantom_axial_5mm"
CT_STUDY_DESCRIPTION = "1A TRAUMA/PLAIN HEAD DM"
FINESS = "750000001"
LOOPBACK_CLIENT = "http://127.0.0.1:9/callback"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def code_flow(base: str, username: str, password: str) -> dict[str, Any]:
    """Sign in through /auth/authorize and exchange the code (a loopback client)."""
    verifier, state, nonce = (secrets.token_urlsafe(40) for _ in range(3))
    params = {
        "response_type": "code",
        "client_id": "test-client",
        "redirect_uri": LOOPBACK_CLIENT,
        "state": state,
        "nonce": nonce,
        "code_challenge": pkce(verifier),
        "code_challenge_method": "S256",
        "scope": "openid",
    }
    form = httpx.get(f"{base}/auth/authorize", params=params)
    assert form.status_code == 200 and "Mot de passe" in form.text and "Password" in form.text
    answer = httpx.post(
        f"{base}/auth/authorize", data={**params, "username": username, "password": password}
    )
    assert answer.status_code == 303, answer.text
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["state"] == [state]
    exchange = {
        "grant_type": "authorization_code",
        "code": query["code"][0],
        "redirect_uri": LOOPBACK_CLIENT,
        "client_id": "test-client",
        "code_verifier": verifier,
    }
    tokens = httpx.post(f"{base}/auth/token", data=exchange)
    assert tokens.status_code == 200, tokens.text
    again = httpx.post(f"{base}/auth/token", data=exchange)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"  # single use
    body: dict[str, Any] = tokens.json()
    keys = jwt.PyJWKClient(f"{base}/auth/jwks")
    id_token = body["id_token"]
    claims = jwt.decode(
        id_token,
        keys.get_signing_key_from_jwt(id_token).key,
        algorithms=["RS256"],
        audience="test-client",
    )
    assert claims["nonce"] == nonce and claims["sub"] == username
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the hub with the embedded issuer --------------------------------------------------


@dataclass
class AuthHub:
    hub: Hub
    admin_password: str
    log: Path


@pytest.fixture(scope="module")
def auth_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthHub]:
    data = tmp_path_factory.mktemp("auth") / "data"
    hub = start_hub(data, PACS_HUB_AUTH_REQUIRED="true", PACS_HUB_LOG_LEVEL="DEBUG")
    try:
        hub.cli("import", str(CT_SERIES))
        password = (data / "initial-admin-password").read_text(encoding="utf-8").strip()
        yield AuthHub(hub, password, data.parent / f"hub-{hub.http_port}.log")
    finally:
        hub.stop()


def test_first_start_admin_password_file_is_private_and_signs_in(auth_hub: AuthHub) -> None:
    path = auth_hub.hub.data_dir / "initial-admin-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = auth_hub.hub.data_dir / "keys" / "issuer.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert auth_hub.admin_password in auth_hub.log.read_text(encoding="utf-8")  # the banner
    tokens = code_flow(auth_hub.hub.url, "admin", auth_hub.admin_password)
    me = httpx.get(f"{auth_hub.hub.url}/auth/userinfo", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200 and me.json()["roles"] == ["regional-admin"]
    out = httpx.get(f"{auth_hub.hub.url}/auth/logout")
    assert out.status_code == 200 and "déconnecté" in out.text
    assert out.headers["set-cookie"].startswith('pacs_hub_session=""; ')
    assert "Max-Age=0" in out.headers["set-cookie"]


def test_api_calls_without_valid_credentials_get_401_problem_json(auth_hub: AuthHub) -> None:
    url = f"{auth_hub.hub.url}/dicom-web/studies"
    none = httpx.get(url)
    assert none.status_code == 401
    assert none.headers["content-type"].startswith("application/problem+json")
    assert none.headers["www-authenticate"].startswith("Bearer")
    garbage = httpx.get(url, headers=bearer("not-a-jwt"))
    assert garbage.status_code == 401 and "well-formed" in garbage.json()["detail"]
    wrong = httpx.post(
        f"{auth_hub.hub.url}/auth/authorize",
        data={
            "response_type": "code",
            "client_id": "c",
            "redirect_uri": LOOPBACK_CLIENT,
            "state": "s",
            "nonce": "n",
            "code_challenge": pkce("v" * 43),
            "code_challenge_method": "S256",
            "username": "admin",
            "password": "not the password",
        },
    )
    assert wrong.status_code == 401 and "incorrect" in wrong.text
    evil = httpx.get(
        f"{auth_hub.hub.url}/auth/authorize",
        params={"client_id": "c", "redirect_uri": "https://evil.example/cb", "state": "s"},
    )
    assert evil.status_code == 400


def test_pkce_verifier_must_match(auth_hub: AuthHub) -> None:
    params = {
        "response_type": "code",
        "client_id": "c",
        "redirect_uri": LOOPBACK_CLIENT,
        "state": "s",
        "nonce": "n",
        "code_challenge": pkce("right-verifier-" + "x" * 40),
        "code_challenge_method": "S256",
    }
    answer = httpx.post(
        f"{auth_hub.hub.url}/auth/authorize",
        data={**params, "username": "admin", "password": auth_hub.admin_password},
    )
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    tokens = httpx.post(
        f"{auth_hub.hub.url}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": LOOPBACK_CLIENT,
            "client_id": "c",
            "code_verifier": "wrong-verifier-" + "x" * 40,
        },
    )
    assert tokens.status_code == 400 and "code_verifier" in tokens.json()["error_description"]


def test_service_account_client_credentials_and_admin_api(auth_hub: AuthHub) -> None:
    base = auth_hub.hub.url
    admin = code_flow(base, "admin", auth_hub.admin_password)["access_token"]
    created = httpx.post(
        f"{base}/api/users",
        headers=bearer(admin),
        json={"username": "router1", "roles": ["service"], "password": "a-long-service-secret"},
    )
    assert created.status_code == 201, created.text
    tokens = httpx.post(
        f"{base}/auth/token",
        data={"grant_type": "client_credentials"},
        auth=("router1", "a-long-service-secret"),
    )
    assert tokens.status_code == 200, tokens.text
    service = tokens.json()["access_token"]
    assert httpx.get(f"{base}/auth/userinfo", headers=bearer(service)).json()["roles"] == [
        "service"
    ]
    denied = httpx.get(f"{base}/api/users", headers=bearer(service))
    assert denied.status_code == 403
    assert httpx.get(f"{base}/api/users").status_code == 401
    listed = httpx.get(f"{base}/api/users", headers=bearer(admin)).json()
    assert {u["username"] for u in listed} == {"admin", "router1"}
    disabled = httpx.patch(
        f"{base}/api/users/router1", headers=bearer(admin), json={"active": False}
    )
    assert disabled.status_code == 200 and disabled.json()["active"] is False
    refused = httpx.get(f"{base}/auth/userinfo", headers=bearer(service))
    assert refused.status_code == 401 and "disabled" in refused.json()["detail"]


# -- Debian's chromium through the login page -----------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run 'make test' (installs Debian's chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@dataclass
class QidoWatch:
    requests: list[Request] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


def _watch_qido(page: Any) -> QidoWatch:
    watch = QidoWatch()

    def on_response(response: Any) -> None:
        if "/dicom-web/studies" in response.url:
            watch.requests.append(response.request)
            watch.statuses.append(response.status)

    page.on("response", on_response)
    return watch


@pytest.mark.browser
def test_login_page_in_chromium_gives_the_viewer_a_session(
    auth_hub: AuthHub, browser: Browser
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        watch = _watch_qido(page)
        page.goto(f"{auth_hub.hub.url}/")
        page.wait_for_url("**/auth/authorize?*")
        assert page.get_by_text("Mot de passe").count() == 1
        page.fill("#username", "admin")
        page.fill("#password", auth_hub.admin_password)
        page.click("#sign-in")
        page.wait_for_url(f"{auth_hub.hub.url}/")
        page.locator("tbody tr", has_text=CT_STUDY_DESCRIPTION).first.wait_for(timeout=60_000)
        cookie = next(c for c in context.cookies() if c["name"] == "pacs_hub_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]
        assert watch.requests and all(s == 200 for s in watch.statuses), watch.statuses
        for request in watch.requests:
            assert "pacs_hub_session=" in (request.header_value("cookie") or "")
        assert "Authorization" not in json.dumps(watch.requests[0].all_headers())
    finally:
        context.close()


@pytest.mark.browser
def test_token_in_viewer_url_opens_a_session_and_is_never_logged(
    auth_hub: AuthHub, browser: Browser
) -> None:
    token = code_flow(auth_hub.hub.url, "admin", auth_hub.admin_password)["access_token"]
    qido = httpx.get(f"{auth_hub.hub.url}/dicom-web/studies", params={"token": token})
    assert qido.status_code == 200 and len(qido.json()) == 1
    bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    refused = httpx.get(f"{auth_hub.hub.url}/dicom-web/studies", params={"token": bad})
    assert refused.status_code == 401
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        watch = _watch_qido(page)
        page.goto(f"{auth_hub.hub.url}/?token={token}")
        page.locator("tbody tr", has_text=CT_STUDY_DESCRIPTION).first.wait_for(timeout=60_000)
        assert "token=" not in page.url
        assert watch.requests and all(s == 200 for s in watch.statuses)
        assert all("token=" not in r.url for r in watch.requests)
    finally:
        context.close()
    log = auth_hub.log.read_text(encoding="utf-8")
    for secret in (token, bad, token.split(".")[2], bad.split(".")[2]):
        assert secret not in log


# -- a second, independent OpenID provider (Pro Santé Connect-style claims) -----------------


@dataclass
class Provider:
    """A tiny OpenID provider: discovery and JWKS over HTTP, tokens signed in the test."""

    port: int
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    current: str = ""

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/esante-wallet"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def rotate(self) -> str:
        self.current = f"key-{len(self.keys) + 1}"
        self.keys[self.current] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.current

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "f:550dc1c8-d97b-4b1e-ac8c-8eb4471cf9dd:899700218896",
            "aud": "pacs-hub",
            "iat": now,
            "exp": now + 600,
            "acr": "eidas1",
            "nonce": "n-1",
            "given_name": "Jean",
            "family_name": "Dupont",
            "SubjectNameID": "810101201234",
            "SubjectRole": ["10^1.2.250.1.213.1.1.5.5"],
            "SubjectRefPro": {
                "codeCivilite": "M",
                "exercices": [
                    {
                        "codeProfession": "10",
                        "codeCategorieProfessionnelle": "C",
                        "activities": [
                            {"numeroFinessSite": FINESS, "raisonSocialeSite": "CH Test"},
                            {"numeroFinessSite": "999999999"},
                        ],
                    }
                ],
            },
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        key = self.keys[self.current]
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.current})


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    found = Provider(free_port())
    found.rotate()

    def discovery(request: StarletteRequest) -> JSONResponse:
        return JSONResponse(
            {
                "issuer": found.issuer,
                "jwks_uri": f"{found.issuer}/protocol/openid-connect/certs",
                "authorization_endpoint": f"{found.issuer}/auth",
                "token_endpoint": f"{found.issuer}/protocol/openid-connect/token",
                "acr_values_supported": ["eidas1", "eidas2", "eidas3"],
            }
        )

    def certs(request: StarletteRequest) -> JSONResponse:
        return JSONResponse(found.jwks())

    app = Starlette(
        routes=[
            Route("/realms/esante-wallet/.well-known/openid-configuration", discovery),
            Route("/realms/esante-wallet/protocol/openid-connect/certs", certs),
        ]
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=found.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="test OpenID provider")
    try:
        yield found
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def psc_hub(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Iterator[Hub]:
    hub = start_hub(
        tmp_path_factory.mktemp("psc") / "data",
        PACS_HUB_AUTH_REQUIRED="true",
        PACS_HUB_OIDC_DISCOVERY_URL=provider.discovery_url,
        PACS_HUB_OIDC_REQUIRED_ACR="eidas1",
        PACS_HUB_OIDC_CLAIMS="prosanteconnect",
    )
    try:
        hub.cli("establishments", "add", FINESS, "CH Test")
        yield hub
    finally:
        hub.stop()


def test_external_token_accepted_with_pro_sante_connect_claims(
    psc_hub: Hub, provider: Provider
) -> None:
    token = provider.token()
    me = httpx.get(f"{psc_hub.url}/auth/userinfo", headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json()["rpps"] == "10101201234" and me.json()["roles"] == ["referring-doctor"]
    assert httpx.get(f"{psc_hub.url}/dicom-web/studies", headers=bearer(token)).status_code == 200
    users = json.loads(psc_hub.cli("users", "list", "--json").stdout)
    mapped = [u for u in users if u["external_subject"].startswith(provider.issuer + "|")]
    assert len(mapped) == 1
    assert mapped[0]["rpps"] == "10101201234"
    again = httpx.get(f"{psc_hub.url}/auth/userinfo", headers=bearer(provider.token(jti="2")))
    assert again.status_code == 200
    users = json.loads(psc_hub.cli("users", "list", "--json").stdout)
    assert len([u for u in users if u["external_subject"]]) == 1  # updated, not duplicated


def test_external_token_refused_by_a_hub_not_configured_for_it(
    auth_hub: AuthHub, provider: Provider
) -> None:
    answer = httpx.get(f"{auth_hub.hub.url}/auth/userinfo", headers=bearer(provider.token()))
    assert answer.status_code == 401 and "not trusted" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"acr": None}, "below the required"),
        ({"acr": "eidas0"}, "below the required"),
        ({"aud": "another-service"}, "audience"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
    ],
    ids=["no-acr", "acr-too-low", "wrong-audience", "expired"],
)
def test_external_token_refused(
    psc_hub: Hub, provider: Provider, overrides: dict[str, Any], reason: str
) -> None:
    answer = httpx.get(
        f"{psc_hub.url}/dicom-web/studies", headers=bearer(provider.token(**overrides))
    )
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert reason in answer.json()["detail"]


def test_tampered_external_token_refused(psc_hub: Hub, provider: Provider) -> None:
    header, payload, signature = provider.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["SubjectNameID"] = "899999999999"
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    answer = httpx.get(f"{psc_hub.url}/auth/userinfo", headers=bearer(forged))
    assert answer.status_code == 401 and "signature" in answer.json()["detail"]


def test_provider_key_rotation_is_followed(psc_hub: Hub, provider: Provider) -> None:
    """A new key is fetched once pyjwt's refresh cooldown (30 s) after the last fetch is over."""
    provider.rotate()
    token = provider.token(jti="rotated")

    def accepted() -> bool:
        answer = httpx.get(f"{psc_hub.url}/auth/userinfo", headers=bearer(token))
        assert answer.status_code in (200, 401), answer.text
        return answer.status_code == 200

    wait_until(accepted, timeout=45, interval=1.0, what="the rotated key to be accepted")


# -- claim mapping and acr ordering, without a hub ---------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(
    ref=JSON | st.fixed_dictionaries({"exercices": st.lists(JSON, max_size=3)}),
    role=JSON,
    name_id=JSON,
)
def test_pro_sante_connect_claims_of_any_shape_never_crash(
    ref: object, role: object, name_id: object
) -> None:
    rpps, roles, codes = _psc_facts(
        {"SubjectRefPro": ref, "SubjectRole": role, "SubjectNameID": name_id}
    )
    assert isinstance(rpps, str) and all(isinstance(c, str) for c in codes)
    assert roles <= {Role.REFERRING_DOCTOR}


def test_pro_sante_connect_claims_mapping() -> None:
    rpps, roles, codes = _psc_facts(
        {
            "SubjectNameID": "810101201234",
            "SubjectRefPro": {
                "exercices": [{"codeProfession": "10", "activities": [{"numeroFinessSite": "1"}]}]
            },
        }
    )
    assert (rpps, roles, codes) == ("10101201234", {Role.REFERRING_DOCTOR}, ["1"])
    assert _psc_facts({"SubjectRole": "40^1.2.250.1.213.1.1.5.5"})[1] == set()  # not a physician


def test_acr_levels_are_ordered() -> None:
    assert acr_rank(None) < acr_rank("eidas1") < acr_rank("eidas2") < acr_rank("EIDAS3")
    assert acr_rank("eidas0") == acr_rank("loa-low") == 0


def test_sign_ins_are_audited_success_and_failure(auth_hub: AuthHub) -> None:
    """User Authentication (110114) entries: who, outcome; a failed name is not kept."""
    import sqlite3

    with pytest.raises(AssertionError):
        code_flow(auth_hub.hub.url, "admin", "not-the-password")
    code_flow(auth_hub.hub.url, "admin", auth_hub.admin_password)
    with sqlite3.connect(auth_hub.hub.data_dir / "index.sqlite3") as db:
        rows = db.execute(
            "SELECT actor_id, outcome FROM audit_events WHERE action = 'login' ORDER BY id"
        ).fetchall()
    assert ("user:?", "failed") in rows
    assert rows[-1] == ("user:admin", "ok")
    verify = auth_hub.hub.cli("audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
