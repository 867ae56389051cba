"""Federated C-FIND latency: the hub's federated AE title vs each PACS asked directly.

Every query runs, one process at a time, as dcmtk findscu (Study Root, the 14 study
keys of :mod:`bench.find`) to the hub's federated AE title, then to each of the three
PACS, then to the hub's own AE title (its archive alone). Per query the slowest of the
three direct answers ("slowest PACS", each asked alone) and their sum ("one by one",
what a client asking them in turn waits for) are derived; then the three PACS are
asked at the same time by three findscu ("at once", what a client asking them in
parallel waits for on this machine, where they share its cores as they do when the
hub asks them). p50/p95 over the queries of a type.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from bench import data
from bench.find import WARMUPS, Latency, Query, findscu_at, latency, study_query
from bench.targets import HUB_AE, Target

FED_AE = "PACS_HUB_FED"  # the hub's default settings.federated_ae_title
QUERY_TYPES = (
    "study by PatientName prefix (3 letters*)",
    "study by StudyDate range (1 year)",
    "study by PatientID (one PACS's ID)",
)
KINDS = ("fed1", "fed2", "fed3")
Sample = tuple[float, int, bool]


@dataclass(frozen=True, slots=True)
class FedLatency:
    """One query type: the federated answer, each source alone, and the derived pair."""

    federated: Latency
    sources: dict[str, Latency]
    """Each PACS asked directly, and ``hub`` (the hub's own AE title, its archive)."""
    slowest: Latency
    """Per query, the slowest of the three PACS."""
    one_by_one: Latency
    """Per query, the three PACS' times added."""
    at_once: Latency
    """Per query, the three PACS asked at the same time: until the last answered."""
    short_answers: int
    """Queries whose federated answer had fewer matches than the PACS' together."""


def one_query(kind: str, rng: random.Random, studies: int) -> Query:
    """A random query of ``kind`` over three ``fed*`` corpora of ``studies`` studies each."""
    patient = rng.randrange(max(1, studies // 2))
    if kind == QUERY_TYPES[0]:
        prefix = data.patient_name(patient)[:3]
        return Query(kind, study_query({"PatientName": f"{prefix}*"}))
    if kind == QUERY_TYPES[1]:
        first = data.FIRST_DAY + timedelta(days=rng.randrange(data.DATE_SPAN_DAYS - 365))
        span = f"{first:%Y%m%d}-{first + timedelta(days=364):%Y%m%d}"
        return Query(kind, study_query({"StudyDate": span}))
    return Query(kind, study_query({"PatientID": data.patient_id(rng.choice(KINDS), patient)}))


def build_queries(studies: int, per_type: int, seed: int = 11) -> list[Query]:
    """``WARMUPS + per_type`` queries of every type, interleaved by type."""
    rng = random.Random(seed)
    return [
        one_query(kind, rng, studies) for _ in range(WARMUPS + per_type) for kind in QUERY_TYPES
    ]


def _slowest(direct: Sequence[Sample]) -> Sample:
    return max(s[0] for s in direct), sum(s[1] for s in direct), all(s[2] for s in direct)


def _one_by_one(direct: Sequence[Sample]) -> Sample:
    return sum(s[0] for s in direct), sum(s[1] for s in direct), all(s[2] for s in direct)


def run_queries(
    hub: Target, pacs: Mapping[str, Target], queries: Sequence[Query]
) -> dict[str, FedLatency]:
    """Time every query (warm-ups excluded) on every route and summarise per type."""
    routes = [*pacs, "hub"]
    fed: dict[str, list[Sample]] = {k: [] for k in QUERY_TYPES}
    alone: dict[str, dict[str, list[Sample]]] = {k: {r: [] for r in routes} for k in QUERY_TYPES}
    together: dict[str, list[Sample]] = {k: [] for k in QUERY_TYPES}
    seen = dict.fromkeys(QUERY_TYPES, 0)
    for query in queries:
        federated = findscu_at(FED_AE, hub.dicom_port, query)
        direct = {ae: findscu_at(ae, target.dicom_port, query) for ae, target in pacs.items()}
        direct["hub"] = findscu_at(HUB_AE, hub.dicom_port, query)
        parallel = at_once(pacs, query)
        seen[query.kind] += 1
        if seen[query.kind] > WARMUPS:
            fed[query.kind].append(federated)
            together[query.kind].append(parallel)
            for route in routes:
                alone[query.kind][route].append(direct[route])
    return {
        kind: summarize(fed[kind], alone[kind], list(pacs), together[kind]) for kind in QUERY_TYPES
    }


def at_once(pacs: Mapping[str, Target], query: Query) -> Sample:
    """One findscu to each PACS, all started together; wall time to the last answer."""
    with ThreadPoolExecutor(len(pacs)) as pool:
        start = time.perf_counter()
        answers = list(pool.map(lambda ae: findscu_at(ae, pacs[ae].dicom_port, query), pacs))
        seconds = time.perf_counter() - start
    return seconds, sum(a[1] for a in answers), all(a[2] for a in answers)


def summarize(
    federated: Sequence[Sample],
    alone: Mapping[str, Sequence[Sample]],
    pacs: Sequence[str],
    together: Sequence[Sample],
) -> FedLatency:
    per_query = [[alone[ae][i] for ae in pacs] for i in range(len(federated))]
    short = sum(
        1 for f, d in zip(federated, per_query, strict=True) if f[2] and f[1] < _slowest(d)[1]
    )
    return FedLatency(
        latency(federated),
        {route: latency(samples) for route, samples in alone.items()},
        latency([_slowest(d) for d in per_query]),
        latency([_one_by_one(d) for d in per_query]),
        latency(together),
        short,
    )
