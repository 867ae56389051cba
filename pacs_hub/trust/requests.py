"""Who is calling over HTTP: the :class:`Principal` of a request.

Credentials are read in this order (the first present is the one checked):

1. ``Authorization: Bearer <jwt>`` (RFC 6750 2.1);
2. the hub's session cookie (set by the login flow or a share link, HttpOnly,
   SameSite=Lax), so the viewer's same-origin DICOMweb requests are authenticated;
3. ``?token=<jwt>`` on GET requests (RFC 6750 2.3), for viewers that cannot set
   headers (OHIF, Stone). The hub never logs query strings.

A request with none is :data:`ANONYMOUS` (the policy then denies when it is
enforced); a credential that does not verify is a :class:`NotAuthenticated` (401) with
the reason. Verified principals are cached for a few seconds per token, so a viewer's
frame requests do not each re-read the index.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import cast

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from pacs_hub.config import Settings
from pacs_hub.storage.database import Database
from pacs_hub.trust.claims import SharePrincipal, principal_from_claims, share_principal
from pacs_hub.trust.grants import PendingGrants
from pacs_hub.trust.issuer import Issuer
from pacs_hub.trust.policy import NotAuthenticated
from pacs_hub.trust.principal import ANONYMOUS, Principal
from pacs_hub.trust.tokens import TokenValidator

SESSION_COOKIE = "pacs_hub_session"
TOKEN_PARAMETER = "token"
CACHE_SECONDS = 15.0
CACHE_SIZE = 4096
_STATE_KEY = "pacs_hub_principal"


@dataclass
class Authenticator:
    """The embedded issuer, the token validator and a short cache of principals."""

    settings: Settings
    database: Database
    issuer: Issuer
    validator: TokenValidator
    share: SharePrincipal = share_principal
    """How a share-link session becomes a principal (the sharing work may replace it)."""
    _cache: OrderedDict[str, tuple[float, Principal]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings, database: Database) -> Authenticator:
        """The authenticator of a hub (its issuer key in ``DATA_DIR/keys``)."""
        issuer = Issuer.open(
            settings.data_dir / "keys",
            f"http://{settings.host}:{settings.http_port}/auth",
            settings.oidc_audience,
            settings.token_lifetime,
            PendingGrants(database),
        )
        return cls(settings, database, issuer, TokenValidator(settings, issuer))

    def principal(self, token: str) -> Principal:
        """The principal of ``token`` (verified; cached a few seconds)."""
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None and hit[0] > now:
                return hit[1]
        validated = self.validator.validate(token)
        with self.database.session() as session:
            principal = principal_from_claims(
                session,
                validated.claims,
                local=validated.local,
                profile=self.settings.oidc_claims,
                share=self.share,
            )
        expires = min(now + CACHE_SECONDS, now + float(validated.claims["exp"]) - time.time())
        with self._lock:
            self._cache[digest] = (expires, principal)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return principal

    def forget(self) -> None:
        """Drop cached principals (after a user is disabled or a share revoked)."""
        with self._lock:
            self._cache.clear()


def set_session_cookie(request: Request, response: Response, token: str, max_age: int) -> None:
    """The hub's session cookie: HttpOnly, SameSite=Lax, Secure when served over https."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def authenticator(request: Request) -> Authenticator | None:
    """The hub's authenticator (None in an app built without the auth routes)."""
    return cast(Authenticator | None, getattr(request.app.state, "auth", None))


def request_token(request: Request) -> str | None:
    """The credential a request presents: bearer header, session cookie, ``?token=``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie
    if request.method in ("GET", "HEAD"):
        token = request.query_params.get(TOKEN_PARAMETER)
        if token:
            return token
    return None


async def principal_of(request: Request) -> Principal:
    """FastAPI dependency: the caller of this request (anonymous when none).

    Raises :class:`~pacs_hub.trust.policy.NotAuthenticated` (401) for a credential
    that does not verify (expired, wrong audience, bad signature, acr too low...).
    """
    cached = request.scope.get(_STATE_KEY)
    if isinstance(cached, Principal):
        return cached
    if isinstance(cached, NotAuthenticated):
        raise cached
    auth = authenticator(request)
    token = request_token(request)
    if auth is None or token is None:
        principal = ANONYMOUS
    else:
        try:
            principal = await run_in_threadpool(auth.principal, token)
        except NotAuthenticated as exc:
            request.scope[_STATE_KEY] = exc
            raise
    request.scope[_STATE_KEY] = principal
    return principal
