"""STOW-RS (PS3.18 10.5): POST /studies and /studies/{study}.

The request is ``multipart/related; type="application/dicom"`` (PS3.18 8.6.1.2);
each part is a Part 10 instance. The body is read part by part
(:mod:`pacs_hub.dicomweb.upload`): the parts are held in memory up to
:data:`MEMORY_BUDGET` bytes a request, the rest spooled to temp files of the blob
store; only once the whole body has arrived and parsed is each part stored through
the one ingest path C-STORE uses: a request's only part by
:meth:`~pacs_hub.ingest.Ingestor.ingest`, the parts held in memory of a request of
several together by :meth:`~pacs_hub.ingest.Ingestor.ingest_batch` (one data sync and
one index transaction for them all, each part still with its own outcome), a part
spooled to a temp file by :meth:`~pacs_hub.ingest.Ingestor.ingest_file` (the file is
moved in). A malformed or interrupted body therefore stores nothing.

The answer is the Store Instances Response Module (PS3.18 10.5.3, Table 10.5.3-3)
in ``application/dicom+json``: Retrieve URL of the study, Referenced SOP Sequence
(stored, and already-stored identical duplicates) and Failed SOP Sequence with a
Failure Reason (the DICOM status of PS3.4 B.2.3 the same failure gives over
C-STORE). HTTP status (10.5.3.1): 200 every instance stored; 202 some stored, some
failed; 409 none stored. A part whose Study Instance UID differs from the one in
the path fails with 0xA900 and is not stored.

Access (issue 4): the caller must be allowed to store (action store: a regional or
establishment administrator, a radiologist, a service account; never a share link,
a patient or a referring doctor), decided and audited before the body is read: 403
otherwise. A part that adds to a study the hub already holds and the caller may not
see fails with 0x0124 (Refused: Not Authorized, PS3.7 C.5) and is not stored; the
refusal is audited.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydicom
from fastapi import APIRouter, Depends, Request, Response
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from pacs_hub.dicom.header import InstanceHeader, is_valid_uid, parse_instance
from pacs_hub.dicomweb.access import Caller, CallerDep
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.qido import DICOM_JSON, check_uid
from pacs_hub.dicomweb.state import HubState, dicomweb_base, hub_state
from pacs_hub.dicomweb.upload import MalformedMultipart, MultipartSpooler, Part, media_type
from pacs_hub.errors import HubError
from pacs_hub.ingest import Arrival, IngestResult, all_decided
from pacs_hub.trust.principal import Action

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]
DICOM = "application/dicom"
CANNOT_UNDERSTAND = 0xC000
MISMATCH = 0xA900
PROCESSING_FAILURE = 0x0110
PARALLEL_PARTS = 4
"""Parts of one request spooled to temp files stored at once."""
SPOOL_BATCH = 1 << 20
"""Body bytes held in memory before the spooler writes them, from a worker thread: a
hand-over to a thread per chunk of the body (~64 KiB) cost more than the writing."""
MEMORY_BUDGET = 16 << 20
"""Bytes of part content one request may hold in memory; the rest is spooled to files."""
NOT_AUTHORIZED = 0x0124


@dataclass(frozen=True, slots=True)
class Failure:
    """One part that was not stored."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int
    comment: str


def _boundary(request: Request) -> str:
    header = request.headers.get("content-type", "")
    media, params = media_type(header)
    if media != "multipart/related":
        raise Problem(
            415,
            "Unsupported media type",
            f'STOW-RS takes multipart/related; type="{DICOM}", not {header[:80]!r}',
        )
    kind = params.get("type", DICOM).lower()
    if kind != DICOM:
        raise Problem(
            415,
            "Unsupported media type",
            f"multipart type {kind!r}: only {DICOM} parts are accepted (no JSON+bulk data)",
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise Problem(400, "Malformed multipart", "Content-Type has no boundary parameter")
    return boundary


async def _spool(
    request: Request, hub: HubState, boundary: str, then: Callable[[MultipartSpooler], T]
) -> tuple[MultipartSpooler, T]:
    """The body spooled to temp files, then ``then(spooler)`` run in the same worker
    thread as the last bytes' writing (one hand-over fewer for a one-part request)."""
    limit = hub.settings.stow_max_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "Content too large", f"request body over {limit} bytes")
    try:
        spooler = MultipartSpooler(boundary, hub.blobs.temp_path, MEMORY_BUDGET)
    except MalformedMultipart as exc:
        raise Problem(400, "Malformed multipart", str(exc)) from exc
    received = 0
    chunks: list[bytes] = []
    held = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise Problem(413, "Content too large", f"request body over {limit} bytes")
            chunks.append(chunk)
            held += len(chunk)
            if held >= SPOOL_BATCH:
                await run_in_threadpool(_feed, spooler, chunks)
                chunks, held = [], 0

        def last() -> T:
            _feed(spooler, chunks)
            spooler.finish()
            return then(spooler)

        result = await run_in_threadpool(last)
    except MalformedMultipart as exc:
        spooler.discard()
        raise Problem(400, "Malformed multipart", str(exc)) from exc
    except BaseException:
        spooler.discard()  # client gone, too large, disk full: leave nothing behind
        raise
    return spooler, result


def _feed(spooler: MultipartSpooler, chunks: list[bytes]) -> None:
    for chunk in chunks:
        spooler.feed(chunk)


def _may_add_to(caller: Caller, study_uid: str) -> bool:
    """A new study, or one the caller may see (a refusal is audited)."""
    if not caller.enforced:
        return True
    decision = caller.decide(Action.STORE, study_uid=study_uid, resource="stow")
    return decision.allowed or decision.rule == "not-found"


def _establishment_of(caller: Caller) -> int | None:
    """The establishment a study stored by this caller belongs to (its lowest key when
    the user works for several), so its staff see what they uploaded."""
    establishments = caller.principal.establishments
    return min(establishments) if establishments else None


Checked = tuple[bytes | Path, tuple[InstanceHeader, Dataset] | None, str | None]
"""A part that may be stored: its Part 10 content (in memory or its temp file), its
parsed header when the checks needed it, its SHA-256 when still that of the content."""


def _checked_part(caller: Caller, part: Part, study: str | None) -> Checked | Failure:
    """The part ready to be stored, or why it is not; raises a HubError for a part that
    cannot be parsed."""
    media, _params = media_type(part.content_type or DICOM)
    if media != DICOM:
        return Failure("", "", CANNOT_UNDERSTAND, f"part of type {media!r}, not {DICOM}")
    source: bytes | Path
    if part.data is not None:
        source = _with_preamble(bytes(part.data))
        rewritten = len(source) != part.size
    else:
        assert part.path is not None
        source, rewritten = part.path, _add_missing_preamble(part.path)
    parsed = None
    if study is not None or caller.enforced:
        parsed = parse_instance(source)
        header = parsed[0]
        if not _may_add_to(caller, header.study_instance_uid):
            return Failure(
                header.sop_class_uid,
                header.sop_instance_uid,
                NOT_AUTHORIZED,
                "not authorised to add to this study",
            )
        if study is not None and header.study_instance_uid != study:
            return Failure(
                header.sop_class_uid,
                header.sop_instance_uid,
                MISMATCH,
                f"Study Instance UID {header.study_instance_uid} is not {study}",
            )
    return source, parsed, None if rewritten else part.sha256


def _failure(part: Part, exc: HubError) -> Failure:
    uids = _uids(part)
    return Failure(uids[0], uids[1], exc.dicom_status, exc.message)


def _processing_failure(exc: Exception) -> Failure:
    return Failure("", "", PROCESSING_FAILURE, f"processing failure: {type(exc).__name__}")


def _store_part(
    hub: HubState, caller: Caller, part: Part, study: str | None, ae: str
) -> IngestResult | Failure:
    """One part stored on its own (a part in a temp file, or a request's only part)."""
    try:
        checked = _checked_part(caller, part, study)
        if isinstance(checked, Failure):
            return checked
        source, parsed, sha256 = checked
        establishment = _establishment_of(caller)
        if isinstance(source, bytes):
            return hub.ingestor.ingest(source, ae, establishment, parsed, sha256)
        return hub.ingestor.ingest_file(source, ae, establishment, parsed, sha256)
    except HubError as exc:
        return _failure(part, exc)
    except Exception as exc:
        LOGGER.exception("STOW-RS part not stored")
        return _processing_failure(exc)


def _store_batch(
    hub: HubState, caller: Caller, parts: list[Part], study: str | None, ae: str
) -> list[IngestResult | Failure]:
    """Parts held in memory, stored together (:meth:`~pacs_hub.ingest.Ingestor.ingest_batch`:
    one data sync, one index transaction), each with its own outcome."""
    outcomes: list[IngestResult | Failure | None] = [None] * len(parts)
    batch: list[tuple[int, Arrival]] = []
    for n, part in enumerate(parts):
        try:
            checked = _checked_part(caller, part, study)
        except HubError as exc:
            outcomes[n] = _failure(part, exc)
            continue
        except Exception as exc:  # as _store_part: this part fails, not the request
            LOGGER.exception("STOW-RS part not stored")
            outcomes[n] = _processing_failure(exc)
            continue
        if isinstance(checked, Failure):
            outcomes[n] = checked
        else:
            source, parsed, sha256 = checked
            assert isinstance(source, bytes)
            batch.append((n, Arrival(source, parsed, sha256)))
    if batch:
        results: list[IngestResult | HubError | Failure]
        try:
            results = list(
                hub.ingestor.ingest_batch(
                    [arrival for _n, arrival in batch], ae, _establishment_of(caller)
                )
            )
        except Exception as exc:  # raised before any of them was indexed
            LOGGER.exception("STOW-RS parts not stored")
            results = [_processing_failure(exc)] * len(batch)
        for (n, _arrival), result in zip(batch, results, strict=True):
            outcomes[n] = _failure(parts[n], result) if isinstance(result, HubError) else result
    return all_decided(outcomes)


def _lacks_preamble(head: bytes) -> bool:
    """True for a part that starts with its File Meta group: no preamble, no 'DICM'."""
    return head[128:132] != b"DICM" and head.startswith(b"\x02\x00")


def _with_preamble(data: bytes) -> bytes:
    """:func:`_add_missing_preamble` for a part held in memory."""
    return bytes(128) + b"DICM" + data if _lacks_preamble(data) else data


def _add_missing_preamble(path: Path) -> bool:
    """Give a part that starts with its File Meta group the preamble and 'DICM' prefix;
    True when it did (the file changed).

    PS3.18 8.6.1.2 wants PS3.10 files; pydicom (hence dicomweb-client) writes datasets
    without the 128-byte preamble unless told otherwise. The rest stays as received.
    """
    with path.open("rb") as fp:
        head = fp.read(132)
    if not _lacks_preamble(head):
        return False
    fixed = path.with_name(path.name + ".fixed")
    with path.open("rb") as source, fixed.open("xb") as target:
        target.write(bytes(128) + b"DICM")
        shutil.copyfileobj(source, target, 1 << 20)
    fixed.replace(path)
    return True


def _uids(part: Part) -> tuple[str, str]:
    """SOP Class and Instance UID of a rejected part, as far as they can be read."""
    try:
        source: Any = io.BytesIO(part.data) if part.data is not None else part.path
        ds = pydicom.dcmread(source, force=True, stop_before_pixels=True)
        found = (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")))
    except Exception:  # unreadable: the failure item carries the reason only
        return "", ""
    return tuple(u if is_valid_uid(u) else "" for u in found)  # type: ignore[return-value]


def _sequence_item(sop_class: str, sop_instance: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    return item


def _response_body(
    base: str, stored: list[IngestResult], failed: list[Failure], study: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    study_uid = study or (stored[0].study_instance_uid if stored else "")
    if study_uid:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid}"]}
    if failed:
        items = []
        for failure in failed:
            item = _sequence_item(failure.sop_class_uid, failure.sop_instance_uid)
            item["00081197"] = {"vr": "US", "Value": [failure.reason]}
            items.append(item)
        body["00081198"] = {"vr": "SQ", "Value": items}
    if stored:
        items = []
        for result in stored:
            item = _sequence_item(result.sop_class_uid, result.sop_instance_uid)
            url = f"{base}/studies/{result.study_instance_uid}/instances/{result.sop_instance_uid}"
            item["00081190"] = {"vr": "UR", "Value": [url]}
            items.append(item)
        body["00081199"] = {"vr": "SQ", "Value": items}
    return body


async def _store_all(
    hub: HubState,
    caller: Caller,
    parts: list[Part],
    study: str | None,
    ae: str,
    store_one: Callable[[Part], Awaitable[IngestResult | Failure]],
) -> list[IngestResult | Failure]:
    """Every part's outcome, in order: those held in memory stored as one batch, those
    spooled to temp files each on its own, :data:`PARALLEL_PARTS` at a time, meanwhile."""
    in_memory = [n for n, part in enumerate(parts) if part.data is not None]
    spooled = [n for n, part in enumerate(parts) if part.data is None]
    if not spooled:  # the usual request: one hand-over to a thread
        return await run_in_threadpool(_store_batch, hub, caller, parts, study, ae)
    if not in_memory:
        return list(await asyncio.gather(*(store_one(part) for part in parts)))
    batch = run_in_threadpool(_store_batch, hub, caller, [parts[n] for n in in_memory], study, ae)
    stored, alone = await asyncio.gather(
        batch, asyncio.gather(*(store_one(parts[n]) for n in spooled))
    )
    outcomes: dict[int, IngestResult | Failure] = dict(zip(in_memory, stored, strict=True))
    outcomes.update(zip(spooled, alone, strict=True))
    return [outcomes[n] for n in range(len(parts))]


async def _store(request: Request, hub: HubState, caller: Caller, study: str | None) -> Response:
    if caller.enforced:  # reads the policy and writes the audit trail
        await run_in_threadpool(caller.check, Action.STORE, "storing instances", study=study or "")
    else:  # policy off: allowed at once, not worth a hand-over to a thread
        caller.check(Action.STORE, "storing instances", study=study or "")
    boundary = _boundary(request)
    ae = "STOW-RS"

    def one_part(spooler: MultipartSpooler) -> list[IngestResult | Failure] | None:
        if len(spooler.parts) != 1:
            return None
        return [_store_part(hub, caller, spooler.parts[0], study, ae)]

    spooler, outcomes = await _spool(request, hub, boundary, one_part)
    stored: list[IngestResult] = []
    failed: list[Failure] = []
    gate = asyncio.Semaphore(PARALLEL_PARTS)

    async def store_one(part: Part) -> IngestResult | Failure:
        async with gate:
            return await run_in_threadpool(_store_part, hub, caller, part, study, ae)

    try:
        if outcomes is None:
            outcomes = await _store_all(hub, caller, spooler.parts, study, ae, store_one)
    finally:
        spooler.discard()
    for outcome in outcomes:
        if isinstance(outcome, Failure):
            LOGGER.info("STOW-RS part refused: 0x%04X %s", outcome.reason, outcome.comment)
            failed.append(outcome)
        else:
            stored.append(outcome)
    if not stored and not failed:
        raise Problem(400, "Malformed multipart", "the request holds no part")
    base = dicomweb_base(request)
    status = 200 if not failed else 202 if stored else 409
    headers = {}
    if failed:
        reasons = "; ".join(f"0x{f.reason:04X} {f.comment}" for f in failed[:5])
        headers["Warning"] = f'299 pacs-hub "{len(failed)} instance(s) not stored: {reasons}"'[
            :1000
        ]
    body = json.dumps(_response_body(base, stored, failed, study), separators=(",", ":"))
    return Response(body, status_code=status, media_type=DICOM_JSON, headers=headers)


@router.post("/studies")
async def store_instances(request: Request, hub: Hub, caller: CallerDep) -> Response:
    """Store instances of any studies (PS3.18 10.5.1)."""
    return await _store(request, hub, caller, None)


@router.post("/studies/{study}")
async def store_study_instances(
    request: Request, hub: Hub, caller: CallerDep, study: str
) -> Response:
    """Store instances of one study: others fail with 0xA900 (PS3.18 10.5.1)."""
    return await _store(request, hub, caller, check_uid("study", study))
