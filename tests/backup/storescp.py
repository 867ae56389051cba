"""dcmtk's storescp on loopback, for the backup tests (a workstation, a plain PACS)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import dcmtk, free_port, wait_until


@contextmanager
def running_storescp(ae_title: str, outdir: Path) -> Iterator[int]:
    """storescp as ``ae_title`` writing into ``outdir``; yields its port, stops it after."""
    port = free_port()
    outdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [dcmtk("storescp"), "-aet", ae_title, "-od", str(outdir), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, what="storescp")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
