"""The embedded OpenID issuer's endpoints under ``/auth``, and the hub's own web sign-in.

- ``GET /auth/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 4.2),
  ``GET /auth/jwks`` (RFC 7517);
- ``GET|POST /auth/authorize``: authorization code flow (RFC 6749 4.1) with ``state``,
  ``nonce`` and PKCE S256 (RFC 7636), required; the login page is in French and English;
- ``POST /auth/token``: ``authorization_code`` (with ``code_verifier``) and
  ``client_credentials`` (a service account: client id = username, secret = password;
  RFC 6749 4.4). No password grant;
- ``GET /auth/login?next=/viewer`` and ``GET /auth/callback``: the hub is its own client
  for its web pages: after the code exchange it sets the session cookie (HttpOnly,
  SameSite=Lax, Secure over https) that authenticates OHIF's same-origin requests;
- ``GET|POST /auth/logout`` clears it; ``GET /auth/userinfo`` (OIDC Core 5.3) says who
  the bearer is.

Authorization codes and pending sign-ins live in the process: one HTTP process per
hub (replicas behind a load balancer need sticky sessions for the sign-in itself).
"""

from __future__ import annotations

import base64
import logging
import secrets
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from pacs_hub.config import Settings
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment
from pacs_hub.trust import auth_pages
from pacs_hub.trust.audit import AuditEntry, record
from pacs_hub.trust.gate import SignInGate
from pacs_hub.trust.grants import LOGIN
from pacs_hub.trust.issuer import ACR_LOCAL, PendingCode, pkce_challenge
from pacs_hub.trust.models import User, UserEstablishment
from pacs_hub.trust.policy import NotAuthenticated
from pacs_hub.trust.principal import Kind, Principal, Role
from pacs_hub.trust.requests import (
    SESSION_COOKIE,
    Authenticator,
    principal_of,
    set_session_cookie,
)
from pacs_hub.trust.users import (
    INITIAL_ADMIN,
    INITIAL_PASSWORD_FILE,
    authenticate,
    ensure_initial_admin,
)

LOGGER = logging.getLogger(__name__)

router = APIRouter()
WEB_CLIENT = "pacs-hub-web"
CALLBACK = "/auth/callback"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
Caller = Annotated[Principal, Depends(principal_of)]


class OAuthError(Exception):
    """An RFC 6749 5.2 error answer of the token endpoint."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def redirect_allowed(request: Request, redirect_uri: str) -> bool:
    """Redirects go back to this hub's own origin or to a loopback client (RFC 8252 7.3)."""
    if redirect_uri.startswith("/") and not redirect_uri.startswith("//"):
        return True
    parts = urlsplit(redirect_uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return parts.netloc == request.url.netloc or (parts.hostname or "") in LOOPBACK


# -- discovery and keys ------------------------------------------------------------------


@router.get("/.well-known/openid-configuration")
def discovery(request: Request) -> dict[str, Any]:
    """OpenID Provider Metadata (OpenID Connect Discovery 1.0 section 3)."""
    base = _base(request)
    return {
        "issuer": _auth(request).issuer.issuer,
        "authorization_endpoint": f"{base}/auth/authorize",
        "token_endpoint": f"{base}/auth/token",
        "userinfo_endpoint": f"{base}/auth/userinfo",
        "jwks_uri": f"{base}/auth/jwks",
        "end_session_endpoint": f"{base}/auth/logout",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_post",
            "client_secret_basic",
        ],
        "scopes_supported": ["openid", "profile", "email"],
        "claims_supported": ["sub", "acr", "nonce", "roles", "establishments", "rpps", "email"],
        "acr_values_supported": [ACR_LOCAL],
    }


@router.get("/jwks")
def jwks(request: Request) -> dict[str, Any]:
    """The issuer's public keys (RFC 7517 5)."""
    return _auth(request).issuer.jwks()


# -- claims of a local user ---------------------------------------------------------------


def user_claims(database: Database, username: str) -> dict[str, Any] | None:
    """The token claims of an active local user (roles, establishment codes, rpps)."""
    with database.reader() as session:
        user = session.scalars(select(User).where(User.username == username)).one_or_none()
        if user is None or not user.active:
            return None
        codes = session.scalars(
            select(Establishment.code)
            .join(UserEstablishment, UserEstablishment.establishment_pk == Establishment.id)
            .where(UserEstablishment.user_pk == user.id)
        ).all()
        claims: dict[str, Any] = {
            "sub": user.username,
            "name": user.display_name,
            "roles": [r for r in user.roles.split(",") if r],
            "establishments": sorted(codes),
            "acr": ACR_LOCAL,
        }
        if user.rpps:
            claims["rpps"] = user.rpps
        if user.email:
            claims["email"] = user.email
        return claims


def share_session_token(auth: Authenticator, grant_pk: int, lifetime: int) -> str:
    """HOOK for the sharing work: a session token for the bearer of share grant ``grant_pk``.

    Put it in the session cookie (:func:`set_session_cookie`); requests carrying it get
    :func:`pacs_hub.trust.claims.share_principal`'s principal.
    """
    return auth.issuer.sign({"sub": f"share-{grant_pk}", "share": grant_pk}, lifetime)


# -- authorization endpoint ----------------------------------------------------------------

AUTHORIZE_PARAMETERS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "scope",
)


def _authorize_problem(request: Request, params: dict[str, str]) -> str | None:
    """Why these authorization parameters cannot be served, or None."""
    missing = [
        p
        for p in ("client_id", "redirect_uri", "state", "nonce", "code_challenge")
        if not params[p]
    ]
    if missing:
        return f"missing parameter(s): {', '.join(missing)}"
    if params["response_type"] != "code":
        return f"response_type {params['response_type']!r}: only 'code' is supported"
    if params["code_challenge_method"] != "S256":
        return "code_challenge_method must be S256 (RFC 7636)"
    if not redirect_allowed(request, params["redirect_uri"]):
        return f"redirect_uri {params['redirect_uri']!r} is not this hub's origin nor loopback"
    return None


@router.get("/authorize", response_class=HTMLResponse)
def authorize_form(request: Request) -> HTMLResponse:
    """The sign-in page of an authorization request (OIDC Core 3.1.2.1)."""
    params = {p: request.query_params.get(p, "") for p in AUTHORIZE_PARAMETERS}
    problem = _authorize_problem(request, params)
    if problem:
        return HTMLResponse(auth_pages.error_page(problem), status_code=400)
    return HTMLResponse(auth_pages.login_page(params))


@router.post("/authorize", response_model=None)
async def authorize_submit(request: Request) -> HTMLResponse | RedirectResponse:
    """Check the credentials; redirect with a code and the state (RFC 6749 4.1.2)."""
    form = await request.form()
    params = {p: str(form.get(p, "")) for p in AUTHORIZE_PARAMETERS}
    problem = _authorize_problem(request, params)
    if problem:
        return HTMLResponse(auth_pages.error_page(problem), status_code=400)
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    auth = _auth(request)
    user = await run_in_threadpool(authenticate, auth.database, username, password)
    await run_in_threadpool(_audit_login, auth.database, username, user is not None, request)
    if user is None:
        page = auth_pages.login_page(
            params,
            username,
            "Identifiant ou mot de passe incorrect / Wrong username or password",
        )
        return HTMLResponse(page, status_code=401)
    code = auth.issuer.new_code(
        PendingCode(
            username=user.username,
            client_id=params["client_id"],
            redirect_uri=params["redirect_uri"],
            code_challenge=params["code_challenge"],
            nonce=params["nonce"],
        )
    )
    query = urlencode({"code": code, "state": params["state"]})
    separator = "&" if "?" in params["redirect_uri"] else "?"
    return RedirectResponse(f"{params['redirect_uri']}{separator}{query}", status_code=303)


# -- token endpoint -----------------------------------------------------------------------


def _tokens(
    auth: Authenticator, claims: dict[str, Any], client_id: str, nonce: str
) -> dict[str, Any]:
    access = auth.issuer.sign({**claims, "azp": client_id, "nonce": nonce} if nonce else claims)
    answer: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": auth.issuer.lifetime,
    }
    if nonce:
        answer["id_token"] = auth.issuer.sign({**claims, "aud": client_id, "nonce": nonce})
    return answer


def exchange_code(
    auth: Authenticator, code: str, client_id: str, redirect_uri: str, verifier: str
) -> dict[str, Any]:
    """The tokens of an authorization code (RFC 6749 4.1.3, RFC 7636 4.6)."""
    pending = auth.issuer.take_code(code)
    if pending is None:
        raise OAuthError("invalid_grant", "unknown, used or expired authorization code")
    if pending.client_id != client_id or pending.redirect_uri != redirect_uri:
        raise OAuthError("invalid_grant", "client_id or redirect_uri differ from the request's")
    if not verifier or pkce_challenge(verifier) != pending.code_challenge:
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    claims = user_claims(auth.database, pending.username)
    if claims is None:
        raise OAuthError("invalid_grant", "the account was disabled")
    return _tokens(auth, claims, client_id, pending.nonce)


def _audit_login(database: Database, username: str, ok: bool, request: Request) -> None:
    """A sign-in attempt in the audit trail (PS3.15 A.5.3.18, User Authentication, EventID 110114).

    The username as typed is kept only on success (a failed one may be a password
    typed in the wrong field); the address is the caller's.
    """
    entry = AuditEntry(
        actor_kind="user",
        actor_id=f"user:{username[:64]}" if ok else "user:?",
        action="login",
        outcome="ok" if ok else "failed",
        purpose="admin",
        detail={"address": request.client.host if request.client else ""},
    )
    try:
        with database.engine.begin() as conn:
            record(conn, entry)
    except Exception:  # the sign-in answer does not depend on the trace store
        LOGGER.exception("could not record a sign-in in the audit trail")


def _client_credentials(auth: Authenticator, client_id: str, secret: str) -> dict[str, Any]:
    user = authenticate(auth.database, client_id, secret)
    if user is None:
        raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
    claims = user_claims(auth.database, user.username)
    if claims is None or Role.SERVICE.value not in claims["roles"]:
        raise OAuthError("unauthorized_client", "client_credentials is for service accounts")
    return _tokens(auth, claims, client_id, "")


def _basic(request: Request) -> tuple[str, str]:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, secret = base64.b64decode(value).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return "", ""
    return user, secret


@router.post("/token")
async def token(
    request: Request,
    grant_type: Annotated[str, Form()] = "",
    code: Annotated[str, Form()] = "",
    redirect_uri: Annotated[str, Form()] = "",
    client_id: Annotated[str, Form()] = "",
    client_secret: Annotated[str, Form()] = "",
    code_verifier: Annotated[str, Form()] = "",
) -> JSONResponse:
    """Token endpoint (RFC 6749 3.2): JSON tokens, or a JSON error (5.2)."""
    auth = _auth(request)
    basic_id, basic_secret = _basic(request)
    client_id, client_secret = client_id or basic_id, client_secret or basic_secret
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    try:
        if grant_type == "authorization_code":
            body = await run_in_threadpool(
                exchange_code, auth, code, client_id, redirect_uri, code_verifier
            )
        elif grant_type == "client_credentials":
            body = await run_in_threadpool(_client_credentials, auth, client_id, client_secret)
        else:
            raise OAuthError(
                "unsupported_grant_type",
                f"grant_type {grant_type!r}: authorization_code or client_credentials expected",
            )
    except OAuthError as exc:
        body = {"error": exc.error, "error_description": exc.description}
        return JSONResponse(body, status_code=exc.status, headers=headers)
    return JSONResponse(body, headers=headers)


@router.get("/userinfo")
def userinfo(caller: Caller) -> dict[str, Any]:
    """Who the bearer is (OIDC Core 5.3), as the hub sees them."""
    if caller.kind is Kind.ANONYMOUS:
        raise NotAuthenticated("no credentials: sign in at /auth/login or send a bearer token")
    return {
        "sub": caller.subject,
        "kind": caller.kind.value,
        "roles": sorted(r.value for r in caller.roles),
        "rpps": caller.rpps,
        "email": caller.email,
    }


# -- the hub's own web sign-in -----------------------------------------------------------


LOGIN_LIFETIME = 900.0
"""Seconds a web sign-in may take between /auth/login and its callback."""


def _safe_next(next_url: str) -> str:
    return next_url if next_url.startswith("/") and not next_url.startswith("//") else "/"


@router.get("/login")
def login(request: Request, next: str = "/") -> RedirectResponse:
    """Start the code flow for the hub's own pages; come back to ``next`` after."""
    verifier = secrets.token_urlsafe(48)
    pending = {"verifier": verifier, "next_url": _safe_next(next)}
    state = _auth(request).issuer.grants.put(LOGIN, pending, LOGIN_LIFETIME)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": WEB_CLIENT,
            "redirect_uri": CALLBACK,
            "scope": "openid",
            "state": state,
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    return RedirectResponse(f"/auth/authorize?{query}", status_code=303)


@router.get(CALLBACK.removeprefix("/auth"), response_model=None)
async def callback(request: Request, code: str = "", state: str = "") -> Response:
    """Exchange the code, set the session cookie, go back to the page asked for."""
    auth = _auth(request)
    pending = await run_in_threadpool(auth.issuer.grants.take, LOGIN, state)
    if pending is None:
        page = auth_pages.error_page("unknown or expired sign-in (state): please sign in again")
        return HTMLResponse(page, status_code=400)
    try:
        tokens = await run_in_threadpool(
            exchange_code, auth, code, WEB_CLIENT, CALLBACK, pending["verifier"]
        )
    except OAuthError as exc:
        return HTMLResponse(auth_pages.error_page(exc.description), status_code=400)
    response = RedirectResponse(pending["next_url"], status_code=303)
    set_session_cookie(request, response, tokens["access_token"], auth.issuer.lifetime)
    return response


@router.api_route("/logout", methods=["GET", "POST"], response_class=HTMLResponse)
def logout(request: Request, post_logout_redirect_uri: str = "") -> Response:
    """End the web session (OIDC RP-Initiated Logout 1.0): the cookie is cleared."""
    response: Response
    if post_logout_redirect_uri and redirect_allowed(request, post_logout_redirect_uri):
        response = RedirectResponse(post_logout_redirect_uri, status_code=303)
    else:
        response = HTMLResponse(auth_pages.signed_out_page())
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


def install(app: FastAPI, settings: Settings, database: Database) -> None:
    """Mount ``/auth``, the authenticator (``app.state.auth``) and the sign-in gate."""
    app.state.auth = Authenticator.open(settings, database)
    app.include_router(router, prefix="/auth", tags=["auth"])
    app.add_middleware(SignInGate, enforced=settings.auth_required)


def sign_in_banner(settings: Settings, database: Database) -> str:
    """The serve banner's sign-in lines; on first start, the initial admin's password."""
    url = f"http://{settings.host}:{settings.http_port}/auth/login"
    password = ensure_initial_admin(database, settings.data_dir)
    if not settings.auth_required:
        url += " (authentication off: PACS_HUB_AUTH_REQUIRED=false)"
    if password is None:
        return f"Sign in: {url}"
    saved = settings.data_dir.resolve() / INITIAL_PASSWORD_FILE
    return (
        f"Sign in: {url} as '{INITIAL_ADMIN}' with password {password}\n"
        f"  (shown once; also in {saved}, mode 0600: change it with"
        f" 'pacs-hub users passwd {INITIAL_ADMIN}')"
    )
