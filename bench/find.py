"""C-FIND latency with dcmtk findscu: one process per query (start, associate, query, release).

The same seeded query list runs against both archives; each query type is timed
``per_type`` times after a few warm-ups, and p50/p95 plus the median number of
matches are reported.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from bench import data
from bench.procs import BENCH_AE, LOOPBACK, dcmtk, dcmtk_env
from bench.targets import Target

STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)
QUERY_TYPES = (
    "study by PatientID",
    "study by StudyDate range (7 days)",
    "study by PatientName prefix (3 letters*)",
    "series by StudyInstanceUID",
)
WARMUPS = 3


@dataclass(frozen=True, slots=True)
class Query:
    """One C-FIND request: its type and findscu ``-k`` keys."""

    kind: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Latency:
    """p50/p95 (ms) and median matches of one query type on one target."""

    samples: int
    failed: int
    p50_ms: float
    p95_ms: float
    matches: float


def study_query(match: dict[str, str]) -> tuple[str, ...]:
    keys = {name: "" for name in STUDY_KEYS} | match
    return ("QueryRetrieveLevel=STUDY", *(f"{k}={v}" if v else k for k, v in keys.items()))


def series_query(study_uid: str) -> tuple[str, ...]:
    return (
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study_uid}",
        *SERIES_KEYS,
    )


def one_query(kind: str, rng: random.Random, studies: int) -> Query:
    """A random query of ``kind`` over the ``idx`` corpus of ``studies`` studies."""
    study = rng.randrange(studies)
    patient = study // 2
    if kind == QUERY_TYPES[0]:
        return Query(kind, study_query({"PatientID": data.patient_id("idx", patient)}))
    if kind == QUERY_TYPES[1]:
        first = data.FIRST_DAY + timedelta(days=rng.randrange(data.DATE_SPAN_DAYS - 7))
        span = f"{first:%Y%m%d}-{first + timedelta(days=6):%Y%m%d}"
        return Query(kind, study_query({"StudyDate": span}))
    if kind == QUERY_TYPES[2]:
        prefix = data.patient_name(patient)[:3]
        return Query(kind, study_query({"PatientName": f"{prefix}*"}))
    return Query(kind, series_query(data.study_uid("idx", study)))


def build_queries(studies: int, per_type: int, seed: int = 7) -> list[Query]:
    """``WARMUPS + per_type`` queries of every type, interleaved by type."""
    rng = random.Random(seed)
    return [
        one_query(kind, rng, studies) for _ in range(WARMUPS + per_type) for kind in QUERY_TYPES
    ]


def findscu(target: Target, query: Query) -> tuple[float, int, bool]:
    """Run one findscu; (seconds, matches, ok)."""
    return findscu_at(target.ae_title, target.dicom_port, query)


def findscu_at(ae_title: str, port: int, query: Query) -> tuple[float, int, bool]:
    """Run one findscu to ``ae_title`` on loopback ``port``; (seconds, matches, ok)."""
    args = [dcmtk("findscu"), "-v", "-S", "-aet", BENCH_AE, "-aec", ae_title]
    for key in query.keys:
        args += ["-k", key]
    args += [LOOPBACK, str(port)]
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=dcmtk_env(), timeout=300)
    seconds = time.perf_counter() - start
    text = out.stdout + out.stderr
    matches = sum(1 for line in text.splitlines() if "Find Response:" in line and "Pending" in line)
    ok = out.returncode == 0 and "Success" in text
    return seconds, matches, ok


def latency(samples: Sequence[tuple[float, int, bool]]) -> Latency:
    good = [s for s in samples if s[2]]
    times = sorted(s[0] * 1000 for s in good) or [float("nan")]
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    matches = statistics.median(s[1] for s in good) if good else float("nan")
    return Latency(len(good), len(samples) - len(good), statistics.median(times), p95, matches)


def run_queries(target: Target, queries: Sequence[Query]) -> dict[str, Latency]:
    """Time every query (warm-ups excluded) and summarise per type."""
    samples: dict[str, list[tuple[float, int, bool]]] = {kind: [] for kind in QUERY_TYPES}
    seen: dict[str, int] = dict.fromkeys(QUERY_TYPES, 0)
    for query in queries:
        result = findscu(target, query)
        seen[query.kind] += 1
        if seen[query.kind] > WARMUPS:
            samples[query.kind].append(result)
    return {kind: latency(values) for kind, values in samples.items()}
