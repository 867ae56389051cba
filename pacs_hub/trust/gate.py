"""The sign-in gate: nothing of the hub's data or pages without a verified caller.

With ``PACS_HUB_AUTH_REQUIRED=true`` (the default), an ASGI middleware in front of
every route:

- API paths (``/dicom-web``, ``/api``) without valid credentials get 401
  ``application/problem+json`` (RFC 9457) with ``WWW-Authenticate: Bearer`` (RFC 6750 3);
- a browser navigating to a page of the viewer (``/``, ``/viewer?...``) is sent to
  ``/auth/login?next=...``;
- a page opened with a valid ``?token=`` gets the session cookie and is reloaded
  without the token, so the address bar, history and the viewer's own requests never
  carry it;
- ``/auth``, ``/health``, the OpenAPI document and the viewer's static files stay open;
  ``/metrics`` checks its scraper's token itself (:mod:`pacs_hub.web.metrics_api`).

What each caller may do is decided later, per request, by the access policy.
"""

from __future__ import annotations

import contextlib
import json
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pacs_hub.trust.policy import NotAuthenticated
from pacs_hub.trust.principal import Kind, Principal
from pacs_hub.trust.requests import (
    SESSION_COOKIE,
    TOKEN_PARAMETER,
    authenticator,
    principal_of,
    set_session_cookie,
)

API_PREFIXES = ("/dicom-web", "/api")
PUBLIC_PREFIXES = ("/auth", "/health", "/docs", "/redoc", "/openapi.json", "/share", "/metrics")
"""Open without a session (``/share``: share links open their own session; ``/metrics``:
its route takes the scraper's token or an administrator's credentials itself)."""


def _page(path: str) -> bool:
    """A navigation to one of the viewer's pages (no file extension in the last segment)."""
    return "." not in path.rsplit("/", 1)[-1]


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _query_without_token(request: Request) -> str:
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAMETER]
    return urlencode(kept)


def _without_token(request: Request) -> str:
    query = _query_without_token(request)
    return request.url.path + (f"?{query}" if query else "")


def unauthenticated(path: str, detail: str) -> Response:
    """401 problem+json for an API call without valid credentials."""
    body = {"type": "about:blank", "title": "Authentication required", "status": 401}
    body["detail"] = detail
    body["instance"] = path
    return Response(
        json.dumps(body),
        status_code=401,
        media_type="application/problem+json",
        headers={"WWW-Authenticate": 'Bearer realm="pacs-hub"'},
    )


class SignInGate:
    """ASGI middleware: 401 for API calls, sign-in redirect for pages (see module doc)."""

    def __init__(self, app: ASGIApp, enforced: bool = True) -> None:
        self.app = app
        self.enforced = enforced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        has_token = TOKEN_PARAMETER in request.query_params  # parsed now, kept on `request`
        if has_token and request.method in ("GET", "HEAD"):
            with contextlib.suppress(NotAuthenticated):  # kept for principal_of to raise
                await principal_of(request)
        if has_token:  # the routes (and anything they log) never see the token
            scope["query_string"] = _query_without_token(request).encode("latin-1")
        path = request.url.path
        api = _under(path, API_PREFIXES)
        if not self.enforced or _under(path, PUBLIC_PREFIXES) or not (api or _page(path)):
            await self.app(scope, receive, send)
            return
        response = await self._check(request, api)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _check(self, request: Request, api: bool) -> Response | None:
        """None to let the request through, else the answer to send instead."""
        detail = (
            "no credentials: send 'Authorization: Bearer <token>' (token from /auth/token)"
            " or sign in at /auth/login"
        )
        principal: Principal | None = None
        try:
            principal = await principal_of(request)
        except NotAuthenticated as exc:
            detail = exc.message
        if principal is not None and principal.kind is not Kind.ANONYMOUS:
            return None if api else await self._adopt_token(request)
        if api:
            return unauthenticated(request.url.path, detail)
        if request.method not in ("GET", "HEAD"):
            return unauthenticated(request.url.path, detail)
        response = RedirectResponse(
            "/auth/login?" + urlencode({"next": _without_token(request)}), status_code=303
        )
        if request.cookies.get(SESSION_COOKIE):
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @staticmethod
    async def _adopt_token(request: Request) -> Response | None:
        """A page opened with ``?token=``: keep it in the session cookie, drop it from the URL."""
        token = request.query_params.get(TOKEN_PARAMETER)
        auth = authenticator(request)
        if not token or auth is None or request.method not in ("GET", "HEAD"):
            return None
        try:  # the cookie may have won over it in principal_of: check this one too
            await run_in_threadpool(auth.principal, token)
        except NotAuthenticated:
            return None
        response = RedirectResponse(_without_token(request), status_code=303)
        set_session_cookie(request, response, token, auth.issuer.lifetime)
        return response
