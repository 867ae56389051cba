"""Event-driven reactors for pynetdicom's two threads per association.

pynetdicom 3.0 runs every association with two threads that *poll*: the DICOM Upper
Layer reactor (``DULServiceProvider.run_reactor``) sleeps 1 ms whenever a loop found
nothing to do, and the Association reactor (``Association._run_reactor``) sleeps
1 ms on every loop before looking for a DIMSE message, an A-RELEASE or A-ABORT, a
dead DUL or an expired network timeout. Each idle association costs ~5 % of a core,
and each message waits up to a millisecond at every hop between the threads
(a C-STORE response queued by the Association thread, a C-STORE sub-operation of a
C-MOVE waiting for the sub-association's reactor to pause, ...). Shortening the
sleep only trades latency for CPU.

Here both loops *block* until something they watch changes, keeping pynetdicom's
order of work per loop (so its state machine, PS3.8 9.2, sees the same sequence
of events):

* the DUL reactor blocks in ``poll(2)`` on the association's socket and on a
  wake-up descriptor (an ``eventfd``), signalled when another thread queues a
  primitive for it (A-ASSOCIATE, P-DATA, A-RELEASE, A-ABORT, a state-machine
  event) or asks it to stop; the poll timeout is the ARTIM timer's remaining
  time (PS3.8 9.1.5);
* the Association reactor blocks on a :class:`threading.Event` set when the DUL
  delivers a DIMSE message or an ACSE primitive (release, abort), when the DUL
  thread ends and when the association is killed; its timeout is the network
  (idle) timer's remaining time, so the network timeout fires as before.

Both waits are also capped at :data:`MAX_WAIT` seconds, a safety net only.

A C-ECHO or C-STORE request an acceptor receives while its Association reactor is
idle is served by the DUL thread itself (:class:`MessageQueue`): no hand-over
between the two threads for the messages an archive receives most.

pynetdicom serves an N-EVENT-REPORT request (a storage commitment report, PS3.4
J.3.3) in a thread of its own, which answers after the handler returns; a
``release()`` from the user's thread could queue the A-RELEASE-RQ first, and the
answer, a P-DATA in Sta7 (PS3.8 9.2), was refused. ``release()`` waits (at most
:data:`SIDE_ANSWER_WAIT` seconds) until such threads are done. The
queues pynetdicom uses between the threads are kept (same objects, same order);
they only signal the consumer on ``put``. Installed once per process by
:func:`install`, before any association exists.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import select
import threading
import weakref
from typing import Any

from pynetdicom import evt
from pynetdicom.association import LOGGER as ASSOCIATION_LOGGER
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import LOGGER as DUL_LOGGER
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.timer import Timer

from pacs_hub.gateway import pdata

MAX_WAIT = 0.1
"""Longest block (seconds) of either reactor without a wake-up (a safety net)."""
SIDE_ANSWER_WAIT = 2.0
"""Longest wait of ``release()`` for pynetdicom to send its answer to an N-EVENT-REPORT."""
_POLL_IN = select.POLLIN | select.POLLPRI
_INSTALL_LOCK = threading.Lock()


class Waker:
    """A file descriptor another thread makes readable to end a ``poll(2)``.

    An ``eventfd`` where the OS has one, else a pipe. :meth:`wake` writes only
    when no wake-up is pending, so a burst of primitives costs one system call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = False
        self._closed = False
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)

    def fileno(self) -> int:
        return self._read_fd

    def wake(self) -> None:
        """Make :meth:`fileno` readable (at most one pending wake-up)."""
        with self._lock:
            if self._pending or self._closed:
                return
            self._pending = True
            with contextlib.suppress(BlockingIOError):  # already readable
                os.write(self._write_fd, (1).to_bytes(8, "little"))

    def drain(self) -> None:
        """Consume the pending wake-up, if any (the waiter then re-checks its work)."""
        with self._lock:
            self._pending = False
            with contextlib.suppress(BlockingIOError):
                os.read(self._read_fd, 8)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._read_fd)
            if self._write_fd != self._read_fd:  # pragma: no cover - pipe
                os.close(self._write_fd)


class WakingQueue(queue.Queue[Any]):
    """A :class:`queue.Queue` that calls ``on_put`` after each item is queued."""

    def __init__(self, on_put: Any) -> None:
        super().__init__()
        self._on_put = on_put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._on_put()


INLINE_REQUESTS = (C_ECHO, C_STORE)


class MessageQueue(WakingQueue):
    """The DIMSE message queue; serves a C-ECHO or C-STORE request in the DUL thread.

    pynetdicom hands every message the DUL thread completes to the Association
    thread through this queue: a wake-up and an interpreter-lock hand-over per
    message, then one more for the response. A request that needs nothing
    from the association while it is served (C-ECHO, PS3.7 9.1.5; C-STORE, 9.1.1),
    received by an acceptor whose reactor is idle with nothing queued and no
    ``send_*`` call running, is served right away by the DUL thread, which wrote
    it and writes the response (:mod:`pacs_hub.gateway.pdata`): the messages of
    the association stay served one at a time, in order.
    """

    def __init__(self, assoc: Association, on_put: Any) -> None:
        super().__init__(on_put)
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if self._inline(item[1]):
            # The send lock comes before the DUL's lock (pdata.write_message): take it
            # without waiting, or a thread sending on this association meanwhile (a
            # storage commitment report) and this one would each wait for the other.
            lock = pdata.sending(self._assoc).lock
            if lock.acquire(blocking=False):
                self._assoc._pacs_inline = True  # type: ignore[attr-defined]
                try:
                    self._assoc._serve_request(item[1], item[0])
                finally:
                    self._assoc._pacs_inline = False  # type: ignore[attr-defined]
                    lock.release()
                return
        super().put(item, block, timeout)

    def _inline(self, primitive: Any) -> bool:
        assoc = self._assoc
        return (
            type(primitive) in INLINE_REQUESTS
            and primitive.is_valid_request
            and assoc.is_acceptor
            and threading.get_ident() == assoc.dul.ident
            and not assoc._pacs_busy  # type: ignore[attr-defined]
            and assoc._reactor_checkpoint.is_set()
            and not self.qsize()
        )


def _timer_wait(timer: Timer) -> float:
    """Seconds until ``timer`` expires if it is running, capped at :data:`MAX_WAIT`."""
    running = (
        timer.timeout is not None
        and getattr(timer, "_start_time", None) is not None
        and getattr(timer, "_end_time", None) is None
    )
    if not running:
        return MAX_WAIT
    return min(MAX_WAIT, max(0.0, timer.remaining) + 0.0005)


class Checkpoint(threading.Event):
    """``Association._reactor_checkpoint`` that calls ``on_set`` when set again."""

    def __init__(self, on_set: Any) -> None:
        super().__init__()
        super().set()
        self._on_set = on_set

    def set(self) -> None:
        super().set()
        self._on_set()


def _attach(assoc: Association) -> None:
    """Give a new association its wake-ups and signalling queues (before any use).

    A DIMSE message wakes the Association reactor only while it may run: while a
    ``send_*`` call holds it at its checkpoint, that call takes its own responses
    (waiting on the queue itself), and the reactor is woken when the checkpoint is
    released with a message still queued.
    """
    dul = assoc.dul
    waker = Waker()
    assoc_wake = threading.Event()

    def wake_dul() -> None:
        if threading.get_ident() != dul.ident:  # the DUL looks at its queues anyway
            waker.wake()

    def released() -> None:
        if assoc.dimse.msg_queue.qsize():
            assoc_wake.set()

    checkpoint = Checkpoint(released)

    def message_queued() -> None:
        if checkpoint.is_set():
            assoc_wake.set()

    weakref.finalize(dul, waker.close)  # if the DUL thread never runs (failed connect)
    dul._pacs_waker = waker  # type: ignore[attr-defined]
    dul._pacs_lock = threading.RLock()  # type: ignore[attr-defined]
    assoc._pacs_wake = assoc_wake  # type: ignore[attr-defined]
    assoc._reactor_checkpoint = checkpoint
    assoc._pacs_side_serving = set()  # type: ignore[attr-defined]
    assoc._pacs_side_done = threading.Condition()  # type: ignore[attr-defined]
    dul.event_queue = WakingQueue(wake_dul)
    dul.to_provider_queue = WakingQueue(wake_dul)
    dul.to_user_queue = WakingQueue(assoc_wake.set)
    assoc._pacs_busy = False  # type: ignore[attr-defined]
    assoc._pacs_inline = False  # type: ignore[attr-defined]
    assoc.dimse.msg_queue = MessageQueue(assoc, message_queued)


def _socket_fd(dul: DULServiceProvider) -> int:
    """The connected socket's descriptor, or -1."""
    sock = dul.socket
    if sock is None or sock.socket is None or not getattr(sock, "_is_connected", False):
        return -1
    try:
        return sock.socket.fileno()
    except OSError:  # pragma: no cover - closed under us
        return -1


class _DulPoll:
    """The DUL reactor's ``poll(2)``: the wake-up descriptor and the current socket."""

    def __init__(self, waker: Waker) -> None:
        self.waker = waker
        self.poll = select.poll()
        self.poll.register(waker.fileno(), select.POLLIN)
        self.fd = -1

    def wait(self, dul: DULServiceProvider) -> None:
        fd = _socket_fd(dul)
        if fd != self.fd:
            if self.fd >= 0:
                with contextlib.suppress(KeyError):
                    self.poll.unregister(self.fd)
            if fd >= 0:
                self.poll.register(fd, _POLL_IN)
            self.fd = fd
        self.poll.poll(_timer_wait(dul.artim_timer) * 1000)
        self.waker.drain()


def _abort_on_exception(dul: DULServiceProvider, exc: Exception) -> None:
    """pynetdicom's own reaction to an exception in its DUL loop (dul.py run_reactor)."""
    DUL_LOGGER.error("Exception in DUL.run(), aborting association")
    DUL_LOGGER.exception(exc)
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    assert dul.socket is not None
    dul.socket.send(abort_pdu.encode())
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True


_CONTINUE, _WAIT, _STOP = 0, 1, 2


def _dul_step(self: DULServiceProvider) -> int:
    """One loop of pynetdicom's DUL reactor (dul.py ``run_reactor``) without its sleep.

    ARTIM expiry (Evt18) first, then either one primitive from the local user or
    one PDU from the peer, then one state-machine event.
    """
    if not self.assoc._dul_ready.is_set():
        self.assoc._dul_ready.set()
    if self._kill_thread:
        return _STOP
    if self.artim_timer.expired:
        self.event_queue.put("Evt18")
    try:
        if self._process_recv_primitive():
            pass
        elif self._is_transport_event():
            self._idle_timer.restart()
    except Exception as exc:
        _abort_on_exception(self, exc)
        return _STOP
    try:
        event = self.event_queue.get(block=False)
    except queue.Empty:
        return _WAIT
    self.state_machine.do_action(event)
    return _CONTINUE


def run_dul_reactor(self: DULServiceProvider) -> None:
    """``DULServiceProvider.run_reactor``, blocking in ``poll`` instead of sleeping.

    When a loop had no state-machine event to process, it waits for the socket, a
    wake-up or the ARTIM timer instead of sleeping 1 ms. Each loop holds the DUL's
    lock, which :mod:`pacs_hub.gateway.pdata` takes to write PDUs directly.
    """
    waker: Waker = self._pacs_waker  # type: ignore[attr-defined]
    lock: threading.RLock = self._pacs_lock  # type: ignore[attr-defined]
    poller = _DulPoll(waker)
    self._idle_timer.start()
    try:
        while True:
            with lock:
                step = _dul_step(self)
            if step == _STOP:
                break
            if step == _WAIT:
                poller.wait(self)
    finally:
        waker.close()
        self.assoc._pacs_wake.set()  # type: ignore[attr-defined]


def _has_work(assoc: Association) -> bool:
    return bool(assoc.dimse.msg_queue.qsize()) or assoc._kill or not assoc.dul.is_alive()


def run_association_reactor(self: Association) -> None:
    """``Association._run_reactor``, waiting on an event instead of sleeping 1 ms.

    The loop body is pynetdicom's: serve one DIMSE request, then react to an
    A-RELEASE request, an A-ABORT / A-P-ABORT, a dead DUL or the network timeout.
    While it waits it counts as paused (``_is_paused``), so a ``send_*`` call from
    another thread (a C-MOVE sub-operation) need not spin until the next loop; the
    reactor still stops at ``_reactor_checkpoint`` before touching any queue.

    pynetdicom's own hand-over has a window: a ``send_*`` call clears the checkpoint
    and goes on as soon as it reads ``_is_paused``, which the reactor clears only
    *after* passing the checkpoint; a reactor preempted between the two reads the
    response the caller waits for and serves it as a request (the caller then waits
    out its DIMSE timeout: about 1 send in 3,000 with four busy associations). Here
    the reactor clears ``_is_paused`` and then looks at the checkpoint again, while
    the caller clears the checkpoint and then reads ``_is_paused``: one of the two
    always sees the other, and the reactor goes back to wait.
    """
    wake: threading.Event = self._pacs_wake  # type: ignore[attr-defined]
    self._is_paused = False
    while not self._kill:
        self._is_paused = True
        wake.clear()
        if not _has_work(self):
            wake.wait(_timer_wait(self.dul._idle_timer))
        # pynetdicom serves an N-EVENT-REPORT request in a thread of its own, whose
        # _serve_request sets _is_paused and then clears it: re-assert it while waiting,
        # as pynetdicom's own loop does every millisecond, or a release() would wait
        # for a pause that its cleared checkpoint keeps us from ever reaching again.
        self._is_paused = True
        while not self._reactor_checkpoint.wait(MAX_WAIT):
            self._is_paused = True
        self._is_paused = False
        if not self._reactor_checkpoint.is_set():
            continue  # a send_* call paused us meanwhile and may have seen us paused
        self._pacs_busy = True  # type: ignore[attr-defined]
        try:
            if _react_once(self):
                return
        finally:
            self._pacs_busy = False  # type: ignore[attr-defined]


def _react_once(self: Association) -> bool:
    """One pass of pynetdicom's Association loop body; True when the reactor ends."""
    context_id, msg = self.dimse.get_msg(block=False)
    if msg:
        self._serve_request(msg, context_id)  # type: ignore[arg-type]
    if self.is_established and self.acse.is_release_requested():
        self.acse.send_release(is_response=True)
        ASSOCIATION_LOGGER.info("Association Released")
        self.is_released = True
        self.is_established = False
        evt.trigger(self, evt.EVT_RELEASED, {})
        self.kill()
        return True
    if self.acse.is_aborted():
        message = "Association Aborted"
        if self.acse.is_aborted("a-p-abort"):
            message += " (A-P-ABORT)"
        ASSOCIATION_LOGGER.info(message)
        self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
        self.is_aborted = True
        self.is_established = False
        evt.trigger(self, evt.EVT_ABORTED, {})
        self.kill()
        return True
    if not self.dul.is_alive():
        self.kill()
        return True
    # A request the DUL thread serves (MessageQueue) runs to its end, like one served
    # here, before the network timeout counts.
    if self.dul.idle_timer_expired() and not self._pacs_inline:  # type: ignore[attr-defined]
        ASSOCIATION_LOGGER.error("Network timeout reached")
        if self.network_timeout_response == "A-RELEASE":
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self.release()
            self._is_paused = False
        else:
            self.abort()
        self.kill()
        return True
    return False


def install() -> None:
    """Replace pynetdicom's polling loops with the blocking ones, once per process."""
    with _INSTALL_LOCK:
        if getattr(Association.__init__, "_pacs_hub_reactor", False):
            return
        original_init = Association.__init__
        original_kill = Association.kill
        original_kill_dul = DULServiceProvider.kill_dul
        original_serve = Association._serve_request
        original_release = Association.release
        original_stop_dul = DULServiceProvider.stop_dul

        @functools.wraps(original_init)
        def init(self: Association, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            _attach(self)

        @functools.wraps(original_kill)
        def kill(self: Association) -> None:
            self._kill = True
            self._pacs_wake.set()  # type: ignore[attr-defined]
            original_kill(self)

        @functools.wraps(original_serve)
        def serve_request(self: Association, msg: Any, context_id: int) -> None:
            if threading.current_thread() is self:  # the reactor
                original_serve(self, msg, context_id)
                return
            serving, done = self._pacs_side_serving, self._pacs_side_done  # type: ignore[attr-defined]
            with done:
                serving.add(threading.get_ident())
            try:
                original_serve(self, msg, context_id)
            finally:
                with done:
                    serving.discard(threading.get_ident())
                    done.notify_all()

        @functools.wraps(original_release)
        def release(self: Association) -> None:
            serving, done = self._pacs_side_serving, self._pacs_side_done  # type: ignore[attr-defined]
            with done:  # an answer queued after the A-RELEASE-RQ would be refused (Sta7)
                done.wait_for(lambda: not serving - {threading.get_ident()}, SIDE_ANSWER_WAIT)
            original_release(self)

        @functools.wraps(original_kill_dul)
        def kill_dul(self: DULServiceProvider) -> None:
            original_kill_dul(self)
            self._pacs_waker.wake()  # type: ignore[attr-defined]

        @functools.wraps(original_stop_dul)
        def stop_dul(self: DULServiceProvider) -> bool:
            if self.state_machine.current_state == "Sta1":
                self._kill_thread = True
                self._pacs_waker.wake()  # type: ignore[attr-defined]
            return bool(original_stop_dul(self))

        init._pacs_hub_reactor = True  # type: ignore[attr-defined]
        Association.__init__ = init  # type: ignore[method-assign]
        Association.kill = kill  # type: ignore[method-assign]
        Association._run_reactor = run_association_reactor  # type: ignore[method-assign]
        Association._serve_request = serve_request  # type: ignore[method-assign]
        Association.release = release  # type: ignore[method-assign]
        DULServiceProvider.kill_dul = kill_dul  # type: ignore[method-assign]
        DULServiceProvider.stop_dul = stop_dul  # type: ignore[method-assign]
        DULServiceProvider.run_reactor = run_dul_reactor  # type: ignore[method-assign]
