"""``GET /metrics`` (Prometheus text format, :mod:`pacs_hub.metrics`) and the middleware
that counts every HTTP request.

A scraper authenticates with ``Authorization: Bearer <PACS_HUB_METRICS_TOKEN>`` (not
audited: it comes every few seconds); without that token, the caller must be a
regional administrator (the policy decides, and audits, as for the admin API).
Requests are counted by route template (``/dicom-web/studies/{study}/series``), never
by path: a path carries UIDs, and any unknown path would be a new series.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs_hub import metrics
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.trust.requests import principal_of
from pacs_hub.trust.users_api import admin_caller

Hub = Annotated[HubState, Depends(hub_state)]
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
"""The exposition format every Prometheus server reads (the hub's names need no other)."""
OTHER_ROUTE = "other"
"""The label of requests no route matched (the viewer's files, unknown paths)."""


class RequestMetrics:
    """ASGI middleware: each HTTP request counted with its route template, method,
    status and duration (to the end of its body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_template(scope)
            metrics.http_request(route, scope["method"], status, time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path with each path parameter's value put back as ``{name}``, when a route
    matched (:data:`OTHER_ROUTE` otherwise: the viewer's files, unknown paths)."""
    if not isinstance(scope.get("route"), Route):
        return OTHER_ROUTE
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    segments = str(scope["path"]).split("/")
    return "/".join(f"{{{names[s]}}}" if s in names else s for s in segments)


async def scraper(request: Request, hub: Hub) -> None:
    """The bearer of PACS_HUB_METRICS_TOKEN, or a regional administrator."""
    token = hub.settings.metrics_token
    given = request.headers.get("authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return
    admin_caller(request, hub, await principal_of(request))


def install(app: FastAPI, hub: HubState, gateways_alive: Callable[[], int] | None) -> None:
    """Count every request, and answer ``GET /metrics``."""
    collector = metrics.HubCollector(hub.settings, hub.database, gateways_alive)
    app.add_middleware(RequestMetrics)

    @app.get("/metrics", tags=["operations"], dependencies=[Depends(scraper)])
    def exposition() -> Response:
        """The hub's metrics, in the Prometheus text format 0.0.4."""
        return Response(metrics.exposition(collector), media_type=TEXT_FORMAT)
