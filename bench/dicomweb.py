"""DICOMweb reads (PS3.18): QIDO-RS latency, series metadata latency, WADO-RS series
retrieve and frame retrieval, with httpx on keep-alive connections.

Requests say ``Accept-Encoding: identity``: what is timed is each server's own work,
not gzip on loopback. Frames are also fetched as a browser asks for them
(``gzip, deflate``): Orthanc then gzips every frame (it does, on 1.10.1); the hub
never compresses DICOMweb answers.

Every answer is checked before it counts: HTTP 200 (QIDO: or 204 when nothing may
match), a JSON array of the expected length, or a multipart body with the expected
number of parts and frame size. A failed answer is a failed sample, never a time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench import data, find
from bench.find import Latency, Query
from bench.multipart import BadMultipart, PartCounter, boundary_of, single_part
from bench.targets import WebTarget

MB = 1_000_000
DICOM_JSON = "application/dicom+json"
INSTANCES_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
FRAME_CLIENTS = 25
RETRIEVE_REPS_FACTOR = 3
"""Series retrieves per DICOMweb rep: each is ~0.3 s, and three of them spread 877-3,506
inst/s on the hub in one run (2026-11-30) while both servers stood at the client's
ceiling (~1,650 inst/s, httpx reading, in a run of six each)."""
IDENTITY = "identity"
BROWSER_ENCODING = "gzip, deflate"
"""OHIF's ``maxNumRequests.prefetch``: frames it asks for at once (viewer.md)."""
STUDY_PARAMS = {
    "limit": "101",
    "offset": "0",
    "fuzzymatching": "false",
    "includefield": "00081030,00080060,00080090,00100030",
}
SERIES_PARAMS = {"includefield": "00080021,00080031,0008103E,00200011"}
"""What OHIF 3.13 sends with its study list and series searches (viewer.md, section 5)."""
MAY_BE_EMPTY = {find.QUERY_TYPES[1]}
TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class BadAnswer(Exception):
    """An answer that does not hold what was asked for."""


@dataclass(frozen=True, slots=True)
class Throughput:
    """Median and range of items/s over the successful runs, and MB/s at the median."""

    runs: int
    failed: int
    per_s: float
    per_s_min: float
    per_s_max: float
    mb_s: float


@dataclass
class WebResults:
    """Everything the DICOMweb section measured on one target."""

    qido: dict[str, Latency] = field(default_factory=dict)
    metadata: Latency | None = None
    retrieve: Throughput | None = None
    frames: Throughput | None = None
    frames_browser: Throughput | None = None
    stow: dict[str, Throughput | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Series:
    """The series every retrieval reads: study 1 of ``ct512``."""

    study: str
    series: str
    sops: tuple[str, ...]
    frame_bytes: int

    @classmethod
    def ct512(cls, slices: int) -> Series:
        sops = tuple(data.instance_uid("ct512", data.Slice(0, 0, n, 0)) for n in range(slices))
        return cls(data.study_uid("ct512", 0), data.series_uid("ct512", 0, 0), sops, 512 * 512 * 2)

    @property
    def path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}"


def throughput(runs: Sequence[tuple[float, int, int]], expected: int) -> Throughput | None:
    """From (seconds, items, bytes) per run; runs with fewer items than expected fail."""
    good = [r for r in runs if r[1] == expected and r[0] > 0]
    if not good:
        return None
    rates = [items / seconds for seconds, items, _ in good]
    mb_s = statistics.median(size / seconds / MB for seconds, _, size in good)
    return Throughput(
        len(good), len(runs) - len(good), statistics.median(rates), min(rates), max(rates), mb_s
    )


# --- QIDO-RS -----------------------------------------------------------------------------


def qido_request(query: Query) -> tuple[str, dict[str, str]]:
    """The QIDO-RS path and parameters of a C-FIND query (same matching keys)."""
    keys = dict(key.split("=", 1) for key in query.keys if "=" in key)
    if keys.pop("QueryRetrieveLevel") == "SERIES":
        return f"/studies/{keys['StudyInstanceUID']}/series", dict(SERIES_PARAMS)
    return "/studies", {**keys, **STUDY_PARAMS}


def qido_once(client: httpx.Client, url: str, query: Query) -> tuple[float, int, bool]:
    """One search: (seconds to the last byte, matches, ok)."""
    path, params = qido_request(query)
    # unencoded, as a browser sends '*' and ',': Orthanc 1.10's plugin does not
    # percent-decode query values (PatientName=ABC%2A matches nothing there)
    target = url + path + "?" + "&".join(f"{k}={v}" for k, v in params.items())
    start = time.perf_counter()
    response = client.get(target, headers={"Accept": DICOM_JSON})
    seconds = time.perf_counter() - start
    if response.status_code == 204:
        return seconds, 0, query.kind in MAY_BE_EMPTY
    try:
        answer = response.json() if response.status_code == 200 else None
    except ValueError:
        answer = None
    if not isinstance(answer, list):
        return seconds, 0, False
    ok = bool(answer) or query.kind in MAY_BE_EMPTY
    return seconds, len(answer), ok


def run_qido(client: httpx.Client, url: str, queries: Sequence[Query]) -> dict[str, Latency]:
    """Every query in order, warm-ups excluded, summarised per type like C-FIND."""
    samples: dict[str, list[tuple[float, int, bool]]] = {k: [] for k in find.QUERY_TYPES}
    seen = dict.fromkeys(find.QUERY_TYPES, 0)
    for query in queries:
        result = qido_once(client, url, query)
        seen[query.kind] += 1
        if seen[query.kind] > find.WARMUPS:
            samples[query.kind].append(result)
    return {kind: find.latency(values) for kind, values in samples.items()}


# --- metadata, series retrieve, frames -----------------------------------------------------


def metadata_once(client: httpx.Client, url: str, series: Series) -> tuple[float, int, bool]:
    """GET .../metadata: ok when 200 with one JSON object per instance, each with its SOP UID."""
    start = time.perf_counter()
    response = client.get(url + series.path + "/metadata", headers={"Accept": DICOM_JSON})
    seconds = time.perf_counter() - start
    answer = response.json() if response.status_code == 200 else None
    if not isinstance(answer, list):
        return seconds, 0, False
    sops = {item.get("00080018", {}).get("Value", [None])[0] for item in answer}
    return seconds, len(answer), len(answer) == len(series.sops) and sops == set(series.sops)


def run_metadata(client: httpx.Client, url: str, series: Series, samples: int) -> Latency:
    results = [metadata_once(client, url, series) for _ in range(2 + samples)]
    return find.latency(results[2:])


def retrieve_once(client: httpx.Client, url: str, series: Series) -> tuple[float, int, int]:
    """GET the series as multipart/related application/dicom: (seconds, parts, bytes)."""
    start = time.perf_counter()
    with client.stream("GET", url + series.path, headers={"Accept": INSTANCES_ACCEPT}) as answer:
        if answer.status_code != 200:
            answer.read()
            raise BadAnswer(f"series retrieve: HTTP {answer.status_code} {answer.text[:200]}")
        counter = PartCounter(boundary_of(answer.headers.get("content-type", "")))
        for chunk in answer.iter_raw(1 << 20):
            counter.feed(chunk)
    seconds = time.perf_counter() - start
    parts = counter.parts()
    if parts != len(series.sops):
        raise BadAnswer(f"series retrieve: {parts} parts, {len(series.sops)} expected")
    return seconds, parts, counter.bytes


def frame_once(
    client: httpx.Client, url: str, series: Series, sop: str, encoding: str = IDENTITY
) -> int:
    """GET frame 1 of one instance the way OHIF asks; the frame's size, checked."""
    path = f"{series.path}/instances/{sop}/frames/1"
    headers = {"Accept": FRAMES_ACCEPT, "Accept-Encoding": encoding}
    answer = client.get(url + path, headers=headers)
    if answer.status_code != 200:
        raise BadAnswer(f"frame: HTTP {answer.status_code} {answer.text[:200]}")
    payload = single_part(answer.content, boundary_of(answer.headers.get("content-type", "")))
    if len(payload) != series.frame_bytes:
        raise BadAnswer(f"frame: {len(payload)} bytes, {series.frame_bytes} expected")
    return len(answer.content)


def frames_once(
    client: httpx.Client, url: str, series: Series, encoding: str = IDENTITY
) -> tuple[float, int, int]:
    """Frame 1 of every instance, FRAME_CLIENTS requests in flight: (seconds, frames,
    bytes of the answers as decoded)."""

    def one(sop: str) -> int:
        return frame_once(client, url, series, sop, encoding)

    with ThreadPoolExecutor(FRAME_CLIENTS) as pool:
        start = time.perf_counter()
        sizes = list(pool.map(one, series.sops))
        seconds = time.perf_counter() - start
    return seconds, len(sizes), sum(sizes)


def _repeat(
    what: str,
    measure: Callable[[], tuple[float, int, int]],
    reps: int,
    errors: list[str],
) -> list[tuple[float, int, int]]:
    runs = []
    for _ in range(reps):
        try:
            runs.append(measure())
        except (httpx.HTTPError, BadAnswer, BadMultipart) as exc:
            errors.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
            runs.append((0.0, 0, 0))
    return runs


def client() -> httpx.Client:
    limits = httpx.Limits(max_connections=FRAME_CLIENTS, max_keepalive_connections=FRAME_CLIENTS)
    return httpx.Client(timeout=TIMEOUT, limits=limits, headers={"Accept-Encoding": IDENTITY})


def measure_reads(
    target: WebTarget,
    queries: Sequence[Query],
    series: Series,
    metadata_samples: int,
    reps: int,
    log: Callable[[str], None],
) -> WebResults:
    """QIDO, series metadata, series retrieve and frames on a target holding the index."""
    out = WebResults()
    url = target.dicomweb_url
    with client() as http:
        out.qido = run_qido(http, url, queries)
        for kind, lat in out.qido.items():
            log(f"{target.name}: QIDO {kind}: p50 {lat.p50_ms:.1f} ms p95 {lat.p95_ms:.1f} ms")
        out.metadata = _guard(
            out.errors, "metadata", run_metadata, http, url, series, metadata_samples
        )
        if out.metadata:
            log(f"{target.name}: series metadata p50 {out.metadata.p50_ms:.0f} ms")
        runs = _repeat(
            "retrieve",
            lambda: retrieve_once(http, url, series),
            RETRIEVE_REPS_FACTOR * reps,
            out.errors,
        )
        out.retrieve = throughput(runs, len(series.sops))
        _repeat("frames warm-up", lambda: frames_once(http, url, series), 1, out.errors)
        runs = _repeat("frames", lambda: frames_once(http, url, series), reps, out.errors)
        out.frames = throughput(runs, len(series.sops))
        runs = _repeat(
            "frames (gzip, deflate)",
            lambda: frames_once(http, url, series, BROWSER_ENCODING),
            reps,
            out.errors,
        )
        out.frames_browser = throughput(runs, len(series.sops))
    for name, value in (
        ("WADO-RS series", out.retrieve),
        ("frames", out.frames),
        ("frames, gzip accepted", out.frames_browser),
    ):
        rate = f"{value.per_s:.0f}/s {value.mb_s:.0f} MB/s" if value else "failed"
        log(f"{target.name}: {name}: {rate}")
    return out


def _guard(errors: list[str], what: str, call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except (httpx.HTTPError, ValueError) as exc:
        errors.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
        return None
