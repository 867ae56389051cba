"""Validation of bearer tokens: the embedded issuer's, and an external OpenID provider's.

A token is a signed JWT (RFC 7519, JWS RFC 7515) checked with pyjwt: signature
against the issuer's key (the embedded key, or the external provider's JWK Set found
through its discovery document, OpenID Connect Discovery 1.0 section 4, cached and
re-read when an unknown ``kid`` shows up: key rotation), ``iss``, ``aud``
(``PACS_HUB_OIDC_AUDIENCE``), ``exp`` and ``nbf`` (30 s leeway), and for external
tokens ``acr`` at least ``PACS_HUB_OIDC_REQUIRED_ACR`` (eidas1 < eidas2 < eidas3, as
Pro Santé Connect requires). Every failure is a :class:`NotAuthenticated` (401) whose
message says what was wrong; none names the token.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt

from pacs_hub.config import Settings
from pacs_hub.trust.issuer import Issuer
from pacs_hub.trust.policy import NotAuthenticated

LEEWAY = 30
DISCOVERY_TTL = 3600.0
HTTP_TIMEOUT = 5.0
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
ACR_LEVELS = {"eidas1": 1, "eidas2": 2, "eidas3": 3}
"""eIDAS assurance levels (low, substantial, high) as Pro Santé Connect names them."""


@dataclass(frozen=True, slots=True)
class Validated:
    """The verified claims of a token, and whether the embedded issuer signed it."""

    claims: dict[str, Any]
    local: bool


def acr_rank(acr: object) -> int:
    """The eIDAS rank of an ``acr`` value (0 when absent or unknown)."""
    return ACR_LEVELS.get(str(acr).strip().lower(), 0) if acr else 0


def _fetch_json(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        body = json.loads(response.read())
    if not isinstance(body, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return body


class ExternalProvider:
    """An OpenID provider known by its discovery URL: issuer and JWK Set, cached."""

    def __init__(self, discovery_url: str) -> None:
        self.discovery_url = discovery_url
        self._lock = threading.Lock()
        self._issuer = ""
        self._keys: jwt.PyJWKClient | None = None
        self._fetched = 0.0

    def _discover(self) -> tuple[str, jwt.PyJWKClient]:
        with self._lock:
            fresh = time.monotonic() - self._fetched < DISCOVERY_TTL
            if self._keys is not None and fresh:
                return self._issuer, self._keys
            try:
                document = _fetch_json(self.discovery_url)
                issuer, jwks_uri = str(document["issuer"]), str(document["jwks_uri"])
            except (OSError, ValueError, KeyError) as exc:
                raise NotAuthenticated(
                    f"the identity provider's discovery document at {self.discovery_url}"
                    f" could not be read ({type(exc).__name__}): try again later"
                ) from exc
            self._issuer = issuer
            self._keys = jwt.PyJWKClient(jwks_uri, cache_keys=True, lifespan=300, timeout=5)
            self._fetched = time.monotonic()
            return issuer, self._keys

    @property
    def issuer(self) -> str:
        """The provider's ``issuer`` (read from its discovery document)."""
        return self._discover()[0]

    def signing_key(self, token: str) -> Any:
        """The provider's public key for this token's ``kid`` (JWKS re-read on rotation)."""
        _, keys = self._discover()
        try:
            return keys.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as exc:
            raise NotAuthenticated(
                "the identity provider's keys (jwks_uri) could not be read: try again later"
            ) from exc
        except (jwt.PyJWKClientError, jwt.DecodeError) as exc:
            raise NotAuthenticated(
                f"no key of the identity provider matches the token's key id ({exc})"
            ) from exc


class TokenValidator:
    """Checks tokens of the embedded issuer and, when configured, of the external one."""

    def __init__(self, settings: Settings, issuer: Issuer) -> None:
        self.issuer = issuer
        self.audience = settings.oidc_audience
        self.required_acr = settings.oidc_required_acr.strip().lower()
        if self.required_acr and self.required_acr not in ACR_LEVELS:
            raise ValueError(
                f"PACS_HUB_OIDC_REQUIRED_ACR={settings.oidc_required_acr!r}:"
                f" expected one of {', '.join(ACR_LEVELS)}"
            )
        self.external = (
            ExternalProvider(settings.oidc_discovery_url) if settings.oidc_discovery_url else None
        )

    def validate(self, token: str) -> Validated:
        """The verified claims of ``token``; :class:`NotAuthenticated` says why not."""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise NotAuthenticated("the bearer token is not a well-formed JWT") from None
        iss = str(unverified.get("iss", ""))
        if iss == self.issuer.issuer:
            return Validated(self._decode(token, self.issuer.key.public_key(), iss), True)
        if self.external is not None and iss == self.external.issuer:
            claims = self._decode(token, self.external.signing_key(token), iss)
            self._check_acr(claims)
            return Validated(claims, False)
        trusted = [self.issuer.issuer] + ([self.external.issuer] if self.external else [])
        raise NotAuthenticated(
            f"token issuer {iss!r} is not trusted (trusted: {', '.join(trusted)})"
        )

    def _decode(self, token: str, key: Any, iss: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=iss,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("the token has expired: sign in again") from None
        except jwt.ImmatureSignatureError:
            raise NotAuthenticated(
                "the token is not valid yet (nbf or iat in the future)"
            ) from None
        except jwt.InvalidAudienceError:
            raise NotAuthenticated(
                f"the token's audience is not this hub (expected aud {self.audience!r})"
            ) from None
        except jwt.InvalidSignatureError:
            raise NotAuthenticated(
                "the token's signature does not verify against the issuer's key"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise NotAuthenticated(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise NotAuthenticated(f"the token is invalid: {exc}") from None
        return claims

    def _check_acr(self, claims: dict[str, Any]) -> None:
        if not self.required_acr:
            return
        acr = claims.get("acr")
        if acr_rank(acr) < ACR_LEVELS[self.required_acr]:
            raise NotAuthenticated(
                f"the token's authentication level (acr {acr!r}) is below the required"
                f" {self.required_acr!r}"
            )
