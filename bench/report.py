"""bench/RESULTS.md: machine, method, one table per section, targets and a reading."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from bench.dicomweb import WebResults
from bench.federation import FedResults
from bench.federation_report import fed_checks, fed_method, fed_section, fed_summary
from bench.find import QUERY_TYPES, Latency
from bench.fmt import NA, latency_table, le_p95
from bench.fmt import fmt as _fmt
from bench.fmt import ratio as _ratio
from bench.ingest import Summary
from bench.move import MoveSummary
from bench.procs import command_output
from bench.web_report import web_checks, web_method, web_section

PYTHON_PACKAGES = ("pydicom", "pynetdicom", "numpy")


@dataclass
class IndexBuild:
    """Sending the C-FIND index corpus with 4 associations."""

    instances: int
    seconds: float
    stored: int

    @property
    def inst_s(self) -> float:
        return self.instances / self.seconds


@dataclass
class Results:
    """Everything one bench run measured."""

    config: dict[str, object]
    started: datetime
    finished: datetime | None = None
    hub_processes: int = 0
    orthanc_launcher: str = ""
    dd: tuple[float, float, float] | None = None
    dd_mib: int = 0
    datasets: dict[str, tuple[int, float]] = field(default_factory=dict)  # name: count, mean B
    ingest: dict[tuple[str, str, int], Summary | None] = field(default_factory=dict)
    ingest_failures: list[str] = field(default_factory=list)
    index: dict[str, IndexBuild] = field(default_factory=dict)
    find: dict[str, dict[str, Latency]] = field(default_factory=dict)
    move: dict[tuple[str, str], MoveSummary | None] = field(default_factory=dict)
    move_errors: dict[str, str] = field(default_factory=dict)
    move_instances: int = 0
    dicomweb: dict[str, WebResults] = field(default_factory=dict)
    web_series: int = 0
    web_index: dict[str, int] = field(default_factory=dict)
    federation: FedResults | None = None
    notes: list[str] = field(default_factory=list)


def _meminfo_gib() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "?"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _os_name() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "?"


def _deb(package: str) -> str:
    return command_output(["dpkg-query", "-W", "-f=${Version}", package])


def _git_commit() -> str:
    commit = command_output(["git", "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "pacs_hub"], capture_output=True, text=True
    ).stdout.strip()
    return commit + (" (+ uncommitted changes in pacs_hub/)" if dirty else "")


def machine_section(res: Results) -> list[str]:
    rows = [
        ("nproc", str(os.cpu_count())),
        ("CPU", _cpu_model()),
        ("memory", _meminfo_gib()),
        ("OS / kernel", f"{_os_name()} / {platform.release()}"),
        ("Python", platform.python_version()),
        ("Orthanc (Debian)", f"{_deb('orthanc')}, default SQLite index"),
        ("Orthanc DICOMweb plugin (Debian)", f"{_deb('orthanc-dicomweb')}, default settings"),
        ("dcmtk (Debian)", _deb("dcmtk")),
        (
            "pydicom / pynetdicom / numpy",
            " / ".join(map(version, ("pydicom", "pynetdicom", "numpy"))),
        ),
        ("PACS Hub", f"{version('pacs-hub')}, commit {_git_commit()}"),
        ("hub gateway processes", f"{res.hub_processes} (PACS_HUB_GATEWAY_PROCESSES)"),
        ("Orthanc launcher", res.orthanc_launcher),
    ]
    lines = ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return [*lines, ""]


def method_section(res: Results) -> list[str]:
    cfg = res.config
    data = "; ".join(
        f"`{name}` {count} files, {mean / 1000:.1f} KB each"
        for name, (count, mean) in res.datasets.items()
    )
    return [
        "## Method",
        "",
        f"Run {res.started:%Y-%m-%d %H:%M} to {res.finished or res.started:%H:%M} UTC with "
        f"`{cfg['command']}`. Everything runs on loopback on this machine, one server at a time "
        "(hub and Orthanc never run together). `TCP_NODELAY=1` is set for every dcmtk tool and "
        "for Orthanc; the hub sets TCP_NODELAY on its own sockets. Every server started "
        "(hub or Orthanc) is timed only once its processes are idle (under 5 % of a core "
        "over half a second): answering its port or health check is not the end of its "
        "start-up (the hub's gateway processes and job worker still importing).",
        "",
        f"* **Data** (deterministic, generated with pydicom + numpy into `bench/out/data/`): "
        f"CT Image Storage, Explicit VR Little Endian, 16-bit (12 stored), thorax phantom + noise. "
        f"{data}.",
        "* **Ingest**: each run starts the target fresh on an empty folder, `sync`s, then P dcmtk "
        "`storescu` processes (one association each, `+sd +r` over disjoint folders) send the "
        "whole dataset. Timed window: first storescu start to last exit. The instance count in "
        "the target is checked afterwards (hub: its SQLite index; Orthanc: `/statistics`; "
        "storescp: files). Runs interleaved rep > dataset > target > P; "
        f"{cfg['reps']} rep(s), median (min-max) of inst/s. MB/s = inst/s x mean file size. "
        "Server CPU = user+sys of the server processes (hub: main + gateway processes) over "
        "the timed window. Both servers use their default max PDU (hub 256 KiB, Orthanc 16 KiB), "
        "storescu its default.",
        "* **C-FIND index**: a fresh target receives the `idx` corpus (single-instance studies, "
        "2 per patient) with 4 parallel storescu (timed), then `ct512` (untimed).",
        f"* **C-FIND**: one dcmtk `findscu` process per query (process start, association, "
        f"query, all responses, release), Study Root; {cfg['queries']} timed queries per type "
        "after 3 warm-ups, same seeded queries for both. Study level returns 14 keys "
        "(incl. ModalitiesInStudy, NumberOfStudyRelated*), series level 5.",
        f"* **C-MOVE**: study 1 of `ct512` ({res.move_instances} instances) moved with dcmtk "
        "`movescu` to a dcmtk `storescp` (`+B` writing files, and `--ignore` discarding them), "
        f"registered as move destination in both; {cfg['move_reps']} rep(s) per mode, median. "
        "Timed window: the movescu process.",
        *web_method(res),
        *fed_method(res),
        "* **Ceilings**: dcmtk `storescp +B` (C++ receive and write, no index) in the ingest "
        f"matrix; `dd` {res.dd_mib} MiB `bs=1M conv=fdatasync`.",
        "",
    ]


def _rate(s: Summary | MoveSummary | None) -> float | None:
    return s.inst_s if s else None


def _cell(s: Summary | None) -> str:
    if s is None:
        return "failed"
    return f"{_fmt(s.inst_s)} ({_fmt(s.inst_min)}-{_fmt(s.inst_max)})"


def ingest_section(res: Results) -> list[str]:
    lines = [
        "## 1. Ingest (C-STORE from dcmtk storescu)",
        "",
        "| dataset | assoc. | hub inst/s | hub MB/s | Orthanc inst/s | Orthanc MB/s "
        "| **hub/Orthanc** | storescp +B inst/s | hub CPU ms/inst | Orthanc CPU ms/inst |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(d, p) for d, _, p in res.ingest}, key=lambda k: (k[0] != "ct512", k[1]))
    for dataset, p in keys:
        hub = res.ingest.get((dataset, "hub", p))
        orth = res.ingest.get((dataset, "orthanc", p))
        scp = res.ingest.get((dataset, "storescp", p))
        lines.append(
            f"| {dataset} | {p} | {_cell(hub)} | {_fmt(hub.mb_s, 1) if hub else '-'} "
            f"| {_cell(orth)} | {_fmt(orth.mb_s, 1) if orth else '-'} "
            f"| **{_ratio(_rate(hub), _rate(orth))}** | {_cell(scp)} "
            f"| {_fmt(hub.cpu_ms_per_inst, 2) if hub else '-'} "
            f"| {_fmt(orth.cpu_ms_per_inst, 2) if orth else '-'} |"
        )
    if res.ingest_failures:
        lines += ["", "Failed runs (excluded from medians): " + "; ".join(res.ingest_failures)]
    return [*lines, ""]


def index_section(res: Results) -> list[str]:
    lines = [
        "## 2. C-FIND index build (idx corpus, 4 associations)",
        "",
        "| target | instances stored | seconds | inst/s |",
        "|---|---|---|---|",
    ]
    for name, build in res.index.items():
        lines.append(f"| {name} | {build.stored:,} | {build.seconds:.0f} | {_fmt(build.inst_s)} |")
    hub, orth = res.index.get("hub"), res.index.get("orthanc")
    if hub and orth:
        lines += ["", f"hub/Orthanc index build rate: **{_ratio(hub.inst_s, orth.inst_s)}**"]
    return [*lines, ""]


def find_section(res: Results) -> list[str]:
    total = {name: build.stored for name, build in res.index.items()}
    lines = [
        "## 3. C-FIND latency (findscu, ms)",
        "",
        "Index size (instances): " + ", ".join(f"{k} {v:,}" for k, v in total.items()) + ".",
        "",
    ]
    lines += latency_table(res.find.get("hub", {}), res.find.get("orthanc", {}))
    failed = [f"{t} {k}: {v.failed}" for t, d in res.find.items() for k, v in d.items() if v.failed]
    if failed:
        lines += ["", "Failed queries (excluded): " + "; ".join(failed)]
    return [*lines, ""]


def move_section(res: Results) -> list[str]:
    lines = [
        f"## 4. C-MOVE egress ({res.move_instances}-instance 512x512 study to dcmtk storescp)",
        "",
        "| storescp mode | hub inst/s | hub MB/s | Orthanc inst/s | Orthanc MB/s "
        "| **hub/Orthanc** |",
        "|---|---|---|---|---|---|",
    ]
    for mode, label in (("files", "`+B` (writes files)"), ("ignore", "`--ignore` (discards)")):
        h, o = res.move.get(("hub", mode)), res.move.get(("orthanc", mode))
        lines.append(
            f"| {label} | {_move_cell(h, res, 'hub')} | {_fmt(h.mb_s) if h else '-'} "
            f"| {_move_cell(o, res, 'orthanc')} | {_fmt(o.mb_s) if o else '-'} "
            f"| **{_ratio(_rate(h), _rate(o))}** |"
        )
    errors = [f"{k}: {v}" for k, v in res.move_errors.items()]
    if errors:
        lines += ["", "Move errors: " + "; ".join(f"`{e}`" for e in errors)]
    return [*lines, ""]


def _move_cell(s: MoveSummary | None, res: Results, name: str) -> str:
    if s is None:
        return NA if name in res.move_errors else "-"
    return f"{_fmt(s.inst_s)} ({_fmt(s.inst_min)}-{_fmt(s.inst_max)})"


def ceilings_section(res: Results) -> list[str]:
    lines = ["## 7. Machine ceilings", ""]
    if res.dd:
        med, lo, hi = res.dd
        lines.append(
            f"* Disk: `dd` {res.dd_mib} MiB `conv=fdatasync`: **{med:.0f} MB/s** "
            f"({lo:.0f}-{hi:.0f})."
        )
    for dataset in ("ct512", "ct64"):
        cells = [
            f"P={p}: {_fmt(s.inst_s)} inst/s ({_fmt(s.mb_s, 1)} MB/s)"
            for (d, t, p), s in sorted(res.ingest.items())
            if d == dataset and t == "storescp" and s
        ]
        if cells:
            lines.append(f"* dcmtk storescp `+B` to disk, {dataset}: " + "; ".join(cells) + ".")
    return [*lines, ""]


def targets_section(res: Results) -> list[str]:
    checks = []
    for p in (2, 4):
        for dataset in ("ct512", "ct64"):
            h = res.ingest.get((dataset, "hub", p))
            o = res.ingest.get((dataset, "orthanc", p))
            checks.append((f"ingest {dataset} P={p}: hub >= Orthanc", _ge(h, o)))
    hub, orth = res.find.get("hub", {}), res.find.get("orthanc", {})
    for kind in QUERY_TYPES:
        checks.append((f"C-FIND p95 {kind}: hub <= Orthanc", le_p95(hub.get(kind), orth.get(kind))))
    for mode in ("files", "ignore"):
        checks.append(
            (
                f"C-MOVE ({mode}): hub >= Orthanc",
                _ge(res.move.get(("hub", mode)), res.move.get(("orthanc", mode))),
            )
        )
    checks += web_checks(res)
    checks += fed_checks(res)
    lines = ["## Targets (reported, not asserted)", "", "| target | met |", "|---|---|"]
    word = {True: "yes", False: "**no**", None: NA}
    lines += [f"| {name} | {word[ok]} |" for name, ok in checks]
    return [*lines, ""]


def _ge(a: Summary | MoveSummary | None, b: Summary | MoveSummary | None) -> bool | None:
    if a is None or b is None:
        return None
    return a.inst_s >= b.inst_s


def render(res: Results, reading: Sequence[str]) -> str:
    lines = [
        "# PACS Hub vs Orthanc: benchmark results",
        "",
        "Written by `python -m bench.run` (`make bench`); do not edit by hand.",
        "",
    ]
    for section in (
        machine_section,
        method_section,
        targets_section,
        fed_summary,
        ingest_section,
        index_section,
        find_section,
        move_section,
        web_section,
        fed_section,
        ceilings_section,
    ):
        lines += section(res)
    lines += ["## Reading", "", *reading, ""]
    if res.notes:
        lines += ["## Notes", "", *[f"* {n}" for n in res.notes], ""]
    return "\n".join(lines)


def finished_now() -> datetime:
    return datetime.now(UTC)
