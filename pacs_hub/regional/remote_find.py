"""C-FIND as SCU to several establishment PACS at once, from the calling thread.

A federated query (:mod:`pacs_hub.regional.federation`) asks every PACS node with a
Study Root C-FIND (PS3.4 C.6.2). :class:`MultiFind` does it without a thread per PACS
and without pynetdicom's DUL and reactor threads: each PACS gets one association on a
non-blocking socket, its requests are written as soon as the association is up, and
:meth:`MultiFind.poll` reads whatever has arrived on any of them (``selectors``) and
returns it as events: each Pending answer's Identifier as it arrives
(:class:`Answered`; PS3.4 C.4.1.3: one Pending response per match), then
:class:`Finished` (every request answered, or given up and why). Under one
interpreter lock every hand-over between threads costs latency (measured: three
PACS asked from threads through pynetdicom took twice as long as the PACS needed);
here there is none.

Each association is a :class:`~pacs_hub.regional.find_association.Link` (the PS3.8
upper layer and the C-FIND messages of PS3.7 9.3.2, on a non-blocking socket).

An association may carry any number of operations (PS3.7 7.1, PS3.8 7.1), so a
long-lived process keeps the associations of finished queries in a :class:`LinkPool`
and reuses them: the next query skips the TCP connection, the A-ASSOCIATE exchange
and the A-RELEASE round trip. An idle association is kept for half the query timeout,
then released by the pool's sweeper thread. One the PACS closed meanwhile is left
aside when taken, and a reused association that fails before its first answer is
replaced by a fresh one, once.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import threading
import time
import weakref
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pacs_hub.config import Settings
from pacs_hub.regional.find_association import Answered, Finished, Link, LinkFailed
from pacs_hub.regional.scu import PacsNode
from pacs_hub.storage.database import Database

LOGGER = logging.getLogger(__name__)
__all__ = ["Answered", "Finished", "LinkPool", "MultiFind", "pool_of"]


_Key = tuple[str, str, int, str]


class LinkPool:
    """Idle associations to PACS nodes (by node and calling AE title).

    One given back is kept for ``idle`` seconds, then released (A-RELEASE) by the
    pool's sweeper thread unless a query took it first; the sweeper runs while
    anything is idle and stops when nothing is.
    """

    def __init__(self) -> None:
        self._idle: dict[_Key, list[tuple[Link, float]]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sweeping = False

    @staticmethod
    def key(settings: Settings, node: PacsNode) -> _Key:
        return (node.ae_title, node.host, node.port, settings.ae_title)

    def take(self, key: _Key) -> Link | None:
        """The most recently used idle association the PACS has not closed, or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key, [])
                if not idle:
                    return None
                link, _deadline = idle.pop()
            if not link.stale():
                return link
            link.close()

    def give_back(self, key: _Key, link: Link, idle: float) -> None:
        """Keep ``link`` (idle, association up) for the next query, ``idle`` seconds."""
        with self._lock:
            self._idle.setdefault(key, []).append((link, time.monotonic() + idle))
            # A sweeper already waiting wakes at an earlier deadline (each query gives
            # back with the same idle time): waking it for every association given back
            # cost every query thread switches.
            if not self._sweeping:
                self._sweeping = True
                threading.Thread(target=self._sweep, name="fed-find-pool", daemon=True).start()

    def _expired(self, now: float) -> tuple[list[Link], float | None]:
        expired: list[Link] = []
        deadlines: list[float] = []
        for idle in self._idle.values():
            expired += [link for link, deadline in idle if deadline <= now]
            idle[:] = [(link, deadline) for link, deadline in idle if deadline > now]
            deadlines += [deadline for _link, deadline in idle]
        return expired, min(deadlines, default=None)

    def _sweep(self) -> None:
        while True:
            with self._lock:
                expired, deadline = self._expired(time.monotonic())
                if not expired:
                    if deadline is None:
                        self._sweeping = False
                        return
                    self._changed.wait(deadline - time.monotonic())
                    continue
            for link in expired:
                link.release()


_POOLS: weakref.WeakKeyDictionary[Database, LinkPool] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def pool_of(database: Database) -> LinkPool:
    """The association pool of the process serving ``database`` (one per index handle,
    so that it lives exactly as long as the gateway's or the web app's services)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(database)
        if pool is None:
            pool = _POOLS[database] = LinkPool()
        return pool


@dataclass
class _Exchange:
    """One PACS's requests in a :class:`MultiFind` (keyed by their link): reused or fresh."""

    node: PacsNode
    requests: list[Dataset]
    reused: bool


class MultiFind:
    """The C-FIND requests of one federated query to every PACS, driven by :meth:`poll`.

    ``plans`` gives each PACS node its requests (Identifiers, Study Root). Creating it
    takes a pooled association per node (or starts connecting) and sends what it can;
    :meth:`poll` does the rest. :meth:`close` gives back the associations of the
    PACS that finished and aborts the others.
    """

    def __init__(
        self,
        settings: Settings,
        plans: list[tuple[PacsNode, list[Dataset]]],
        timeout: float,
        pool: LinkPool | None = None,
    ) -> None:
        self.settings, self.timeout, self.pool = settings, timeout, pool
        self.titles = [node.ae_title for node, _requests in plans]
        self._selector = selectors.DefaultSelector()
        self._exchanges: dict[Link, _Exchange] = {}
        self._done: list[Link] = []
        self._events: list[Answered | Finished] = []
        self._encoded: dict[tuple[int, bool], bytes] = {}  # the plans keep the requests alive
        for node, requests in plans:
            self._begin(node, requests, reuse=True)

    def _begin(self, node: PacsNode, requests: list[Dataset], *, reuse: bool) -> None:
        pooled = None
        if reuse and self.pool is not None:
            pooled = self.pool.take(LinkPool.key(self.settings, node))
        try:
            link = pooled or Link(node, self.settings.ae_title, self.settings.max_pdu_size)
            self._exchanges[link] = _Exchange(node, requests, pooled is not None)
            link.start(requests, self._encoded)
        except (OSError, LinkFailed) as exc:
            if pooled is None:
                self._events.append(Finished(node.ae_title, _reason(node, exc)))
                return
            self._fail(pooled, exc)
            return
        self._selector.register(link.sock, self._mask(link), link)

    @staticmethod
    def _mask(link: Link) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if link.wants_write else 0)

    def poll(self, timeout: float) -> list[Answered | Finished]:
        """What arrived within ``timeout`` seconds (at most): answers, then finishes."""
        if not self._events and self._exchanges:
            for key, mask in self._selector.select(max(0.0, timeout)):
                link: Link = key.data
                try:
                    if mask & selectors.EVENT_WRITE:
                        link.on_writable()
                    if mask & selectors.EVENT_READ:
                        link.on_readable()
                except Exception as exc:  # a peer's malformed answer must not sink the others
                    self._fail(link, exc)
                    continue
                self._collect(link)
        events, self._events = self._events, []
        return events

    def _collect(self, link: Link) -> None:
        events = link.take_events()
        self._events += events
        if any(isinstance(event, Finished) for event in events):
            self._selector.unregister(link.sock)
            del self._exchanges[link]
            self._done.append(link)
        elif link.state != "closed":
            self._selector.modify(link.sock, self._mask(link), link)

    def _fail(self, link: Link, exc: BaseException) -> None:
        exchange = self._exchanges.pop(link)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(link.sock)
        self._events += link.take_events()
        link.abort()
        if exchange.reused and link.answered == 0:  # closed by the PACS while idle
            LOGGER.debug("%s: reused association failed (%s); a fresh one", exchange.node, exc)
            self._begin(exchange.node, exchange.requests, reuse=False)
            return
        self._events.append(Finished(exchange.node.ae_title, _reason(exchange.node, exc)))

    def close(self) -> None:
        """Give back the finished PACS' associations; abort those still answering."""
        for link in self._exchanges:
            link.abort()
        self._exchanges.clear()
        for link in self._done:
            if self.pool is not None and link.state == "ready":
                key = LinkPool.key(self.settings, link.node)
                self.pool.give_back(key, link, self.timeout / 2)
            else:
                link.release()
        self._done.clear()
        self._selector.close()


def _reason(node: PacsNode, exc: BaseException) -> str:
    if isinstance(exc, LinkFailed):
        return f"{node.ae_title}: {exc}"
    if isinstance(exc, OSError):
        return f"{node.ae_title}: no association ({exc.strerror or exc})"
    return f"{node.ae_title}: {type(exc).__name__}: {exc}"[:120]
