"""C-FIND as SCU to an establishment PACS, answers streamed, associations reused.

A federated query (:mod:`pacs_hub.regional.federation`) asks every PACS node with a
Study Root C-FIND (PS3.4 C.6.2). :class:`RemoteFind` sends the requests of one node
on one association and hands each Pending answer's Identifier to a sink *as it
arrives* (PS3.4 C.4.1.3: the SCP sends one Pending response per match), then a
final event: done, or unavailable with the reason.

An association may carry any number of DIMSE operations (PS3.7 7.1, PS3.8 7.1), so a
long-lived process keeps the associations of finished queries in an
:class:`AssociationPool` and reuses them: the next query skips the TCP connection,
the A-ASSOCIATE exchange (PS3.8 7.1.1) and the A-RELEASE round trip (PS3.8 7.2).
An idle association is kept for half its timeout (the query's, also its network
timeout), then released (A-RELEASE). When a reused association turns out to have
been closed by the PACS before it answered anything, the query is sent again once on
a fresh association.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import sop_class as sc
from pynetdicom.association import Association

from pacs_hub.config import Settings
from pacs_hub.regional.scu import PENDING, PacsNode, SourceUnavailable, associate, requestor_ae
from pacs_hub.storage.database import Database

MODEL = sc.StudyRootQueryRetrieveInformationModelFind


@dataclass(frozen=True, slots=True)
class Answered:
    """One Pending answer's Identifier from ``ae_title``."""

    ae_title: str
    identifier: Dataset


@dataclass(frozen=True, slots=True)
class Finished:
    """``ae_title`` answered every request (``reason`` empty) or gave up (why)."""

    ae_title: str
    reason: str = ""


Sink = Callable[[Answered | Finished], None]
_Key = tuple[str, str, int, str, float]


class AssociationPool:
    """Idle Study Root C-FIND associations to PACS nodes, by node and timeout.

    An association given back is kept for half its timeout (below its network
    timeout, which would otherwise abort it), then released by a timer unless a
    query took it first.
    """

    def __init__(self) -> None:
        self._idle: dict[_Key, list[tuple[Association, threading.Timer]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(settings: Settings, node: PacsNode, timeout: float) -> _Key:
        return (node.ae_title, node.host, node.port, settings.ae_title, timeout)

    def take(self, key: _Key) -> Association | None:
        """The most recently used idle association still established, or None."""
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                assoc, timer = idle.pop()
                timer.cancel()
                if assoc.is_established:
                    return assoc
        return None

    def give_back(self, key: _Key, assoc: Association) -> None:
        """Keep ``assoc`` for the next query, for half its timeout."""
        if not assoc.is_established:
            return
        timer = threading.Timer(key[4] / 2, self._expire, (key, assoc))
        timer.daemon = True
        with self._lock:
            self._idle.setdefault(key, []).append((assoc, timer))
        timer.start()

    def _expire(self, key: _Key, assoc: Association) -> None:
        with self._lock:
            idle = self._idle.get(key, [])
            kept = [entry for entry in idle if entry[0] is not assoc]
            if len(kept) == len(idle):
                return  # taken meanwhile
            self._idle[key] = kept
        if assoc.is_established:
            assoc.release()


_POOLS: weakref.WeakKeyDictionary[Database, AssociationPool] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def pool_of(database: Database) -> AssociationPool:
    """The association pool of the process serving ``database`` (one per index handle,
    so that it lives exactly as long as the gateway's or the web app's services)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(database)
        if pool is None:
            pool = _POOLS[database] = AssociationPool()
        return pool


class _Reused(SourceUnavailable):
    """A reused association failed before any answer: worth one fresh try."""


class RemoteFind:
    """The C-FIND requests to one PACS on one association, abortable, streamed."""

    def __init__(
        self,
        settings: Settings,
        node: PacsNode,
        identifiers: Sequence[Dataset],
        timeout: float,
        pool: AssociationPool | None = None,
    ) -> None:
        self.settings = settings
        self.node = node
        self.identifiers = identifiers
        self.timeout = timeout
        self.pool = pool
        self.assoc: Association | None = None
        self._aborted = False

    def run(self, sink: Sink) -> None:
        """Send every request; each answer to ``sink``, then :class:`Finished`."""
        title = self.node.ae_title
        try:
            try:
                self._run(sink, reused=True)
            except _Reused:
                self._close()
                self._run(sink, reused=False)
        except SourceUnavailable as exc:
            sink(Finished(title, exc.message))
        except Exception as exc:  # a peer's malformed answer must not sink the others
            sink(Finished(title, f"{type(exc).__name__}: {exc}"[:120]))
        else:
            sink(Finished(title))
        finally:
            self._close()

    def _run(self, sink: Sink, *, reused: bool) -> None:
        key = AssociationPool.key(self.settings, self.node, self.timeout)
        assoc = self.pool.take(key) if self.pool is not None and reused else None
        if assoc is None:
            reused = False
            ae = requestor_ae(self.settings, [MODEL], timeout=self.timeout)
            assoc = associate(ae, self.node)
        self.assoc = assoc
        if self._aborted:
            raise SourceUnavailable(f"{self.node.ae_title}: aborted")
        answered = 0
        for identifier in self.identifiers:
            answered += self._find(assoc, identifier, sink, first=reused and answered == 0)
        if self.pool is not None and not self._aborted:
            self.pool.give_back(key, assoc)
            self.assoc = None

    def _find(self, assoc: Association, request: Dataset, sink: Sink, *, first: bool) -> int:
        title, count = self.node.ae_title, 0
        try:
            responses = assoc.send_c_find(request, MODEL)
        except RuntimeError as exc:  # the association ended before the request left
            error = _Reused if first else SourceUnavailable
            raise error(f"{title}: association ended ({exc})") from exc
        for status, identifier in responses:
            if not status:
                if first and count == 0 and not self._aborted:
                    raise _Reused(f"{title}: reused association closed")
                raise SourceUnavailable(f"{title}: no C-FIND response in time")
            code = int(status.Status)
            if code in PENDING:
                if identifier is not None:
                    count += 1
                    sink(Answered(title, identifier))
                continue
            if code == 0x0000:
                return count
            comment = str(status.get("ErrorComment", "") or "")
            raise SourceUnavailable(f"{title}: C-FIND status 0x{code:04X} {comment}".strip())
        raise SourceUnavailable(f"{title}: C-FIND ended without a final status")

    def _close(self) -> None:
        assoc, self.assoc = self.assoc, None
        if assoc is not None and assoc.is_established:
            if self._aborted:
                assoc.abort()
            else:
                assoc.release()

    def abort(self) -> None:
        """Abort the association if it is still up (deadline passed, caller gone)."""
        self._aborted = True
        assoc = self.assoc
        if assoc is not None and assoc.is_established:
            assoc.abort()
