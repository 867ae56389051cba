"""The federation paragraph of the reading, stated from the measured numbers.

The causes named are how the hub's federation code works
(pacs_hub/regional/federation.py, pull.py, pacs_hub/gateway/on_demand.py); they are
explanations to check, not measurements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.federation import HOLDER, FedResults, RetrieveResults
from bench.federation_report import FIND_SLACK, RETRIEVE_SHARE

if TYPE_CHECKING:
    from bench.report import Results

FIND_COST = (
    "per query the hub reads its node list from the index, writes the C-FIND to each PACS "
    "on a pooled association from the querying thread (non-blocking sockets polled "
    "together, pacs_hub/regional/remote_find.py), runs its own SQL while they answer, "
    "relays each match only a PACS holds from that PACS's bytes and encodes its own with "
    "pydicom. Measured on 2026-11-30 (raw-socket client, no findscu): the hub's CPU per "
    "federated query is ~5 ms for a 2-match answer and ~11 ms for 45 matches, of which the "
    "search itself (remote requests, local SQL, merge, relay; timed in-process) is 2.0 and "
    "5.6 ms; the rest is pynetdicom's association and C-FIND service machinery. The "
    "client's association to the hub costs ~1.3 ms (A-ASSOCIATE-AC) plus ~0.6-0.8 ms for "
    "its first message (two pynetdicom threads per association, the message handed from "
    "one to the other) against ~0.1-0.2 ms at Orthanc; the first answer of a 2-match query "
    "leaves the hub ~5 ms after the request (1.8 ms at one Orthanc alone), the last of 45 "
    "~13 ms after (3.8 ms), while on 2 cores the three PACS compute at once alongside the "
    "hub, which a PACS asked alone does not have to share"
)


def _find_text(fed: FedResults) -> str:
    figures, missed = [], []
    for kind, lat in fed.find.items():
        f, s, o = lat.federated, lat.slowest, lat.one_by_one
        if not (f.samples and s.samples and o.samples):
            continue
        figures.append(
            f"{kind}: p50 {f.p50_ms:.0f} ms federated vs {s.p50_ms:.0f} ms slowest PACS and "
            f"{o.p50_ms:.0f} ms one by one (p95 {f.p95_ms:.0f} / {s.p95_ms:.0f} / "
            f"{o.p95_ms:.0f} ms, {f.matches:.0f} matches)"
        )
        if f.p95_ms > FIND_SLACK * s.p95_ms:
            missed.append(f"{kind} ({f.p95_ms / s.p95_ms:.2f}x)")
    if not figures:
        return "**Federated C-FIND**: not measured in this run."
    verdict = (
        "The federated answer stays within the slowest source plus 20 % at p95 for every "
        "query type."
        if not missed
        else "It costs more than the slowest source plus 20 % at p95 for "
        + ", ".join(missed)
        + f". Why, as far as the code shows: {FIND_COST}."
    )
    return (
        "**Federated C-FIND**: "
        + "; ".join(figures)
        + ". "
        + verdict
        + _hops(fed)
        + _versus(fed)
        + _at_once(fed)
        + _complete(fed)
    )


def _hops(fed: FedResults) -> str:
    """Whether the federated p50 is about the hub's own answer plus the slowest PACS."""
    sums = [
        (kind, lat.federated.p50_ms, hub.p50_ms + lat.slowest.p50_ms, lat.federated.matches)
        for kind, lat in fed.find.items()
        for hub in [lat.sources.get("hub")]
        if hub and hub.samples and lat.federated.samples and lat.slowest.samples
    ]
    near = [(f"{k} {f:.0f} vs {added:.0f} ms", m) for k, f, added, m in sums if f <= 1.2 * added]
    beyond = [
        (f"{k} {f:.0f} vs {added:.0f} ms, {m:.0f} matches", m)
        for k, f, added, m in sums
        if f > 1.2 * added
    ]
    out = ""
    if near:
        out += (
            " The federated p50 is about the hub's archive asked alone plus the slowest PACS "
            f"for {', '.join(t for t, _ in near)}: the client's association to the hub and "
            "the hub's own associations to the PACS come one after the other, which a client "
            "asking the PACS itself does not pay; the three remote queries do overlap."
        )
    if beyond:
        out += (
            " It exceeds the hub's archive alone plus the slowest PACS by more than 20 % for "
            f"{', '.join(t for t, _ in beyond)}: time inside the hub beyond the two hops"
            + (
                ", on the type(s) with the most matches (each remote answer parsed, merged "
                "and relayed in Python, one by one)."
                if near and min(m for _, m in beyond) > max(m for _, m in near)
                else "."
            )
        )
    return out


def _versus(fed: FedResults) -> str:
    slower = [
        kind
        for kind, lat in fed.find.items()
        if lat.federated.samples
        and lat.one_by_one.samples
        and lat.federated.p50_ms >= lat.one_by_one.p50_ms
    ]
    if not slower:
        return " At p50 it is faster than asking the three PACS one by one for every type."
    return (
        " At p50 it is not faster than asking the three PACS one by one for "
        + ", ".join(slower)
        + "."
    )


def _at_once(fed: FedResults) -> str:
    """The federated answer against the three PACS asked in parallel by the client."""
    ratios = [
        lat.federated.p95_ms / lat.at_once.p95_ms
        for lat in fed.find.values()
        if lat.federated.samples and lat.at_once.samples and lat.at_once.p95_ms > 0
    ]
    if not ratios:
        return ""
    low, high = min(ratios), max(ratios)
    span = f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"
    return (
        f" Against the three PACS asked at once by the client (three findscu together, on "
        f"the same cores), the federated answer takes {span} x their time at p95"
        + (
            ": the client gets every PACS's answer, merged, no later than by asking them "
            "all itself."
            if high <= 1.0
            else "."
        )
    )


def _complete(fed: FedResults) -> str:
    short = sum(lat.short_answers for lat in fed.find.values())
    if short:
        return (
            f" {short} federated answer(s) had fewer matches than the PACS gave together "
            "(a source reported unavailable or cut off: see the hub log)."
        )
    return " Every federated answer held every study the PACS gave (de-duplicated)."


def _retrieve_text(ret: RetrieveResults) -> str | None:
    direct, hub = ret.summary("direct"), ret.summary("hub")
    if not direct or not hub:
        failed = [r.error for r in ret.runs if not r.ok]
        return f"**Retrieve on demand**: not measured on both routes ({'; '.join(failed[:2])})."
    share = hub.mb_s / direct.mb_s
    head = (
        f"**Retrieve on demand**: through the hub {hub.mb_s:.0f} MB/s ({hub.inst_s:.0f} "
        f"inst/s) vs {direct.mb_s:.0f} MB/s ({direct.inst_s:.0f} inst/s) for a direct C-MOVE "
        f"from {HOLDER}, {share:.0%} of direct"
        + (" (target met)." if share >= RETRIEVE_SHARE else " (target of 80 % not met).")
    )
    pull = ret.pull_median
    if pull is None:
        return head + _halves(ret, None)
    direct_s = ret.instances / direct.inst_s
    total = ret.instances / hub.inst_s
    return (
        head + " The hub sends each instance as soon as the pull has made it durable "
        "(gateway/on_demand.py: a Feed polls the index while pull_study runs), so the window "
        f"is locate + pull + the last sends: the pull alone took {pull:.2f} s of {total:.2f} s "
        f"({pull / direct_s:.1f}x the whole direct move, {direct_s:.2f} s). The pull is "
        f"a listing C-FIND, then {HOLDER}'s C-MOVEs of the study's parts, over up to 4 "
        "associations at once, into the hub's ingest (pynetdicom SCPs in the hub's gateway "
        "processes, a data sync of a pack file and an SQLite commit per instance), the send "
        "is the hub's C-MOVE egress (section 4); "
        + (
            "80 % of direct is out of reach while the hub's durable ingest is slower than "
            "the PACS's send."
            if pull / direct_s > 1 / RETRIEVE_SHARE
            else "the pull keeps pace with the PACS."
        )
        + _halves(ret, pull)
    )


def _halves(ret: RetrieveResults, pull: float | None) -> str:
    """The pull against the hub's plain ingest, and the send alone, on the last hub."""
    out = ""
    if ret.ingest_seconds and pull:
        pulled, plain = ret.instances / pull, ret.instances / ret.ingest_seconds
        out += (
            f" The pull ran at {pulled:.0f} inst/s where the same hub stored a study as large "
            f"from one storescu association at {plain:.0f} inst/s"
            + (
                ": the pull path costs more than plain ingest. What it adds, as far as the "
                "code shows: the listing, the hub's own C-MOVE SCU associations to the PACS "
                "(a Pending response per instance, progress written to the job row every "
                "0.5 s) and the send to the requestor's destination, alongside the incoming "
                "C-STOREs."
                if pulled < 0.8 * plain
                else (
                    ": the parts, stored in parallel, went faster than one association."
                    if pulled > 1.1 * plain
                    else ": the hub's ingest is what bounds the pull."
                )
            )
        )
    if ret.send_seconds:
        out += (
            f" Sending the study once held took {ret.send_seconds:.1f} s "
            f"({ret.instances / ret.send_seconds:.0f} inst/s)."
        )
    return out


def fed_paragraph(res: Results) -> list[str]:
    fed = res.federation
    if fed is None:
        return []
    out = [_find_text(fed)]
    if fed.retrieve is not None:
        text = _retrieve_text(fed.retrieve)
        if text:
            out.append(text)
    if fed.errors:
        out.append("**Federation errors**: " + "; ".join(fed.errors[:3]) + ".")
    return out
