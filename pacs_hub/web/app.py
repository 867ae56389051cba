"""The FastAPI application served on the hub's HTTP port."""

from __future__ import annotations

import socket
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from pacs_hub import __version__
from pacs_hub.archive import api as archive_api
from pacs_hub.backup import api as backup_api
from pacs_hub.config import Settings
from pacs_hub.dicomweb import metadata, problems, qido, rendered, stow, wado
from pacs_hub.dicomweb.state import HubState
from pacs_hub.ingest import Ingestor
from pacs_hub.regional import establishments_api, federation_api, identity_api, routing_api
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.trust import audit_api, auth_api, sharing, users_api
from pacs_hub.web import metrics_api
from pacs_hub.web.viewer import mount_viewer
from pacs_hub.web.viewer_access import ViewerAccess
from workers import api as processing_api

DICOMWEB_PREFIX = "/dicom-web"
API_PREFIX = "/api"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def create_app(
    settings: Settings, database: Database, gateways_alive: Callable[[], int] | None = None
) -> FastAPI:
    """Build the HTTP application over an open index."""
    app = FastAPI(title="PACS Hub", version=__version__)
    blobs = BlobStore(settings.data_dir)
    app.state.hub = HubState(
        settings, database, blobs, Ingestor(database, blobs, settings.duplicate_policy, "dicomweb")
    )
    problems.install(app)
    auth_api.install(app, settings, database)  # /auth, app.state.auth, sign-in gate
    sharing.install(app)  # /api/consents, /api/shares, /share/{token}, /patient
    app.add_middleware(ViewerAccess)  # the policy for studies named in a viewer page
    app.add_middleware(problems.EncodedSlash, prefix=DICOMWEB_PREFIX)  # 1.2%2F3: 400, not 404
    metrics_api.install(app, app.state.hub, gateways_alive)  # outermost: counts every request
    app.include_router(users_api.router, prefix=API_PREFIX, tags=["users"])
    app.include_router(audit_api.router, prefix=API_PREFIX, tags=["audit"])
    app.include_router(backup_api.router, prefix=API_PREFIX, tags=["backup"])
    app.include_router(archive_api.router, prefix=API_PREFIX, tags=["archive"])
    app.include_router(archive_api.signing, prefix=API_PREFIX, tags=["archive"])
    app.include_router(processing_api.router, prefix=API_PREFIX, tags=["processing"])
    for module in (qido, metadata, wado, rendered, stow):
        app.include_router(module.router, prefix=DICOMWEB_PREFIX, tags=["dicomweb"])
    for api in (establishments_api, identity_api, federation_api, routing_api):
        app.include_router(api.router, prefix=API_PREFIX, tags=["regional"])

    @app.get("/health", tags=["operations"])
    def health() -> JSONResponse:
        """Liveness and readiness: the index answers and the DICOM gateways run."""
        try:
            with database.reader() as session:
                session.execute(text("SELECT 1"))
            index_ok = True
        except Exception:
            index_ok = False
        alive = gateways_alive() if gateways_alive else 0
        expected = settings.effective_gateway_processes if gateways_alive else 0
        # A gateway counts once it accepts on the port; probing the port would only reach
        # the hub's listening socket (and leave a gateway waiting for a request).
        listening = alive > 0 if gateways_alive else _accepts(settings.host, settings.dicom_port)
        ok = index_ok and alive == expected and listening
        body = {
            "status": "ok" if ok else "degraded",
            "version": __version__,
            "ae_title": settings.ae_title,
            "dicom_port": settings.dicom_port,
            "index": "ok" if index_ok else "unavailable",
            "dicom_listening": listening,
            "gateway_processes": {"alive": alive, "expected": expected},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    mount_viewer(app, settings)  # last: it serves "/" and every unknown path
    return app
