"""Process set-up of the hub (pacs_hub.service) that no network test can see."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys

from pacs_hub.service import freeze_startup_heap


def test_startup_objects_leave_the_collectors_full_passes() -> None:
    before = gc.get_freeze_count()
    kept = [[index] for index in range(1000)]  # tracked containers, like start-up's
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()


STOP_WAITER = """
import sys, time
from pacs_hub.service import _StopSignals
stop = _StopSignals()
print("ready", flush=True)
start = time.monotonic()
while not stop.wait(30.0):
    pass
print(f"stopped {stop.received} after {time.monotonic() - start:.2f}", flush=True)
"""


def test_a_gateway_stops_at_once_on_a_burst_of_stop_signals() -> None:
    """The wait wakes on a signal (its handler takes no lock: a second signal during the
    first handler deadlocked a gateway on threading.Event's lock, seen in a kill test)."""
    process = subprocess.Popen(
        [sys.executable, "-c", STOP_WAITER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            os.kill(process.pid, signum)
        assert process.wait(10) == 0
        words = process.stdout.read().split()
    finally:
        process.kill()
    assert words[0] == "stopped" and float(words[-1]) < 5.0  # not the 30 s timeout
    assert str(int(signal.SIGTERM)) in " ".join(words)
