"""The federation parts of RESULTS.md: its method paragraph, tables and target lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.fed_find import QUERY_TYPES, FedLatency
from bench.federation import HOLDER, HUB_COPY_FRACTION, PACS, FedResults, RetrieveResults
from bench.find import WARMUPS, Latency
from bench.fmt import fmt, ratio
from bench.move import MoveSummary

if TYPE_CHECKING:
    from bench.report import Results

Check = tuple[str, bool | None]
FIND_SLACK = 1.2  # federated <= slowest source + 20 %
RETRIEVE_SHARE = 0.8  # through the hub >= 80 % of direct


def fed_method(res: Results) -> list[str]:
    fed = res.federation
    if fed is None:
        return []
    cfg = res.config
    instances = fed.retrieve.instances if fed.retrieve else "?"
    return [
        "* **Federation**: three Debian Orthanc (`ORTH_A`..`ORTH_C`, same launcher) as "
        f"establishment PACS, each sent its own corpus of {fed.studies_per_pacs} studies "
        "(`fed1`..`fed3`, laid out as `ct64`: 2 series x 5 slices of 64x64 per study, "
        "the same patients by name under each PACS's own Patient IDs); a fresh hub with "
        "them registered (`pacs-hub nodes add AE HOST PORT --role pacs`, the storescp "
        "`--role destination`) and a copy of A's first "
        f"1/{HUB_COPY_FRACTION} of studies. Hub and the three Orthanc run together here. "
        "**Federated C-FIND**: per query, one dcmtk `findscu` (Study Root, the C-FIND "
        "section's 14 study keys) to the hub's federated AE title `PACS_HUB_FED` (the hub "
        "asks its archive and the three PACS in parallel and merges by Study Instance UID), "
        "then one to each PACS directly, then one to the hub's own AE title; "
        f"{cfg['queries']} timed queries per type after {WARMUPS} warm-ups. Per query, "
        "*slowest PACS* = the largest of the three direct times (each PACS asked alone), "
        "*one by one* = their sum; then *at once*: three `findscu` started together, one "
        "per PACS, timed until the last answered (a client asking them in parallel, the "
        "three sharing the machine's cores as they do when the hub asks them); p50/p95 "
        "over the queries. "
        f"**Retrieve on demand**: study 1 of `ct512` ({instances} instances, "
        f"held by `{HOLDER}` only) C-MOVEd by dcmtk `movescu` to a fresh dcmtk `storescp "
        f"+B`, directly from `{HOLDER}` and through the hub (`-aec PACS_HUB`: the hub "
        "locates it by a federated C-FIND, lists it by C-FIND, pulls it by IMAGE-level "
        "C-MOVEs of parts of it over up to `PACS_HUB_PULL_ASSOCIATIONS` (4) associations "
        "at once from the PACS into its archive, sending each instance as soon as it is "
        "stored); a fresh hub for every "
        "through-the-hub run; "
        f"{cfg['move_reps']} rep(s) per route, median. Timed window: the movescu process; "
        "the pull is the hub's retrieve job, started to finished. Then, once, on the last "
        "hub: `ct512` study 2 (as large) sent by one `storescu` association (plain ingest) "
        "and study 1 C-MOVEd again to the storescp now that the hub holds it (its send).",
    ]


def _pair(lat: Latency | None) -> str:
    if lat is None or not lat.samples:
        return "failed"
    return f"{fmt(lat.p50_ms)} / {fmt(lat.p95_ms)}"


def _p(lat: Latency, which: str) -> float | None:
    if not lat.samples:
        return None
    return lat.p50_ms if which == "p50" else lat.p95_ms


def _find_rows(fed: FedResults) -> list[str]:
    lines = [
        "| query | matches (median) | federated p50 / p95 | slowest PACS p50 / p95 "
        "| one by one p50 / p95 | at once p50 / p95 | **federated / slowest (p50, p95)** "
        "| **federated / one by one (p95)** | **federated / at once (p95)** |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in QUERY_TYPES:
        lat = fed.find.get(kind)
        if lat is None:
            continue
        f, s, o, a = lat.federated, lat.slowest, lat.one_by_one, lat.at_once
        lines.append(
            f"| {kind} | {fmt(f.matches)} | {_pair(f)} | {_pair(s)} | {_pair(o)} | {_pair(a)} "
            f"| **{ratio(_p(f, 'p50'), _p(s, 'p50'))}, {ratio(_p(f, 'p95'), _p(s, 'p95'))}** "
            f"| **{ratio(_p(f, 'p95'), _p(o, 'p95'))}** | **{ratio(_p(f, 'p95'), _p(a, 'p95'))}** |"
        )
    return lines


def _source_rows(fed: FedResults) -> list[str]:
    routes = [*PACS, "hub"]
    head = " | ".join(f"{r if r != 'hub' else 'hub archive alone'} p50 / p95" for r in routes)
    lines = [f"| query | {head} |", "|---" * (len(routes) + 1) + "|"]
    for kind, lat in fed.find.items():
        cells = " | ".join(_pair(lat.sources.get(r)) for r in routes)
        lines.append(f"| {kind} | {cells} |")
    return lines


def _rate(s: MoveSummary | None) -> str:
    if s is None:
        return "failed"
    spread = f" ({fmt(s.inst_min)}-{fmt(s.inst_max)})" if s.runs > 1 else ""
    return f"{fmt(s.inst_s)}{spread}"


def _retrieve_rows(fed: FedResults) -> list[str]:
    ret = fed.retrieve
    if ret is None:
        return []
    direct, hub = ret.summary("direct"), ret.summary("hub")
    lines = [
        f"Retrieve on demand ({ret.instances} instances of 512x512, "
        f"{ret.mean_bytes / 1000:.0f} KB each, to storescp +B):",
        "",
        "| route | inst/s | MB/s | **through the hub / direct (MB/s)** |",
        "|---|---|---|---|",
        f"| direct C-MOVE from {HOLDER} | {_rate(direct)} "
        f"| {fmt(direct.mb_s) if direct else '-'} | |",
        f"| through the hub (locate, pull, send) | {_rate(hub)} | {fmt(hub.mb_s) if hub else '-'} "
        f"| **{ratio(hub.mb_s if hub else None, direct.mb_s if direct else None)}** |",
    ]
    pull = ret.pull_median
    if hub and pull:
        total = ret.instances / hub.inst_s
        lines += [
            "",
            f"Of the through-the-hub window (median {total:.2f} s), the hub's pull from "
            f"{HOLDER} took {pull:.2f} s ({ret.instances / pull:.0f} inst/s); the rest, "
            f"{max(0.0, total - pull):.2f} s, is the federated locate and the hub sending "
            "to the storescp.",
        ]
    lines += _halves(ret)
    failed = [f"{r.mode}: {r.error or f'{r.received}/{r.expected}'}" for r in ret.runs if not r.ok]
    if failed:
        lines += ["", "Failed runs (excluded): " + "; ".join(f"`{e}`" for e in failed)]
    return lines


def _halves(ret: RetrieveResults) -> list[str]:
    parts = []
    if ret.ingest_seconds:
        parts.append(
            f"storing a study as large sent by one storescu association "
            f"{ret.instances / ret.ingest_seconds:.0f} inst/s"
        )
    if ret.send_seconds:
        parts.append(
            f"C-MOVE of the pulled study, held now, to the storescp "
            f"{ret.instances / ret.send_seconds:.0f} inst/s"
        )
    if not parts:
        return []
    return ["", "The two halves alone, on the last hub: " + "; ".join(parts) + "."]


def fed_section(res: Results) -> list[str]:
    fed = res.federation
    if fed is None:
        return []
    held = ", ".join(f"{k} {v:,}" for k, v in fed.instances.items())
    lines = [
        "## 6. Federation (federated C-FIND over 3 PACS; retrieve on demand)",
        "",
        f"Instances held: {held}. Federated C-FIND latency (findscu, ms):",
        "",
        *_find_rows(fed),
        "",
        "Each source asked alone (ms):",
        "",
        *_source_rows(fed),
    ]
    short = [f"{k}: {v.short_answers}" for k, v in fed.find.items() if v.short_answers]
    if short:
        lines += ["", "Federated answers with fewer matches than the PACS' together: "]
        lines[-1] += "; ".join(short)
    lines += ["", *_retrieve_rows(fed)]
    if fed.errors:
        lines += ["", "Errors: " + "; ".join(f"`{e}`" for e in fed.errors)]
    return [*lines, ""]


def fed_summary(res: Results) -> list[str]:
    """The federation ratios and their targets, for the summary at the top."""
    fed = res.federation
    if fed is None:
        return []
    rows = []
    for kind in QUERY_TYPES:
        lat = fed.find.get(kind)
        if lat is not None:
            f, s = lat.federated, lat.slowest
            rows.append(
                (
                    f"federated C-FIND p95 / slowest PACS p95, {kind}",
                    ratio(_p(f, "p95"), _p(s, "p95")),
                    f"<= {FIND_SLACK:.1f}",
                    _find_met(lat),
                )
            )
    ret = fed.retrieve
    direct = ret.summary("direct") if ret else None
    hub = ret.summary("hub") if ret else None
    rows.append(
        (
            "retrieve on demand MB/s, through the hub / direct C-MOVE",
            ratio(hub.mb_s if hub else None, direct.mb_s if direct else None),
            f">= {RETRIEVE_SHARE:.1f}",
            _retrieve_met(direct, hub),
        )
    )
    word = {True: "yes", False: "**no**", None: "-"}
    lines = ["## Federation summary", "", "| measure | ratio | target | met |", "|---|---|---|---|"]
    lines += [f"| {name} | **{value}** | {goal} | {word[ok]} |" for name, value, goal, ok in rows]
    return [*lines, ""]


def _retrieve_met(direct: MoveSummary | None, hub: MoveSummary | None) -> bool | None:
    return None if not (direct and hub) else hub.mb_s >= RETRIEVE_SHARE * direct.mb_s


def _find_met(lat: FedLatency | None) -> bool | None:
    if lat is None or not lat.federated.samples or not lat.slowest.samples:
        return None
    return lat.federated.p95_ms <= FIND_SLACK * lat.slowest.p95_ms


def fed_checks(res: Results) -> list[Check]:
    fed = res.federation
    if fed is None:
        return []
    checks: list[Check] = [
        (f"federated C-FIND p95 {kind}: <= slowest PACS + 20 %", _find_met(fed.find.get(kind)))
        for kind in QUERY_TYPES
    ]
    ret = fed.retrieve
    direct = ret.summary("direct") if ret else None
    hub = ret.summary("hub") if ret else None
    checks.append(
        (
            "retrieve on demand through the hub: >= 80 % of direct C-MOVE (MB/s)",
            _retrieve_met(direct, hub),
        )
    )
    return checks
