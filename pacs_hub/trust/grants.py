"""Single-use secrets of a sign-in in progress, shared by every HTTP process of the hub.

The embedded issuer's authorization codes (RFC 6749 4.1.2: short-lived, used once)
and the state of a web sign-in (RFC 6749 10.12) are handed out by one request and
taken back by a later one, which the hub's HTTP processes (``PACS_HUB_HTTP_PROCESSES``)
may not serve from the same process. They live in the index (table
``pending_grants``): a random secret of 256 bits goes to the client, only its SHA-256
is stored, and taking it deletes the row, so it works once, in whichever process.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete

from pacs_hub.storage.database import Database
from pacs_hub.trust.models import PendingGrant

CODE = "code"
"""An authorization code of the embedded issuer."""
LOGIN = "login"
"""The ``state`` of a sign-in of the hub's own web pages."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class PendingGrants:
    """Hand out a secret standing for a JSON object, take it back once."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def put(self, kind: str, payload: dict[str, Any], lifetime: float) -> str:
        """A fresh secret (URL-safe) for ``payload``, valid ``lifetime`` seconds.

        Expired rows of any kind are removed on the way (nothing else prunes them).
        """
        secret = secrets.token_urlsafe(32)
        now = _now()
        with self.database.session() as session:
            session.execute(delete(PendingGrant).where(PendingGrant.expires_at < now))
            session.add(
                PendingGrant(
                    secret_hash=_hash(secret),
                    kind=kind,
                    payload=json.dumps(payload, separators=(",", ":")),
                    expires_at=now + timedelta(seconds=lifetime),
                )
            )
        return secret

    def take(self, kind: str, secret: str) -> dict[str, Any] | None:
        """The payload of ``secret`` if it is of ``kind``, unexpired and not yet taken;
        the row is deleted either way once found (a secret works once)."""
        if not secret:
            return None
        with self.database.session() as session:
            row = session.execute(
                delete(PendingGrant)
                .where(PendingGrant.secret_hash == _hash(secret))
                .returning(PendingGrant.kind, PendingGrant.payload, PendingGrant.expires_at)
                .execution_options(synchronize_session=False)
            ).one_or_none()  # whichever process deletes the row has it, the others get None
        if row is None or row.kind != kind or row.expires_at < _now():
            return None
        payload: dict[str, Any] = json.loads(row.payload)
        return payload
