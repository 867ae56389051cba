"""The DICOMweb parts of RESULTS.md: its method paragraph, table and target lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.dicomweb import (
    BROWSER_ENCODING,
    FRAME_CLIENTS,
    RETRIEVE_REPS_FACTOR,
    Throughput,
    WebResults,
)
from bench.find import QUERY_TYPES, WARMUPS, Latency
from bench.fmt import fmt, latency_table, le_p95, p95_ratio, ratio
from bench.stow import MODES, STOW_CLIENTS

if TYPE_CHECKING:
    from bench.report import Results

Check = tuple[str, bool | None]


def web_method(res: Results) -> list[str]:
    if not res.dicomweb:
        return []
    cfg = res.config
    return [
        "* **DICOMweb**: after C-FIND and C-MOVE the same target is stopped and restarted on "
        "the folder it filled (Orthanc now with its DICOMweb plugin at `/dicom-web/`, plugin "
        "defaults), so QIDO-RS runs on the same index. Client: httpx on keep-alive "
        "connections, in the bench process (its CPU shares the 2 cores with the server), "
        "every request with `Accept-Encoding: identity` (the server's own work, no gzip on "
        "loopback) except the browser-like frames row. "
        f"**QIDO-RS**: the C-FIND section's seeded queries ({cfg['queries']} per type after "
        f"{WARMUPS} warm-ups, one at a time) as `GET /studies?...` with what OHIF 3.13 adds "
        "(`limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060,00080090,"
        "00100030`) and `GET /studies/{uid}/series?includefield=00080021,00080031,0008103E,"
        "00200011`, query strings unencoded as a browser sends `*` and `,` (Orthanc 1.10's "
        "plugin does not percent-decode query values); time to the last byte; an answer "
        "counts when it is 200 with a JSON array, non-empty except for the date range. "
        f"**Series metadata**: `GET .../series/{{uid}}/metadata` of `ct512` study 1 "
        f"({res.web_series} instances), 2 warm-ups then {max(3, int(str(cfg['queries'])) // 2)} "
        "timed; counts when the answer holds exactly the series' SOP Instance UIDs. "
        "**WADO-RS series**: the same series with Accept "
        '`multipart/related; type="application/dicom"; transfer-syntax=*` for both (Orthanc '
        "1.10.1 with plugin 1.7 accepts it and sends the stored Explicit VR LE files), read "
        "in 1 MiB chunks; counts when the body has one part per instance and its closing "
        f"delimiter; MB/s = body bytes / time. **Frames**: frame 1 of each of the "
        f"{res.web_series} instances, {FRAME_CLIENTS} requests in flight (OHIF's prefetch), "
        "Accept `multipart/related; type=application/octet-stream; transfer-syntax=*`; each "
        "answer must be one part of exactly 512x512x2 bytes; after one untimed pass (so "
        "both servers' caches are as warm as for a series being scrolled), frames/s = "
        "frames / (first "
        f"request to last answer); once more with `Accept-Encoding: {BROWSER_ENCODING}` as "
        "a browser running OHIF asks (it also lists br and zstd, which neither server "
        "offers): Orthanc then gzips each frame, the hub does not compress. "
        f"**STOW-RS**: `ct512` study 1 ({res.web_series} instances) "
        f"POSTed to `/studies` of a freshly started, empty target by {STOW_CLIENTS} "
        "concurrent clients, " + " and ".join(f"`{m.label}`" for m in MODES) + " (bodies "
        "built before the timed window: first request to last answer); every answer must be "
        "200 listing each instance sent in ReferencedSOPSequence and none in "
        "FailedSOPSequence, and the target must hold them all afterwards. Frames and "
        f"STOW-RS: {cfg['web_reps']} rep(s), series retrieve "
        f"{RETRIEVE_REPS_FACTOR * cfg['web_reps']} (each takes a fraction of a second, and "
        "a few reps spread widely on this machine); median (min-max).",
    ]


def _rate_cell(t: Throughput | None, unit: str) -> str:
    if t is None:
        return "failed"
    spread = f" ({fmt(t.per_s_min)}-{fmt(t.per_s_max)})" if t.runs > 1 else ""
    return f"{fmt(t.per_s)}{spread} {unit}, {fmt(t.mb_s)} MB/s"


def _lat_pair(lat: Latency | None) -> str:
    if lat is None or not lat.samples:
        return "failed"
    return f"{fmt(lat.p50_ms, 1)} / {fmt(lat.p95_ms, 1)}"


def _per_s(t: Throughput | None) -> float | None:
    return t.per_s if t else None


def _mb_s(t: Throughput | None) -> float | None:
    return t.mb_s if t else None


def _rows(hub: WebResults, orth: WebResults, instances: int) -> list[str]:
    rows = [
        (
            f"series metadata ({instances} instances), p50 / p95 ms",
            _lat_pair(hub.metadata),
            _lat_pair(orth.metadata),
            p95_ratio(hub.metadata, orth.metadata) + " (p95)",
            "<= 1",
        ),
        (
            "WADO-RS series retrieve",
            _rate_cell(hub.retrieve, "inst/s"),
            _rate_cell(orth.retrieve, "inst/s"),
            ratio(_mb_s(hub.retrieve), _mb_s(orth.retrieve)) + " (MB/s)",
            ">= 1",
        ),
        (
            f"frames, {FRAME_CLIENTS} concurrent",
            _rate_cell(hub.frames, "frames/s"),
            _rate_cell(orth.frames, "frames/s"),
            ratio(_per_s(hub.frames), _per_s(orth.frames)),
            ">= 1",
        ),
        (
            f"frames, {FRAME_CLIENTS} concurrent, browser-like `Accept-Encoding: "
            f"{BROWSER_ENCODING}`",
            _rate_cell(hub.frames_browser, "frames/s"),
            _rate_cell(orth.frames_browser, "frames/s"),
            ratio(_per_s(hub.frames_browser), _per_s(orth.frames_browser)),
            ">= 1",
        ),
    ]
    for mode in MODES:
        h, o = hub.stow.get(mode.label), orth.stow.get(mode.label)
        rows.append(
            (
                f"STOW-RS, {mode.label}",
                _rate_cell(h, "inst/s"),
                _rate_cell(o, "inst/s"),
                ratio(_per_s(h), _per_s(o)),
                ">= 1",
            )
        )
    return [f"| {a} | {b} | {c} | **{d}** | {e} |" for a, b, c, d, e in rows]


def _failures(res: Results) -> list[str]:
    failed = [
        f"{t} QIDO {k}: {v.failed}"
        for t, web in res.dicomweb.items()
        for k, v in web.qido.items()
        if v.failed
    ]
    failed += [
        f"{t} metadata: {web.metadata.failed}"
        for t, web in res.dicomweb.items()
        if web.metadata and web.metadata.failed
    ]
    lines = ["", "Failed answers (excluded): " + "; ".join(failed)] if failed else []
    errors = [f"{t}: {e}" for t, web in res.dicomweb.items() for e in web.errors]
    if errors:
        lines += ["", "Errors: " + "; ".join(f"`{e}`" for e in errors[:12])]
    return lines


def web_section(res: Results) -> list[str]:
    if not res.dicomweb:
        return []
    hub = res.dicomweb.get("hub", WebResults())
    orth = res.dicomweb.get("orthanc", WebResults())
    index = ", ".join(f"{k} {v:,}" for k, v in res.web_index.items())
    return [
        "## 5. DICOMweb (QIDO-RS, WADO-RS, STOW-RS; httpx client)",
        "",
        f"QIDO-RS latency (ms); index size (instances): {index}.",
        "",
        *latency_table(hub.qido, orth.qido),
        "",
        "| measure | hub | Orthanc | **hub/Orthanc** | goal |",
        "|---|---|---|---|---|",
        *_rows(hub, orth, res.web_series),
        *_failures(res),
        "",
    ]


def _ge(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a >= b


def web_checks(res: Results) -> list[Check]:
    if not res.dicomweb:
        return []
    hub = res.dicomweb.get("hub", WebResults())
    orth = res.dicomweb.get("orthanc", WebResults())
    checks: list[Check] = [
        (f"QIDO p95 {kind}: hub <= Orthanc", le_p95(hub.qido.get(kind), orth.qido.get(kind)))
        for kind in QUERY_TYPES
    ]
    checks += [
        ("series metadata p95: hub <= Orthanc", le_p95(hub.metadata, orth.metadata)),
        ("WADO-RS series MB/s: hub >= Orthanc", _ge(_mb_s(hub.retrieve), _mb_s(orth.retrieve))),
        (
            f"frames/s ({FRAME_CLIENTS} concurrent): hub >= Orthanc",
            _ge(_per_s(hub.frames), _per_s(orth.frames)),
        ),
        (
            f"frames/s ({FRAME_CLIENTS} concurrent, gzip accepted): hub >= Orthanc",
            _ge(_per_s(hub.frames_browser), _per_s(orth.frames_browser)),
        ),
    ]
    for mode in MODES:
        h, o = hub.stow.get(mode.label), orth.stow.get(mode.label)
        checks.append((f"STOW-RS {mode.label}: hub >= Orthanc", _ge(_per_s(h), _per_s(o))))
    return checks
