"""The DICOMweb paragraph of the reading, stated from the measured numbers.

The causes named are how the hub's endpoints work (pacs_hub/dicomweb/) and what the
performance baseline measured; they are explanations to check, not measurements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.dicomweb import FRAME_CLIENTS, WebResults
from bench.find import QUERY_TYPES
from bench.stow import MODES

if TYPE_CHECKING:
    from bench.report import Results

TAIL = "the tail, not the typical query; other load on this shared machine shows there first"
CAUSES = {
    "QIDO": "QIDO-RS runs the C-FIND matching on SQLite and builds the JSON in Python in the "
    "hub's HTTP processes (uvicorn, one per core); include fields the index lacks cost one "
    "stored metadata record (zlib JSON) per match",
    "metadata": "series metadata is expanded from what ingest stored (no file is read), so its "
    "cost is Python JSON work per instance",
    "WADO-RS": "the hub streams each file in 1 MiB reads through Starlette's StreamingResponse "
    "(a thread-pool hop and Python copies per chunk; the baseline measured 406 MB/s for "
    "Python read+write against 2,638 MB/s with sendfile), Orthanc writes from C++",
    "frames": "every frame request is Python work under the GIL of one of the hub's HTTP "
    "processes (one per core; the first request for a file in a process parses its header "
    f"with pydicom, later ones reuse the cached pixel layout), so {FRAME_CLIENTS} requests in "
    "flight share about one core per process, while Orthanc serves them from C++ threads",
    "STOW-RS": "each part is read into memory (up to 16 MiB of parts a request, the rest "
    "spooled to temp files; the body handed to a worker thread a MiB at a time, hashed as it "
    "comes), then stored through the C-STORE ingest (header parse, JSON metadata): a "
    "request's only part with one pwrite and data sync of a pack file and one SQLite commit "
    "(concurrent requests in one process share their data syncs), the parts of a larger "
    "request with one data sync and one index transaction for them all; the requests are "
    "served by the hub's HTTP processes (one per core). Measured on 2026-11-30 (1 "
    "instance/request, 4 clients, 2 HTTP processes): the hub used 3.2-3.7 ms of CPU per 525 "
    "KB instance (Orthanc ~3.9 ms), the client ~1 ms; a request of one instance also waits "
    "for its pack's data sync and its index commit (0.2-0.5 ms each on this disk) in turn",
}


def _shortfalls(hub: WebResults, orth: WebResults) -> list[tuple[str, str]]:
    """(area, figures) for every DICOMweb figure where the hub is behind Orthanc."""
    out = []
    slow = [
        f"{k} p95 {hub.qido[k].p95_ms:.1f} vs {orth.qido[k].p95_ms:.1f} ms"
        for k in QUERY_TYPES
        if k in hub.qido and k in orth.qido and hub.qido[k].samples and orth.qido[k].samples
        if hub.qido[k].p95_ms > orth.qido[k].p95_ms
    ]
    if slow:
        tail = all(
            hub.qido[k].p50_ms <= orth.qido[k].p50_ms
            for k in QUERY_TYPES
            if k in hub.qido and k in orth.qido and hub.qido[k].samples and orth.qido[k].samples
        )
        note = f" (p50 at or below Orthanc's for every type: {TAIL})"
        out.append(("QIDO", "QIDO-RS " + ", ".join(slow) + (note if tail else "")))
    h, o = hub.metadata, orth.metadata
    if h and o and h.samples and o.samples and h.p95_ms > o.p95_ms:
        out.append(("metadata", f"series metadata p95 {h.p95_ms:.0f} vs {o.p95_ms:.0f} ms"))
    r, ro = hub.retrieve, orth.retrieve
    if r and ro and r.mb_s < ro.mb_s:
        out.append(("WADO-RS", f"WADO-RS series {r.mb_s:.0f} vs {ro.mb_s:.0f} MB/s"))
    f, fo = hub.frames, orth.frames
    if f and fo and f.per_s < fo.per_s:
        out.append(("frames", f"frames {f.per_s:.0f} vs {fo.per_s:.0f}/s"))
    f, fo = hub.frames_browser, orth.frames_browser
    if f and fo and f.per_s < fo.per_s:
        out.append(("frames", f"frames with gzip accepted {f.per_s:.0f} vs {fo.per_s:.0f}/s"))
    stow = [
        f"{m.label} {hs.per_s:.0f} vs {os_.per_s:.0f} inst/s ({hs.per_s / os_.per_s:.0%})"
        for m in MODES
        for hs, os_ in [(hub.stow.get(m.label), orth.stow.get(m.label))]
        if hs and os_ and hs.per_s < os_.per_s
    ]
    if stow:
        out.append(("STOW-RS", "STOW-RS " + ", ".join(stow)))
    return out


def _client_note(hub: WebResults, orth: WebResults) -> str:
    r, ro = hub.retrieve, orth.retrieve
    if r and ro and 0.9 <= r.mb_s / ro.mb_s <= 1.1:
        return (
            f" WADO-RS series retrieve is close for both ({r.mb_s:.0f} vs {ro.mb_s:.0f} MB/s): "
            "the Python client reading on the same 2 cores is probably the limit there, not "
            "either server."
        )
    return ""


def _gzip_note(orth: WebResults) -> str:
    plain, gzip = orth.frames, orth.frames_browser
    if not plain or not gzip or gzip.per_s >= 0.8 * plain.per_s:
        return ""
    return (
        f" Orthanc gzips every frame when the client accepts it, as a browser does: "
        f"{plain.per_s:.0f} frames/s without, {gzip.per_s:.0f} with (fewer bytes on a slow "
        "network, CPU on this one); the hub never compresses DICOMweb answers."
    )


def web_paragraph(res: Results) -> str | None:
    hub, orth = res.dicomweb.get("hub"), res.dicomweb.get("orthanc")
    if not hub or not orth:
        return None
    failed = [f"{t}: {e}" for t, w in res.dicomweb.items() for e in w.errors]
    broken = f" Errors kept some figures out: {'; '.join(failed[:3])}." if failed else ""
    short = _shortfalls(hub, orth)
    if not short:
        return (
            "**DICOMweb**: the hub matches or beats Orthanc (with its DICOMweb plugin) on "
            "every figure measured." + _client_note(hub, orth) + _gzip_note(orth) + broken
        )
    areas = dict.fromkeys(area for area, figures in short if TAIL not in figures)
    reasons = "; ".join(f"{area}: {CAUSES[area]}" for area in areas)
    return (
        "**DICOMweb**: the hub falls short of Orthanc on "
        + "; ".join(figures for _, figures in short)
        + (f". Why, as far as the code shows: {reasons}." if reasons else ".")
        + _client_note(hub, orth)
        + _gzip_note(orth)
        + broken
    )
