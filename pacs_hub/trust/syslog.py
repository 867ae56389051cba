"""Shipping the audit trail to an audit repository: syslog over TLS (IHE ATNA ITI-20).

Each entry becomes its DICOM audit messages (:mod:`pacs_hub.trust.atna`), each sent
as one RFC 5424 message::

    <85>1 2026-11-29T15:00:00.123Z hub.example pacs-hub 4242 110103
        [meta sequenceId="57"] BOM<?xml ...?><AuditMessage>...</AuditMessage>

(one line on the wire).

PRI 85 = facility 10 (security/authorization, RFC 5424 6.2.1) x 8 + severity 5
(notice); 84 (warning) for a denied or failed event. APP-NAME ``pacs-hub``, MSGID the
event's EventID code (``110103``), and the registered SD-ID ``meta`` with
``sequenceId`` = the audit entry's id (RFC 5424 7.3.1), so the repository can tell
a resent message from a new one. Messages are framed by octet counting (RFC 5425
4.3: ``MSG-LEN SP SYSLOG-MSG``) on a TLS 1.2+ connection to
``settings.audit_syslog_url`` (``tls://host:port``), the server checked against
``settings.audit_syslog_ca`` (or the system's CAs) and its name.

Delivery is at least once. Entry ids become visible in increasing order (writers
serialise on the locked ``audit_head`` row until they commit), so "every entry
above the last id shipped" never skips one. The id of the last entry shipped is kept in
``<data dir>/audit-syslog.cursor`` (written to a temporary file, fsynced, then
renamed). Syslog has no acknowledgement, so a batch counts as delivered only when
the repository, after our TLS close_notify, closes its side of the connection
(it has then read every byte before it); a batch that fails anywhere (repository
down, reset, timeout) is sent again whole at the next turn. A repository may thus
see an entry twice, never miss one; ``sequenceId`` with MSGID identifies repeats.
Retention never prunes an entry not yet shipped (see :mod:`pacs_hub.trust.audit_tasks`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pacs_hub.config import Settings
from pacs_hub.storage.database import Database
from pacs_hub.trust.atna import AuditSource, Message, messages
from pacs_hub.trust.audit_query import AuditFilter, AuditRecord, iter_entries

LOGGER = logging.getLogger(__name__)
APP_NAME = "pacs-hub"
FACILITY = 10  # security/authorization messages (RFC 5424 Table 1)
NOTICE, WARNING = 5, 4
CURSOR_FILE = "audit-syslog.cursor"
BATCH = 200
TIMEOUT = 10.0
BOM = b"\xef\xbb\xbf"


class SyslogUrlError(ValueError):
    """``audit_syslog_url`` is not ``tls://host:port``."""


@dataclass(frozen=True, slots=True)
class Repository:
    """Where audit messages go: a TLS syslog receiver (RFC 5425)."""

    host: str
    port: int
    ca_file: str = ""

    @classmethod
    def of(cls, settings: Settings) -> Repository | None:
        """The configured repository, or None when shipping is off."""
        if not settings.audit_syslog_url:
            return None
        url = urlsplit(settings.audit_syslog_url)
        if url.scheme != "tls" or not url.hostname or not url.port:
            raise SyslogUrlError(
                f"audit_syslog_url must be tls://host:port, found {settings.audit_syslog_url!r}"
            )
        return cls(url.hostname, url.port, settings.audit_syslog_ca)

    def context(self) -> ssl.SSLContext:
        """Client TLS context: TLS 1.2 or later, server certificate and name checked."""
        context = ssl.create_default_context(cafile=self.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def syslog_message(message: Message, rec: AuditRecord, hostname: str, procid: str) -> bytes:
    """One RFC 5424 SYSLOG-MSG carrying ``message`` (MSG is UTF-8 with its BOM)."""
    severity = NOTICE if rec.outcome in ("allow", "ok") else WARNING
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = (
        f"<{FACILITY * 8 + severity}>1 {stamp} {hostname or '-'} {APP_NAME} {procid}"
        f' {message.event_code} [meta sequenceId="{rec.id}"] '
    )
    return header.encode("ascii") + BOM + message.xml


def frame(syslog_msg: bytes) -> bytes:
    """RFC 5425 4.3 octet-counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(syslog_msg)).encode("ascii") + b" " + syslog_msg


def read_cursor(data_dir: Path) -> int:
    """The id of the last entry the repository confirmed (0 when none)."""
    try:
        return int((data_dir / CURSOR_FILE).read_text(encoding="ascii").strip() or 0)
    except FileNotFoundError:
        return 0


def write_cursor(data_dir: Path, entry_id: int) -> None:
    """Remember ``entry_id`` durably (temporary file, fsync, rename, fsync the folder)."""
    path = data_dir / CURSOR_FILE
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="ascii") as out:
        out.write(f"{entry_id}\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    folder = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _deliver(repo: Repository, frames: list[bytes]) -> None:
    """Send ``frames`` on one connection; return once the repository has read them all."""
    raw = socket.create_connection((repo.host, repo.port), timeout=TIMEOUT)
    try:
        tls = repo.context().wrap_socket(raw, server_hostname=repo.host)
    except BaseException:
        raw.close()
        raise
    try:
        tls.sendall(b"".join(frames))
        # Our close_notify, then wait for the peer's; a peer that just closes (no
        # close_notify) has also read everything that came before.
        with contextlib.suppress(ssl.SSLEOFError, ssl.SSLZeroReturnError):
            tls.unwrap()
    finally:
        tls.close()


def ship_once(settings: Settings, database: Database, repo: Repository) -> int:
    """Send the next batch of unshipped entries; return how many were confirmed."""
    after = read_cursor(settings.data_dir)
    source = AuditSource.of(settings)
    hostname, procid = socket.gethostname(), str(os.getpid())
    with database.read_connection() as conn:
        batch = []
        for rec in iter_entries(conn, AuditFilter(), after=after, batch=BATCH):
            batch.append(rec)
            if len(batch) >= BATCH:
                break
    if not batch:
        return 0
    frames = [
        frame(syslog_message(msg, rec, hostname, procid))
        for rec in batch
        for msg in messages(rec, source, check=False)
    ]
    _deliver(repo, frames)
    write_cursor(settings.data_dir, batch[-1].id)
    return len(batch)


class SyslogSender:
    """The background task: ship until caught up; log the repository's outages once."""

    def __init__(self) -> None:
        self.down = False

    def run_for(self, settings: Settings, database: Database) -> None:
        """One turn: send batches until nothing is left or the repository fails."""
        repo = Repository.of(settings)
        if repo is None:
            return
        try:
            while ship_once(settings, database, repo) == BATCH:
                pass
        except (OSError, ssl.SSLError) as exc:
            if not self.down:
                LOGGER.warning(
                    "audit repository %s:%d unreachable (%s); entries kept and retried",
                    repo.host,
                    repo.port,
                    exc,
                )
            self.down = True
            return
        if self.down:
            LOGGER.info("audit repository %s:%d reachable again", repo.host, repo.port)
        self.down = False
