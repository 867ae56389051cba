"""Number formatting and the latency table shared by the RESULTS.md sections."""

from __future__ import annotations

import math
from collections.abc import Mapping

from bench.find import QUERY_TYPES, Latency

NA = "not available yet"


def fmt(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def lat_cell(lat: Latency | None, which: str) -> str:
    if lat is None or not lat.samples:
        return NA if lat is None else "failed"
    return fmt(lat.p50_ms if which == "p50" else lat.p95_ms, 1)


def p95_ratio(h: Latency | None, o: Latency | None) -> str:
    if not (h and o and h.samples and o.samples):
        return "-"
    return ratio(h.p95_ms, o.p95_ms)


def latency_table(hub: Mapping[str, Latency], orth: Mapping[str, Latency]) -> list[str]:
    """One row per query type: matches, p50/p95 of both, p95 ratio; then any mismatch."""
    lines = [
        "| query | matches (median) | hub p50 | hub p95 | Orthanc p50 | Orthanc p95 "
        "| **p95 hub/Orthanc** |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in QUERY_TYPES:
        h, o = hub.get(kind), orth.get(kind)
        matches = h.matches if h and h.samples else (o.matches if o else math.nan)
        lines.append(
            f"| {kind} | {fmt(matches)} | {lat_cell(h, 'p50')} | {lat_cell(h, 'p95')} "
            f"| {lat_cell(o, 'p50')} | {lat_cell(o, 'p95')} | **{p95_ratio(h, o)}** |"
        )
    mismatch = [
        k for k in QUERY_TYPES if k in hub and k in orth and hub[k].matches != orth[k].matches
    ]
    if mismatch:
        lines += ["", "Median match counts differ between the two for: " + ", ".join(mismatch)]
    return lines


def le_p95(h: Latency | None, o: Latency | None) -> bool | None:
    """Whether the hub's p95 is at most Orthanc's; None when either is missing."""
    if not (h and o and h.samples and o.samples):
        return None
    return h.p95_ms <= o.p95_ms
