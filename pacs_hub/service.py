"""Running the hub: DICOM gateway processes and HTTP processes, with clean shutdown.

The hub process opens the DICOM port's and the HTTP port's listening sockets and
starts ``PACS_HUB_GATEWAY_PROCESSES`` gateway processes on the one and
``PACS_HUB_HTTP_PROCESSES`` HTTP processes (uvicorn, the FastAPI application) on the
other, each a Python interpreter of its own, so both doors use every core. It keeps
the regional worker (periodic tasks) and the embedded job worker, replaces a gateway
or HTTP process that dies (:mod:`pacs_hub.supervisor`), and on SIGTERM/SIGINT stops
them all. Each port and the data folder are held by this hub alone
(:mod:`pacs_hub.listeners`, :mod:`pacs_hub.storage.data_lock`). What the
HTTP processes share lives in the index and the data folder (sign-ins in progress
too: :mod:`pacs_hub.trust.grants`), never in one process's memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import multiprocessing
import os
import select
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from pacs_hub import listeners, metrics
from pacs_hub.config import Settings
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.server import (
    open_listener,
    prepare_associations,
    serve_dicom,
    sync_standin_ports,
)
from pacs_hub.regional import tasks  # noqa: F401 (registers the background tasks)
from pacs_hub.regional.worker import RegionalWorker, WorkerContext
from pacs_hub.storage import cold, data_lock
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.supervisor import Supervisor
from pacs_hub.trust.auth_api import sign_in_banner
from pacs_hub.web.app import create_app
from pacs_hub.web.viewer import viewer_banner
from workers import rules as processing_rules  # noqa: F401 (registers the processing task)
from workers.embedded import EmbeddedWorker

LOGGER = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
STANDIN_PORTS_CHECK_SECONDS = 3.0
"""How often a gateway process opens or closes stand-ins' own ports as configured."""
SUPERVISE_SECONDS = 1.0
"""How often the hub process looks for a dead gateway or HTTP process to replace."""
STOP_GRACE_SECONDS = 10.0
"""How long a gateway or HTTP process may take to stop before it is killed."""
HTTP_BACKLOG = 2048


def configure_logging(level: str) -> None:
    """Log to stderr; pynetdicom's per-PDU chatter only at DEBUG."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def freeze_startup_heap() -> None:
    """Keep what start-up allocated out of the cyclic garbage collector's full passes.

    A gateway process holds ~190,000 objects once pynetdicom, pydicom's dictionaries,
    SQLAlchemy and the presentation contexts are loaded; each full (oldest generation)
    collection walked them all, ~70 ms on this hardware, at moments set by allocation
    counts: a C-FIND that happened to trigger one answered 70 ms late (the p95
    outliers of the C-FIND benchmark). ``gc.freeze`` moves them to a generation the
    collector ignores; what requests allocate is collected as before.
    """
    gc.collect()
    gc.freeze()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the parent hub process dies (prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's shutdown still stops us
        LOGGER.debug("prctl(PR_SET_PDEATHSIG) unavailable")


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling (we stop it ourselves)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _StopSignals:
    """SIGTERM and SIGINT, waited for without a lock a signal handler could re-enter.

    A handler calling ``threading.Event.set`` deadlocks when a second signal arrives
    while the first handler holds the Event's lock (the hub's ``terminate`` and the
    parent-death signal together): the gateway then never exits and keeps the port.
    Here the handler only records the signal; the wake-up comes through a pipe that
    the interpreter writes from its C-level handler (``signal.set_wakeup_fd``).
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._wake, write = os.pipe()
        os.set_blocking(self._wake, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._record)
        signal.signal(signal.SIGINT, self._record)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    def wait(self, timeout: float) -> bool:
        """True once a stop signal came; else after ``timeout`` seconds, False.

        From then on further stop signals are ignored (the process is stopping; the
        hub kills a gateway that has not exited 10 s after its terminate). Else one
        arriving while the interpreter shuts down, which puts back the default
        actions, would kill the process with that signal instead of a clean exit.
        """
        if not self.received:
            select.select([self._wake], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake, 512)
        if not self.received:
            return False
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return True


def run_gateway(
    settings: Settings,
    parent_pid: int,
    listener: socket.socket | None = None,
    ready: EventType | None = None,
) -> None:
    """Body of one gateway process: accept on the DICOM port's ``listener`` (shared with
    the other gateways) until SIGTERM or SIGINT, or the hub dies; ``ready`` is set once
    it accepts."""
    _die_with_parent()
    if os.getppid() != parent_pid:
        return  # the hub died before we got here
    data_lock.share(settings.data_dir)
    configure_logging(settings.log_level)
    stop = _StopSignals()
    ctx = GatewayContext.open(settings)
    server = serve_dicom(ctx, listener)
    freeze_startup_heap()
    if ready is not None:
        ready.set()
    while not stop.wait(STANDIN_PORTS_CHECK_SECONDS):
        sync_standin_ports(ctx, server)  # a stand-in's own port opens without a restart
    server.shutdown()
    ctx.database.dispose()


def _running(pid: int) -> bool:
    """True while process ``pid`` exists and is neither a zombie nor dead (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@dataclass(frozen=True)
class GatewayWatch:
    """What an HTTP process knows of the gateway processes, for ``/health``: their
    process ids (shared memory the hub process updates when it replaces one) and the
    events they set once they accept."""

    pids: Sequence[int]
    ready: tuple[EventType, ...]

    def alive(self) -> int:
        """Gateway processes that run and accept on the DICOM port."""
        return sum(r.is_set() and _running(p) for p, r in zip(self.pids, self.ready, strict=True))


def run_http(
    settings: Settings, parent_pid: int, listener: socket.socket, gateways: GatewayWatch
) -> None:
    """Body of one HTTP process: serve the FastAPI application on the HTTP port's
    ``listener`` (shared with the other HTTP processes) until SIGTERM or SIGINT (then
    the requests in progress finish), or the hub dies."""
    _die_with_parent()
    if os.getppid() != parent_pid:
        return  # the hub died before we got here
    data_lock.share(settings.data_dir)
    configure_logging(settings.log_level)
    prepare_associations()  # federated QIDO, retrieve on demand open associations here
    database = Database(settings.index_url, run_migrations=False)
    app = create_app(settings, database, gateways.alive)
    server = _Server(
        uvicorn.Config(
            app,
            log_level="warning",
            backlog=HTTP_BACKLOG,
            timeout_graceful_shutdown=int(STOP_GRACE_SECONDS) - 2,
        )
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    freeze_startup_heap()
    LOGGER.info("HTTP process serving on %s:%d", settings.host, settings.http_port)
    try:
        server.run(sockets=[listener])
    finally:
        database.dispose()


def prepare_storage(settings: Settings) -> Database:
    """Create the data folder, migrate the index, clean temp files of a crash and the
    cold tier's cache (the hub holds the data folder: no other hub reads from it)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.index_url, run_migrations=True)
    store = BlobStore(settings.data_dir)
    store.clean_temp()
    cold.clear_cache(store.blobs)  # a copy a power cut tore is never served
    return database


def _start(
    spawn: multiprocessing.context.SpawnContext, name: str, target: object, args: tuple[object, ...]
) -> multiprocessing.context.SpawnProcess:
    proc = spawn.Process(target=target, args=args, name=name)  # type: ignore[arg-type]
    proc.start()
    return proc


def _start_gateway(
    spawn: multiprocessing.context.SpawnContext,
    settings: Settings,
    listener: socket.socket,
    watch: GatewayWatch,
    slot: int,
) -> multiprocessing.context.SpawnProcess:
    """Start the gateway process of ``slot``: it sets that slot's ready event once it
    accepts; the HTTP processes' ``/health`` reads its pid from the shared array."""
    watch.ready[slot].clear()
    proc = _start(
        spawn, "pacs-hub-gateway", run_gateway, (settings, os.getpid(), listener, watch.ready[slot])
    )
    pids: Any = watch.pids  # the RawArray of serve()
    pids[slot] = proc.pid or 0
    return proc


def _stop(procs: Sequence[BaseProcess]) -> None:
    """SIGTERM every process, then SIGKILL those still running after the grace period."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(timeout=STOP_GRACE_SECONDS)
        if proc.is_alive():
            proc.kill()
            proc.join()


def serve(settings: Settings) -> None:
    """Run the hub in the foreground until SIGTERM/SIGINT."""
    configure_logging(settings.log_level)
    # The ports and the data folder first: a hub that cannot have them stops before it
    # touches the archive (its start cleans the folder's temp files).
    wait = settings.port_release_wait
    listener = open_listener(settings.host, settings.dicom_port, wait)  # shared by the gateways
    http_listener = listeners.claim("HTTP", settings.host, settings.http_port, HTTP_BACKLOG, wait)
    data_lock.claim(settings.data_dir, wait)
    metrics.enable(settings)  # before any process starts: they count into its folder
    database = prepare_storage(settings)
    spawn = multiprocessing.get_context("spawn")
    stop = _StopSignals()  # from here a signal stops the hub at the next wait
    supervisor = Supervisor()
    count = settings.effective_gateway_processes
    watch = GatewayWatch(spawn.RawArray("i", count), tuple(spawn.Event() for _ in range(count)))
    for slot in range(count):
        supervisor.add(
            "gateway", functools.partial(_start_gateway, spawn, settings, listener, watch, slot)
        )
    http_args = (settings, os.getpid(), http_listener, watch)
    print(sign_in_banner(settings, database), flush=True)  # the first admin, before any request
    for _ in range(settings.effective_http_processes):
        supervisor.add(
            "HTTP", functools.partial(_start, spawn, "pacs-hub-http", run_http, http_args)
        )
    print(
        f"PACS Hub ready: AE title {settings.ae_title}, DICOM {settings.host}:{settings.dicom_port}"
        f" ({count} gateway process(es)), HTTP http://{settings.host}:{settings.http_port}/"
        f" ({settings.effective_http_processes} HTTP process(es)),"
        f" data in {settings.data_dir.resolve()}",
        flush=True,
    )
    print(viewer_banner(settings), flush=True)
    prepare_associations()  # routing, backfill, prefetch open associations here
    worker = RegionalWorker(
        WorkerContext(settings, database, BlobStore(settings.data_dir), threading.Event())
    )
    worker.start()
    jobs_worker = EmbeddedWorker(settings)  # Celery worker on every queue (embedded default)
    jobs_worker.start()
    freeze_startup_heap()
    try:
        while not stop.wait(SUPERVISE_SECONDS):
            supervisor.check()
        LOGGER.info("signal %d: shutting down", stop.received[0])
    finally:
        worker.stop()
        jobs_worker.stop()
        _stop(supervisor.processes())
        http_listener.close()
        listener.close()
        database.dispose()
        LOGGER.info("PACS Hub stopped")
