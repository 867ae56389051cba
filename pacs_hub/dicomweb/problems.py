"""HTTP errors as ``application/problem+json`` (RFC 9457), per PS3.18 8.6.

Every DICOMweb route raises :class:`~pacs_hub.errors.HubError` (or
:class:`Problem` for HTTP-only conditions such as 406); the handlers installed by
:func:`install` turn them into a problem document with a precise ``detail``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pacs_hub.errors import HubError

PROBLEM_JSON = "application/problem+json"
LOGGER = logging.getLogger(__name__)


class Problem(Exception):
    """An HTTP failure that is not a DICOM condition (406, 413, 415 on media types...)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def problem_response(status: int, title: str, detail: str, instance: str = "") -> JSONResponse:
    """A problem+json response."""
    LOGGER.info("HTTP %d %s: %s (%s)", status, title, detail, instance)
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def install(app: FastAPI) -> None:
    """Register the handlers that render every error as problem+json."""

    @app.exception_handler(HubError)
    async def hub_error(request: Request, exc: HubError) -> JSONResponse:
        return problem_response(exc.http_status, exc.title, exc.message, request.url.path)

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
            for err in exc.errors()
        )
        return problem_response(400, "Invalid request", details, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), "", request.url.path)


class EncodedSlash:
    """ASGI middleware: 400 for a DICOMweb path whose segment holds an encoded ``/``.

    The router matches the decoded path, so ``/studies/1.2%2F3`` would be split into two
    segments and answered 404 (no such resource) although the request names a UID that
    cannot exist: UIDs hold digits and dots only (PS3.5 9.1), so it is a bad request.
    """

    def __init__(self, app: Any, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            raw = scope.get("raw_path") or b""
            if b"%2f" in raw.lower():
                response = problem_response(
                    400,
                    "Invalid UID",
                    "a path segment holds an encoded '/' (%2F); a UID has digits and dots only"
                    " (PS3.5 9.1)",
                    scope["path"],
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
