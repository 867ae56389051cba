"""The worker ``pacs-hub serve`` starts itself in the embedded default.

A child process ``pacs-hub worker -Q cpu,gpu,io`` with the hub's settings (passed as
``PACS_HUB_*`` variables), restarted if it dies while the hub runs (a killed worker's
job then runs again: :mod:`workers.rules`), stopped with the hub: SIGTERM (Celery's warm
shutdown), SIGQUIT (cold) after a grace period, then SIGKILL. Linux also SIGTERMs it
when the hub dies (``PR_SET_PDEATHSIG``). It runs at a lower CPU priority (nice 10) than
the DICOM and HTTP serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from pacs_hub.config import Settings
from workers.celery_app import QUEUES

LOGGER = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
RESTART_DELAY = 2.0
NICENESS = 10


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings as the hub."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"PACS_HUB_{name.upper()}"] = str(value)
    return env


def _child_setup() -> None:  # pragma: no cover (runs in the child, before exec)
    """Die with the hub; yield the CPU to the DICOM and HTTP serving (nice 10)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)


@dataclass
class EmbeddedWorker:
    """A supervised ``pacs-hub worker`` child process."""

    settings: Settings
    grace: float = 8.0
    process: subprocess.Popen[bytes] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _spawned_at: float = 0.0

    def start(self) -> None:
        """Start the worker (when ``PACS_HUB_EMBEDDED_WORKER``) and its supervisor."""
        if not self.settings.embedded_worker:
            return
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="hub-worker-watch", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "pacs_hub.cli", "worker", "-Q", ",".join(QUEUES)]
        self._spawned_at = time.monotonic()
        self.process = subprocess.Popen(
            command, env=worker_environment(self.settings), preexec_fn=_child_setup
        )
        LOGGER.info("embedded worker started (pid %d)", self.process.pid)

    def _watch(self) -> None:
        delay = RESTART_DELAY / 2
        while not self._stop.wait(1.0):
            if self.process is None or self.process.poll() is None:
                continue
            lived = time.monotonic() - self._spawned_at
            # a worker that dies at once (bad settings) is restarted less and less often
            delay = RESTART_DELAY if lived > 60 else min(delay * 2, 60.0)
            LOGGER.warning(
                "embedded worker exited with %s; restarting in %.0fs",
                self.process.returncode,
                delay,
            )
            if self._stop.wait(delay):
                return
            self._spawn()

    def stop(self) -> None:
        """Stop the supervisor, then the worker (SIGTERM; SIGQUIT after ``grace``; SIGKILL)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        process = self.process
        if process is None or process.poll() is not None:
            return
        # warm shutdown (the running job may finish), then cold (Celery gives the
        # unacknowledged job back to the queue), then SIGKILL (recovery resubmits it)
        for signum, wait in ((signal.SIGTERM, self.grace), (signal.SIGQUIT, 5.0)):
            process.send_signal(signum)
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
        process.kill()
        process.wait()
