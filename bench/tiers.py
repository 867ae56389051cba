"""Storage tiers side by side with Orthanc's storage compression.

The hub keeps a study compressed in its cold tier (Zstandard, :mod:`pacs_hub.storage.
cold`) once moved there; Orthanc compresses every attachment with zlib at reception when
``StorageCompression`` is true (its only compressed storage). Both are sent study 1 of
``ct512`` (500 instances) by dcmtk storescu, untimed. Then:

* **footprint**: the bytes the study takes on disk, in the hub's cold packs
  (allocated blocks, after the move) and in Orthanc's storage folder (its attachments;
  its SQLite index left out for both);
* **move to cold** (hub only): ``tiers.move_study`` beside the running hub, what
  ``pacs-hub archive tier move --study`` runs: read, check the SHA-256, compress,
  write and sync, re-point the rows;
* **C-MOVE from compressed storage** to a dcmtk ``storescp +B``: the hub from its cold
  tier with its cache emptied before each rep (every instance decompressed, as for a
  study first opened in years), then once more with the cache filled by that send
  (the study being read again); Orthanc decompressing every instance each time.
  :data:`REPS` reps, median. Before the move, the same C-MOVE from the hub's hot tier
  gives the baseline.

The real CT of the test data (``volumes/ct_philips_ingenuity_head_phantom_axial_5mm``)
is compressed too, in process, for the ratio on real images (the generated phantom's
noise compresses less). It reports; it asserts nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import data, move
from bench.procs import run_parallel, storescu, sync
from bench.targets import Destination, HubTarget, OrthancTarget, Target

REPS = 3
MB = 1_000_000
REAL_CT = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "dicom"
    / "volumes"
    / "ct_philips_ingenuity_head_phantom_axial_5mm"
)


def _allocated(folder: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.glob(pattern) if p.is_file())


def _moves(target: Target, dest: Destination, uid: str, expected: int, work: Path,
           before: Callable[[], None] | None = None) -> list[float]:  # fmt: skip
    rates = []
    for _ in range(REPS):
        if before is not None:
            before()
        run = move.move_once(target, dest, uid, expected, work, "files")
        rates.append(run.received / run.seconds if run.ok else 0.0)
    return rates


def real_ct_ratio() -> tuple[int, float, float] | None:
    """(slices, zstd ratio as the cold tier writes, zlib ratio as Orthanc's) of the test
    data's real CT, or None without it."""
    import zlib

    from pacs_hub.storage.blobs import BlobStore

    files = [p for p in sorted(REAL_CT.rglob("*")) if p.is_file()]
    slices = [d for d in (p.read_bytes() for p in files) if d[128:132] == b"DICM"]
    if not slices:
        return None
    with tempfile.TemporaryDirectory() as folder:
        store = BlobStore(Path(folder))
        store.put_cold([(d, hashlib.sha256(d).hexdigest()) for d in slices])
        stored = _allocated(store.blobs / "cold", "*.zpack")
        raw = sum(map(len, slices))
        packed = sum(len(zlib.compress(d)) for d in slices)
    return len(slices), raw / stored, raw / packed


def run_tiers(
    out: Path, corpus: data.Corpus, hub_processes: int, log: Callable[[str], None]
) -> list[str]:
    """The section's markdown lines."""
    from pacs_hub.archive import tiers
    from pacs_hub.storage import cold
    from pacs_hub.storage.blobs import BlobStore
    from pacs_hub.storage.database import Database

    work = out / "work" / "tiers"
    shutil.rmtree(work, ignore_errors=True)
    dest = move.destination()
    uid = data.study_uid(corpus.name, 0)
    expected = corpus.count // 2
    first = [p for p in sorted(corpus.root.rglob("*.dcm")) if int(p.stem) < expected]
    size = float(sum(p.stat().st_size for p in first))
    hub = HubTarget(work / "hub", processes=hub_processes)
    orthanc = OrthancTarget(work / "orthanc", extra={"StorageCompression": True})
    result: dict[str, object] = {}
    error = ""
    try:
        hub.start([dest])
        run_parallel([storescu(hub.ae_title, hub.dicom_port, first)])
        sync()
        result["hot"] = statistics.median(_moves(hub, dest, uid, expected, work / "scp"))
        database = Database(f"sqlite:///{hub.data_dir / 'index.sqlite3'}", run_migrations=False)
        store = BlobStore(hub.data_dir)
        try:
            start = time.perf_counter()
            moved = tiers.move_study(database, store, uid)
            result["move_s"] = time.perf_counter() - start
            tiers.free_garbage(database, store, grace=0)
        finally:
            database.dispose()
        result["moved"] = moved.instances
        sync()
        result["hub_disk"] = _allocated(hub.data_dir / "blobs" / "cold", "*.zpack")
        log(f"tiers: moved {moved.instances} in {result['move_s']:.2f} s")

        def empty_cache() -> None:
            cold.clear_cache(store.blobs)

        emptied = _moves(hub, dest, uid, expected, work / "scp", empty_cache)
        result["cold"] = statistics.median(emptied)
        result["cached"] = statistics.median(_moves(hub, dest, uid, expected, work / "scp"))
        hub.stop()
        orthanc.start([dest])
        run_parallel([storescu(orthanc.ae_title, orthanc.dicom_port, first)])
        sync()
        attachments = "[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"  # its index lies beside them
        result["orthanc_disk"] = _allocated(orthanc.workdir / "storage", attachments)
        result["orthanc"] = statistics.median(_moves(orthanc, dest, uid, expected, work / "scp"))
        log(f"tiers: hub cold {result['cold']:.0f} inst/s, Orthanc {result['orthanc']:.0f}")
    except Exception as exc:  # this section lost, not the whole run's results
        log(f"tiers: failed: {exc!r}")
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        hub.stop()
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines = render(result, expected, size, real_ct_ratio()) if not error else []
    return lines + (["", f"Storage tiers section failed: {error}"] if error else [])


def render(
    result: dict[str, object],
    instances: int,
    size: float,
    real: tuple[int, float, float] | None,
) -> list[str]:
    def number(key: str) -> float:
        value = result[key]
        assert isinstance(value, (int, float))
        return float(value)

    mean = size / instances
    hub_disk, orthanc_disk = number("hub_disk"), number("orthanc_disk")
    rows = [
        ("hub, hot tier (as received)", number("hot"), "baseline"),
        ("hub, cold tier, cache emptied (each instance decompressed)", number("cold"), ""),
        ("hub, cold tier, read again (cached copies)", number("cached"), ""),
        ("Orthanc, `StorageCompression` (zlib, decompressed each time)", number("orthanc"), ""),
    ]
    lines = [
        "",
        "## Storage tiers (lossless compression) vs Orthanc's StorageCompression",
        "",
        f"Study 1 of `ct512` ({instances} instances, {size / MB:.0f} MB), sent by storescu to a"
        " hub, then moved to its cold tier (`tiers.move_study`, what `pacs-hub archive tier"
        " move` runs), and to an Orthanc with `StorageCompression: true`; C-MOVE to"
        f" storescp `+B`, {REPS} reps, median.",
        "",
        "| measure | hub | Orthanc | **hub/Orthanc** |",
        "|---|---|---|---|",
        f"| bytes on disk (MB), compression ratio | {hub_disk / MB:.1f} ({size / hub_disk:.2f}x)"
        f" | {orthanc_disk / MB:.1f} ({size / orthanc_disk:.2f}x) |"
        f" **{hub_disk / orthanc_disk:.2f}** (lower is better) |",
        f"| move to the cold tier | {number('move_s'):.2f} s,"
        f" {number('moved') / number('move_s'):.0f} inst/s, {size / MB / number('move_s'):.0f}"
        " MB/s | compresses at reception | |",
        f"| C-MOVE from compressed storage, first read (inst/s) | {number('cold'):.0f} |"
        f" {number('orthanc'):.0f} | **{number('cold') / number('orthanc'):.2f}** |",
        "",
        "| C-MOVE to storescp `+B` | inst/s | MB/s |",
        "|---|---|---|",
    ]
    for name, rate, _note in rows:
        lines.append(f"| {name} | {rate:.0f} | {rate * mean / MB:.0f} |")
    if real is not None:
        count, zstd, zlib_ratio = real
        lines += [
            "",
            f"Real CT of the test data ({count} slices, Philips Ingenuity head phantom):"
            f" cold tier {zstd:.2f}x, zlib (as Orthanc's StorageCompression) {zlib_ratio:.2f}x.",
        ]
    return lines
