"""The access policy on the viewer's pages: a study named in the address is decided first.

OHIF opens a study from ``/viewer?StudyInstanceUIDs=<uid>[,<uid>...]`` (and its other
modes' pages, ``/<mode>?StudyInstanceUIDs=...``). With the policy on, this ASGI
middleware asks the access policy (action view, purpose care: a browser's navigation
sets no header; break-glass goes through DICOMweb's ``X-Access-Purpose``, see
:mod:`pacs_hub.dicomweb.access`) for each named study before
the page is served, audited like a retrieve: a refused study answers a plain 403 page
(a study the hub does not hold: 404) that names nothing of it. A page without
``StudyInstanceUIDs`` is served as before (the study list then shows what the caller's
QIDO-RS searches return). The page holds no data of its own: every image and
attribute still comes through DICOMweb, where each request is decided again.

Callers without credentials are left to the sign-in gate (a redirect to the login
page); with ``PACS_HUB_AUTH_REQUIRED=false`` nothing is checked.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pacs_hub.dicom.header import is_valid_uid
from pacs_hub.dicomweb.state import HubState
from pacs_hub.trust.access import AuditWindow, authorize
from pacs_hub.trust.policy import NotAuthenticated, Policy
from pacs_hub.trust.principal import Action, Kind, Purpose
from pacs_hub.trust.requests import principal_of

PARAMETER = "StudyInstanceUIDs"
SKIPPED = ("/dicom-web", "/api", "/auth", "/share", "/health", "/docs", "/redoc")


def _page(path: str) -> bool:
    if any(path == p or path.startswith(p + "/") for p in SKIPPED):
        return False
    return "." not in path.rsplit("/", 1)[-1]


def _refused(status: int) -> HTMLResponse:
    words = (
        ("Accès refusé", "Access denied")
        if status == 403
        else ("Examen introuvable", "Study not found")
    )
    body = (
        "<!doctype html><html lang='fr'><head><meta charset='utf-8'>"
        f"<title>PACS Hub: {words[1]}</title></head><body><h1>{words[0]}</h1>"
        f"<p>{words[1]}.</p><p><a href='/'>Retour / Back</a></p></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


class ViewerAccess:
    """ASGI middleware: the policy's decision for the studies a viewer page names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.window = AuditWindow()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        page = scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
        if page and _page(str(scope.get("path", ""))):
            status = await self._status(Request(scope, receive))
            if status is not None:
                await _refused(status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _status(self, request: Request) -> int | None:
        """None to serve the page, else 403 or 404."""
        raw = ",".join(request.query_params.getlist(PARAMETER))
        uids = [u.strip() for u in raw.replace("\\", ",").split(",") if u.strip()]
        hub: HubState | None = getattr(request.app.state, "hub", None)
        if not uids or hub is None or not hub.settings.auth_required:
            return None
        try:
            principal = await principal_of(request)
        except NotAuthenticated:
            return None  # the sign-in gate answers
        if principal.kind is Kind.ANONYMOUS:
            return None
        policy = Policy(hub.settings)
        for uid in uids:
            if not is_valid_uid(uid):
                return 404
            decision = await run_in_threadpool(
                authorize,
                hub.database,
                policy,
                principal,
                Action.VIEW,
                Purpose.CARE,
                study_uid=uid,
                detail={"resource": "viewer"},
                window=self.window,
            )
            if not decision.allowed:
                return 404 if decision.rule == "not-found" else 403
        return None
