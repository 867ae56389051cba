"""Starting Orthanc for the benchmark: the project's Orthanc test peer, same config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.peers import OrthancPeer
from tests.peers import start_orthanc as start_peer


def start_orthanc(workdir: Path, **kwargs: Any) -> OrthancPeer:
    """Orthanc (Debian package, default SQLite index) on loopback, TCP_NODELAY on."""
    return start_peer(workdir, **kwargs)
