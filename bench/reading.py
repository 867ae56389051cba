"""The "Reading" paragraphs of RESULTS.md, stated from the measured numbers.

The causes named here come from the project's performance baseline
(``shared/reference/perf-baseline.md``: profiles of a pynetdicom SCP on this
machine); they are explanations to check, not measurements of this run.
"""

from __future__ import annotations

from bench.federation_reading import fed_paragraph
from bench.find import QUERY_TYPES
from bench.report import Results
from bench.web_reading import web_paragraph


def _ingest_paragraph(res: Results) -> str | None:
    if not res.ingest:
        return None
    short = []
    for (dataset, kind, p), hub in sorted(res.ingest.items()):
        orth = res.ingest.get((dataset, "orthanc", p))
        if kind == "hub" and hub and orth and hub.inst_s < orth.inst_s:
            short.append(f"{dataset} P={p} {hub.inst_s / orth.inst_s:.0%}")
    if not short:
        return "**Ingest**: the hub matches or beats Orthanc in every cell measured."
    cpu = [
        (d, hub.cpu_ms_per_inst, orth.cpu_ms_per_inst)
        for (d, k, p), hub in res.ingest.items()
        if k == "hub" and p == 4 and hub
        for orth in [res.ingest.get((d, "orthanc", 4))]
        if orth
    ]
    cpu_text = "; ".join(f"{d}: {h:.1f} vs {o:.1f} ms" for d, h, o in cpu)
    return (
        "**Ingest**: the hub falls short of Orthanc where it reaches "
        + ", ".join(short)
        + " of Orthanc's rate. On 2 cores shared by storescu and the server, every server is "
        "CPU-bound, so server CPU per instance decides (hub vs Orthanc at 4 associations: "
        f"{cpu_text}). The hub's cost is Python work under one interpreter lock per gateway "
        "process (one per core; the gateways accept from one listening socket, so two "
        "associations go to two processes). Per instance it now reads each PDU into one "
        "buffer (pacs_hub/gateway/pdu_reader.py), reads the C-STORE command without pydicom "
        "(pacs_hub/gateway/store_request.py), serves the request in the thread that read it "
        "(pacs_hub/gateway/reactor.py), parses the Part 10 header with its own one-loop "
        "reader (pacs_hub/dicom/part10_reader.py, ~90 µs for a 64x64 CT against ~170 for "
        "pydicom's dcmread), indexes with a few plain SQL statements on a kept connection "
        "(pacs_hub/storage/index_hot_path.py), appends the instance to its process's pack "
        "file with one pwrite and one fdatasync (pacs_hub/storage/packs.py: no new file, "
        "rename or folder sync per instance) and writes its response directly. What is left "
        "is pynetdicom's state machine and service class per message, the DICOM JSON "
        "metadata, the pack's data sync and the SQLite WAL commit, which Orthanc (C++, no "
        "sync) does not pay; it shows most on small instances, where this per-message work "
        "is all there is. "
        "The dcmtk storescp column is the receive-and-write ceiling without any index."
    )


def _find_paragraph(res: Results) -> str | None:
    hub, orth = res.find.get("hub"), res.find.get("orthanc")
    if not hub or not orth:
        return "**C-FIND**: not measured on both archives in this run."
    slower = [
        f"{k} (p95 {hub[k].p95_ms:.0f} vs {orth[k].p95_ms:.0f} ms, {hub[k].matches:.0f} matches)"
        for k in QUERY_TYPES
        if k in hub and k in orth and hub[k].samples and hub[k].p95_ms > orth[k].p95_ms
    ]
    if not slower:
        return (
            "**C-FIND**: the hub's p95 is at or below Orthanc's for every query type at this "
            "index size (SQLite B-tree lookups stay flat as the index grows, as the baseline "
            "predicted; findscu's process start and association are a floor common to both)."
        )
    tail_only = all(hub[k].p50_ms <= orth[k].p50_ms for k in QUERY_TYPES if k in hub and k in orth)
    cause = (
        " The hub's p50 is below Orthanc's for every type, so this is tail latency, not the "
        "typical query: occasional slow associations (pynetdicom association setup and thread "
        "start in the gateway, or other load on this shared 2-core machine) rather than the "
        "SQL lookup."
        if tail_only
        else " Exact-key lookups are index hits in both; where many studies match, the cost is "
        "producing responses (pydicom encoding and pynetdicom's per-message sending are ~3x "
        "slower per response than Orthanc's C++ in the baseline)."
    )
    return "**C-FIND**: the hub's p95 is above Orthanc's for " + "; ".join(slower) + "." + cause


def _move_paragraph(res: Results) -> str | None:
    if "hub" in res.move_errors:
        return (
            "**C-MOVE**: not available yet in the hub at the measured commit (the hub answered "
            f"`{res.move_errors['hub'][:160]}`); only Orthanc's numbers are shown."
        )
    hub, orth = res.move.get(("hub", "files")), res.move.get(("orthanc", "files"))
    if not hub or not orth:
        return None
    if hub.inst_s >= orth.inst_s:
        return "**C-MOVE**: hub egress matches or beats Orthanc's."
    return (
        f"**C-MOVE**: hub egress is {hub.inst_s / orth.inst_s:.0%} of Orthanc's "
        f"({hub.inst_s:.0f} vs {orth.inst_s:.0f} inst/s to storescp +B). Each sub-operation "
        "is written directly (command set and PDUs built by the hub, the response read "
        "without pydicom: 0.35-0.40 ms of hub CPU per 525 KB instance, measured on "
        "2026-11-30), then waits for storescp's response before the next (one association, "
        "no asynchronous operations window), through pynetdicom's C-MOVE SCP and its "
        "thread hand-overs in one Python process; while storescp stores one, the hub "
        "writes the Pending C-MOVE response of the one before and reads the next one's "
        "bytes (measured on 2026-12-01 before that change: of ~1,000 us per 525 KB "
        "instance, 600-700 us waiting for storescp's response, 140-200 us writing, 55 us "
        "reading, ~135 us in between); Orthanc streams files from C++."
    )


def reading(res: Results) -> list[str]:
    paragraphs = [
        _ingest_paragraph(res),
        _find_paragraph(res),
        _move_paragraph(res),
        web_paragraph(res),
        *fed_paragraph(res),
    ]
    out: list[str] = []
    for text in paragraphs:
        if text:
            out += [text, ""]
    return out
