"""The embedded OpenID issuer: one signing key, signed tokens, authorization codes.

For the embedded default nothing else must run: the hub signs its own tokens
(OpenID Connect Core 1.0; JWT, RFC 7519; JWS RS256, RFC 7515/7518) with an RSA key
generated once in ``DATA_DIR/keys/issuer.pem`` (mode 0600) and reused, and publishes
its public half as a JWK Set (RFC 7517). Authorization codes (RFC 6749 4.1) bound to a
PKCE challenge (RFC 7636, S256 only) live a minute and are single use; they are kept
in the index (:mod:`pacs_hub.trust.grants`), so any HTTP process can take a code
another one handed out.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pacs_hub.trust.grants import CODE, PendingGrants

KEY_FILE = "issuer.pem"
ALGORITHM = "RS256"
CODE_LIFETIME = 60.0
ACR_LOCAL = "eidas1"
"""Assurance level of a local password login (substantial levels need PSC or 2FA)."""


def load_or_create_key(keys_dir: Path) -> rsa.RSAPrivateKey:
    """The issuer's RSA key from ``keys_dir/issuer.pem``, generated (0600) the first time."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = keys_dir / KEY_FILE
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = keys_dir / f".{KEY_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # first writer wins when several processes start at once
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} holds no RSA private key")
    return loaded


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def pkce_challenge(verifier: str) -> str:
    """S256 code challenge of a PKCE verifier (RFC 7636 4.2)."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class PendingCode:
    """What an authorization code stands for until it is exchanged."""

    username: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str


@dataclass
class Issuer:
    """Signs the hub's tokens and hands out and takes back its authorization codes."""

    issuer: str
    """The ``iss`` of every token: the hub's public URL followed by ``/auth``."""
    audience: str
    lifetime: int
    key: rsa.RSAPrivateKey
    grants: PendingGrants
    """Where pending authorization codes are kept (the index)."""

    @classmethod
    def open(
        cls, keys_dir: Path, issuer: str, audience: str, lifetime: int, grants: PendingGrants
    ) -> Issuer:
        """The issuer with the key of ``keys_dir`` (created on first use)."""
        return cls(issuer, audience, lifetime, load_or_create_key(keys_dir), grants)

    @property
    def kid(self) -> str:
        """Key id: RFC 7638 thumbprint of the public key."""
        numbers = self.key.public_key().public_numbers()
        canonical = f'{{"e":"{_uint(numbers.e)}","kty":"RSA","n":"{_uint(numbers.n)}"}}'
        return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 5)."""
        numbers = self.key.public_key().public_numbers()
        jwk = {
            "kty": "RSA",
            "use": "sig",
            "alg": ALGORITHM,
            "kid": self.kid,
            "n": _uint(numbers.n),
            "e": _uint(numbers.e),
        }
        return {"keys": [jwk]}

    def sign(self, claims: dict[str, Any], lifetime: int | None = None) -> str:
        """A JWT over ``claims`` plus iss, aud, iat, nbf, exp and a random jti."""
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + (lifetime or self.lifetime),
            "jti": secrets.token_urlsafe(16),
            **claims,
        }
        return jwt.encode(body, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def new_code(self, pending: PendingCode) -> str:
        """A fresh single-use authorization code (256 random bits), valid
        :data:`CODE_LIFETIME` seconds."""
        return self.grants.put(CODE, asdict(pending), CODE_LIFETIME)

    def take_code(self, code: str) -> PendingCode | None:
        """The pending login of ``code``, removed (a code is used once), or None."""
        payload = self.grants.take(CODE, code)
        return None if payload is None else PendingCode(**payload)
