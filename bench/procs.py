"""dcmtk processes (by absolute path), timing helpers and small system probes."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DCMTK = Path("/usr/bin")  # never pynetdicom's look-alike console scripts on PATH
BENCH_AE = "BENCH"
LOOPBACK = "127.0.0.1"


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk binary."""
    path = DCMTK / tool
    if not path.exists():
        raise RuntimeError(f"dcmtk's {tool} is missing (apt-get install dcmtk)")
    return str(path)


def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools and Orthanc: Nagle off (else ~40 ms per message)."""
    return {**os.environ, "TCP_NODELAY": "1"}


_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port free on loopback right now, never one this process was given before
    (the kernel may hand a just-closed port out again: two servers would collide)."""
    while True:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; raise at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_quiet(pids: Sequence[int], timeout: float = 60.0, busy: float = 0.05) -> None:
    """Wait until the processes use under ``busy`` of a core over half a second.

    A server answers its port or health check before it has finished starting (the
    hub's gateway processes and job worker import their modules, Orthanc opens its
    index); its start-up must not be timed as, or compete with, the work measured.
    """
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pids)
        if now - last < busy * 0.5:
            return
        last = now


def sync() -> None:
    """Flush dirty pages outside the timed windows."""
    subprocess.run(["sync"], check=True)


@dataclass(frozen=True, slots=True)
class Timed:
    """Wall time of a timed window and whether every process in it succeeded."""

    seconds: float
    ok: bool
    detail: str = ""


def run_parallel(commands: Sequence[Sequence[str]], timeout: float = 3600) -> Timed:
    """Start every command at once; time from first start to last exit."""
    env = dcmtk_env()
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for cmd in commands
    ]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            errors.append(f"rc={proc.returncode}: {err.strip()[-300:]}")
    seconds = time.perf_counter() - start
    return Timed(seconds, not errors, "; ".join(errors))


def storescu(ae_title: str, port: int, paths: Sequence[Path]) -> list[str]:
    """One association sending every file under ``paths`` (scanned recursively)."""
    return [
        dcmtk("storescu"),
        "-aet",
        BENCH_AE,
        "-aec",
        ae_title,
        "+sd",
        "+r",
        LOOPBACK,
        str(port),
        *map(str, paths),
    ]


class StoreScp:
    """A dcmtk storescp on loopback: writes files (``+B``) or discards them (``--ignore``)."""

    def __init__(
        self, workdir: Path, ae_title: str, *, ignore: bool = False, port: int = 0
    ) -> None:
        self.files = workdir / "files"
        self.log = workdir / "storescp.log"
        self.ae_title = ae_title
        self.port = port or free_port()
        self.files.mkdir(parents=True, exist_ok=True)
        mode = ["--ignore", "-v"] if ignore else ["+B", "-od", str(self.files)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [dcmtk("storescp"), "-aet", ae_title, *mode, str(self.port)],
                env=dcmtk_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: port_open(self.port), 10, "storescp")

    @property
    def pid(self) -> int:
        return self.process.pid

    def count(self) -> int:
        """Files written (``+B`` mode)."""
        return sum(1 for p in self.files.iterdir() if p.is_file())

    def received(self) -> int:
        """C-STORE requests logged (``--ignore`` mode, which runs with ``-v``)."""
        return self.log.read_text(errors="replace").count("Received Store Request")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def command_output(args: Sequence[str]) -> str:
    """First line of a command's output, or '?' when it fails."""
    try:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of the given processes (all threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick
