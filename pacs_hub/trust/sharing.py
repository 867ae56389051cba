"""Mounts consent and sharing on the hub's HTTP application (issue 4, Consent, Sharing).

``/api/consents`` (:mod:`~pacs_hub.trust.consent_api`), ``/api/shares`` and the
links ``/share/{token}`` (:mod:`~pacs_hub.trust.shares_api`), the patient's page
``/patient`` (:mod:`~pacs_hub.trust.patient_page`). Share-link sessions become
``Principal(kind=share)`` through :func:`pacs_hub.trust.shares.share_session_principal`,
so that a revoked, expired or no longer consented grant answers 403 (policy rule
``share-scope``), not 401.
"""

from __future__ import annotations

from fastapi import FastAPI

from pacs_hub.trust import consent_api, patient_page, shares, shares_api
from pacs_hub.trust.requests import Authenticator

API_PREFIX = "/api"


def install(app: FastAPI) -> None:
    """Add the routes (before the viewer's catch-all mount) and the share-session hook."""
    auth = getattr(app.state, "auth", None)
    if isinstance(auth, Authenticator):
        auth.share = shares.share_session_principal
    app.include_router(consent_api.router, prefix=API_PREFIX, tags=["consent"])
    app.include_router(shares_api.router, prefix=API_PREFIX, tags=["shares"])
    app.include_router(shares_api.link_router)
    app.include_router(patient_page.router)
