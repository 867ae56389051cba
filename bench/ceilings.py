"""Machine ceilings: sequential disk write with ``dd ... conv=fdatasync``."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

MB = 1_000_000


def dd_write_mb_s(path: Path, mib: int) -> float:
    """MB/s of writing ``mib`` MiB of zeros and fdatasync-ing them (file removed after)."""
    args = ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fdatasync"]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    path.unlink(missing_ok=True)
    return mib * 1024 * 1024 / seconds / MB


def disk_write(path: Path, mib: int, reps: int) -> tuple[float, float, float]:
    """Median, min and max MB/s over ``reps`` dd runs."""
    values = [dd_write_mb_s(path, mib) for _ in range(reps)]
    return statistics.median(values), min(values), max(values)
