"""Who is calling over HTTP: the :class:`Principal` of a request.

Placeholder until the authentication work lands: it will read, in order, an
``Authorization: Bearer`` token (embedded issuer or the configured OIDC provider),
the hub's session cookie, a share-link session, and ``?token=`` on viewer URLs
(never logged). With ``PACS_HUB_AUTH_REQUIRED=false`` the policy is off anyway.
"""

from __future__ import annotations

from fastapi import Request

from pacs_hub.trust.principal import ANONYMOUS, Principal


async def principal_of(request: Request) -> Principal:
    """FastAPI dependency: the caller of this request (anonymous when none)."""
    del request
    return ANONYMOUS
