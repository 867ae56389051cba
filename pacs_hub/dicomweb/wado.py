"""WADO-RS retrieve (PS3.18 10.4): instances, frames and bulk data.

Resources (PS3.18 10.4.1, Table 10.4.1-1), all under ``/dicom-web``:

* ``/studies/{st}``, ``/studies/{st}/series/{se}``, ``.../instances/{sop}``:
  ``multipart/related; type="application/dicom"`` (PS3.18 8.7.3.2), one Part 10 file
  per part, streamed from the blob store a chunk at a time;
* ``.../instances/{sop}/frames/{1,2,...}``: one part per frame, in the order asked
  (PS3.18 10.4.1.1.5, frame numbers are 1-based);
* ``.../instances/{sop}/bulkdata/{tag path}``: the value of one element, the path being
  what the hub's BulkDataURIs end with (:mod:`pacs_hub.dicom.bulkdata`).

Transfer syntax negotiation (PS3.18 8.7.3.5, 8.7.5). The ``transfer-syntax`` media
type parameter of the Accept header selects the encoding:

* ``*``: as stored. For instances, the stored Part 10 file unchanged, byte for byte;
  for frames and bulk data, compressed frames with their own media type
  (``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jpx``, ``image/dicom-rle``,
  ``image/jphc``) and native pixels as little endian octets.
* ``1.2.840.10008.1.2.1`` (Explicit VR Little Endian): transcoded with pydicom and the
  pylibjpeg codecs when they can decode the stored syntax, else 406.
* the stored syntax's own UID: as stored.
* **absent: the PS3.18 default, Explicit VR Little Endian** (PS3.18 8.7.3: "If a
  Transfer Syntax parameter ... is not specified ..., the Transfer Syntax in the
  response shall be the ... default", Table 8.7.3-2 and 8.7.3-4 give 1.2.840.10008.1.2.1),
  **except** that an instance whose pixel data is stored lossy compressed is sent as
  stored: the same sentence of 8.7.3 exempts an origin server that "has only access
  to the pixel data in lossy compressed form", and decompressing it would add bytes,
  not quality. ``application/octet-stream`` frames are uncompressed by definition: with
  no parameter they are decoded, lossy or not.

Any other syntax, or a media type none of these resources has, is 406 (PS3.18 8.7.8),
decided for every instance before the first byte is sent. Implicit VR Little Endian
and Explicit VR Big Endian are never sent labelled as such (PS3.18 8.7.3 forbids them):
native frames and bulk data are little endian octets labelled 1.2.840.10008.1.2.1;
only ``transfer-syntax=*`` returns a stored file in those syntaxes, unchanged.

Access (issue 4): every resource asks the access policy for its study (action
retrieve) before anything is read: 403 problem+json with no data when refused, 404
for a study the hub does not hold. Decisions are audited; a viewer's run of frame and
bulk data requests on one study is recorded once a minute (:mod:`pacs_hub.trust.access`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from pacs_hub.dicom.bulkdata import (
    BadTagPath,
    NoSuchElement,
    TagPath,
    element_value,
    parse_tag_path,
)
from pacs_hub.dicom.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    PIXEL_TAGS,
    NoPixelData,
    StoredPixels,
    can_decode,
    decoded_frames,
    frame_source,
    is_native,
    stored_frames,
)
from pacs_hub.dicom.header import is_valid_uid
from pacs_hub.dicom.transcode import can_transcode, to_explicit_little_endian
from pacs_hub.dicomweb.access import Caller, CallerDep
from pacs_hub.dicomweb.multipart import (
    Acceptable,
    Part,
    acceptable,
    matches,
    multipart_bytes_response,
    multipart_response,
    parse_accept,
)
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.storage.query import Level
from pacs_hub.storage.retrieval import RetrieveItem, RetrieveRequest, select_instances
from pacs_hub.trust.principal import Action

LOGGER = logging.getLogger(__name__)
router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]

DICOM = "application/dicom"
CHUNK = 1 << 20
LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
    }
)
"""Transfer syntaxes whose pixel data may be lossy (PS3.5 A.4, 8.2)."""
FRAME_LIST = re.compile(r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*$")
INSTANCE_PATH = "/studies/{study}/series/{series}/instances/{sop}"


# --- lookups ---------------------------------------------------------------------------


def _check_uids(**uids: str) -> None:
    """400 for a UID that is not PS3.5 9.1 syntax (also stops any path traversal)."""
    for name, uid in uids.items():
        if not is_valid_uid(uid):
            raise Problem(400, "Invalid UID", f"{name} {uid[:70]!r} is not a UID (PS3.5 9.1)")


def find_instances(
    state: HubState,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    caller: Caller | None = None,
    resource: str = "instances",
) -> list[RetrieveItem]:
    """The stored instances a WADO-RS path names, once ``caller`` may retrieve the study;
    400 for a bad UID, 403 when the policy refuses, 404 when none."""
    keys: dict[Level, tuple[str, ...]] = {Level.STUDY: (study,)}
    named = {"StudyInstanceUID": study}
    level = Level.STUDY
    if series is not None:
        keys[Level.SERIES], named["SeriesInstanceUID"], level = (series,), series, Level.SERIES
    if sop is not None:
        keys[Level.IMAGE], named["SOPInstanceUID"], level = (sop,), sop, Level.IMAGE
    _check_uids(**named)
    if caller is not None:
        caller.check_study(Action.RETRIEVE, study, resource=resource)
    with state.database.reader() as session:
        items = select_instances(session, state.blobs, RetrieveRequest(level, keys))
    if not items:
        where = ", ".join(f"{k} {v}" for k, v in named.items())
        raise Problem(404, "Not found", f"no stored instance for {where}")
    return items


def _accepted(request: Request) -> list[Acceptable]:
    options = acceptable(parse_accept(request.headers.get("accept")))
    for option in options:
        syntax = option.transfer_syntax
        if syntax not in (None, "*") and not is_valid_uid(syntax):
            raise Problem(400, "Invalid Accept header", f"transfer-syntax {syntax[:70]!r}")
    return options


def _not_acceptable(what: str, options: Sequence[Acceptable]) -> Problem:
    asked = "; ".join(f"{o.media_type} transfer-syntax={o.transfer_syntax}" for o in options)
    return Problem(406, "Not Acceptable", f"{what}; accepted: {asked or 'nothing'}")


# --- instances ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _InstancePlan:
    item: RetrieveItem
    transcode: bool

    @property
    def transfer_syntax(self) -> str:
        return EXPLICIT_VR_LITTLE_ENDIAN if self.transcode else self.item.transfer_syntax_uid


def _plan_instance(item: RetrieveItem, options: Sequence[Acceptable]) -> _InstancePlan | None:
    stored = item.transfer_syntax_uid
    for option in options:
        if not matches(option.media_type, DICOM):
            continue
        syntax = option.transfer_syntax
        if syntax in ("*", stored) or (syntax is None and stored in LOSSY):
            return _InstancePlan(item, transcode=False)
        if syntax in (None, EXPLICIT_VR_LITTLE_ENDIAN) and can_transcode(stored):
            return _InstancePlan(item, transcode=stored != EXPLICIT_VR_LITTLE_ENDIAN)
    return None


def _transcoded(item: RetrieveItem) -> bytes:
    """The instance in Explicit VR Little Endian; 406 when its pixel data cannot be decoded."""
    try:
        return to_explicit_little_endian(item.blob, item.transfer_syntax_uid)
    except Exception as exc:  # pydicom and the codecs raise many types on bad data
        LOGGER.warning("transcoding %s failed: %s", item.sop_instance_uid, exc)
        raise Problem(
            406,
            "Not Acceptable",
            f"instance {item.sop_instance_uid} cannot be transcoded from "
            f"{item.transfer_syntax_uid} to {EXPLICIT_VR_LITTLE_ENDIAN}: {type(exc).__name__}",
        ) from exc


def _chunked(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _instance_parts(plans: Iterable[_InstancePlan]) -> Iterator[Part]:
    """One part per instance; a transcoding that fails mid-stream ends the response
    without its closing boundary, so the client sees it was cut short."""
    for plan in plans:
        if plan.transcode:
            yield Part(DICOM, plan.transfer_syntax, _chunked(_transcoded(plan.item)))
        else:
            blob = plan.item.blob
            yield Part(DICOM, plan.transfer_syntax, blob.chunks(CHUNK), blob.size)


def _retrieve(request: Request, items: list[RetrieveItem]) -> Response:
    options = _accepted(request)
    if not any(matches(o.media_type, DICOM) for o in options):
        raise _not_acceptable("instances are sent as application/dicom", options)
    plans = []
    for item in items:
        plan = _plan_instance(item, options)
        if plan is None:
            raise _not_acceptable(
                f"instance {item.sop_instance_uid} is stored in {item.transfer_syntax_uid}, "
                f"which is sent as stored or as {EXPLICIT_VR_LITTLE_ENDIAN} only when decodable",
                options,
            )
        plans.append(plan)
    if len(plans) == 1 and plans[0].transcode:  # one instance: fail with a clean 406
        data = _transcoded(plans[0].item)
        return multipart_bytes_response([Part(DICOM, EXPLICIT_VR_LITTLE_ENDIAN, [data])], DICOM)
    parts = _instance_parts(plans)  # all known before the first byte unless transcoded
    return multipart_response(parts if any(p.transcode for p in plans) else list(parts), DICOM)


@router.get("/studies/{study}")
def retrieve_study(study: str, request: Request, state: Hub, caller: CallerDep) -> Response:
    """Retrieve Study (PS3.18 10.4.1.1.1): every instance of the study."""
    return _retrieve(request, find_instances(state, study, caller=caller))


@router.get("/studies/{study}/series/{series}")
def retrieve_series(
    study: str, series: str, request: Request, state: Hub, caller: CallerDep
) -> Response:
    """Retrieve Series (PS3.18 10.4.1.1.1)."""
    return _retrieve(request, find_instances(state, study, series, caller=caller))


@router.get(INSTANCE_PATH)
def retrieve_instance(
    study: str, series: str, sop: str, request: Request, state: Hub, caller: CallerDep
) -> Response:
    """Retrieve Instance (PS3.18 10.4.1.1.1)."""
    return _retrieve(request, find_instances(state, study, series, sop, caller))


# --- frames and bulk data ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PixelPlan:
    media_type: str
    transfer_syntax: str
    decode: bool


def _plan_pixels(pixels: StoredPixels, options: Sequence[Acceptable]) -> _PixelPlan | None:
    """How frames go out for the first acceptable option (PS3.18 8.7.3.3)."""
    syntax = pixels.transfer_syntax_uid
    stored = _PixelPlan(
        pixels.media_type,
        EXPLICIT_VR_LITTLE_ENDIAN if is_native(syntax) else syntax,
        decode=False,
    )
    for option in options:
        wanted = option.transfer_syntax
        if wanted == "*" and matches(option.media_type, OCTET_STREAM):
            return stored  # OHIF: octet-stream + transfer-syntax=* means "as stored"
        if wanted in (None, "*", stored.transfer_syntax) and matches(
            option.media_type, stored.media_type
        ):
            return stored
        if (
            wanted in (None, EXPLICIT_VR_LITTLE_ENDIAN)
            and matches(option.media_type, OCTET_STREAM)
            and can_decode(syntax)
        ):
            return _PixelPlan(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, decode=True)
    return None


def pixels_of(item: RetrieveItem, status: int = 404, title: str = "Not found") -> StoredPixels:
    """Where the instance's Pixel Data is; ``status`` (404: no frames) when it has none."""
    try:
        return frame_source(item.blob, item.transfer_syntax_uid)
    except NoPixelData:
        raise Problem(
            status, title, f"instance {item.sop_instance_uid} has no pixel data"
        ) from None


def _frame_numbers(text: str, count: int) -> list[int]:
    if not FRAME_LIST.match(text.replace(" ", "")):
        raise Problem(400, "Invalid frame list", f"{text[:40]!r}: expected 1-based numbers, 1,2,3")
    numbers = [int(n) for n in text.replace(" ", "").split(",")]
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise Problem(404, "Not found", f"frame {beyond[0]} beyond the {count} frame(s) stored")
    return numbers


def _frame_parts(pixels: StoredPixels, plan: _PixelPlan, indexes: list[int]) -> Iterator[Part]:
    frames = decoded_frames(pixels, indexes) if plan.decode else stored_frames(pixels, indexes)
    for frame in frames:
        yield Part(plan.media_type, plan.transfer_syntax, (frame,))


def _frame_now(pixels: StoredPixels, plan: _PixelPlan, index: int) -> list[Part]:
    """One frame read (and decoded) before the response starts, so bad data is a clean
    problem: 406 when a codestream cannot be decoded, 500 when the stored frame is missing."""
    try:
        frames = decoded_frames if plan.decode else stored_frames
        [frame] = frames(pixels, [index])
    except Exception as exc:  # pydicom and the codecs raise many types on bad data
        LOGGER.warning("frame %d of %s: %s", index + 1, pixels.blob.label, exc)
        if not plan.decode:
            raise Problem(
                500, "Unreadable pixel data", f"frame {index + 1} cannot be read: {exc}"
            ) from exc
        raise Problem(
            406,
            "Not Acceptable",
            f"frame {index + 1} cannot be decoded from {pixels.transfer_syntax_uid}: "
            f"{type(exc).__name__}",
        ) from exc
    return [Part(plan.media_type, plan.transfer_syntax, (frame,))]


@router.get(INSTANCE_PATH + "/frames/{frame_list}")
def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frame_list: str,
    request: Request,
    state: Hub,
    caller: CallerDep,
) -> Response:
    """Retrieve Frames (PS3.18 10.4.1.1.5): one part per frame, in the order asked."""
    item = find_instances(state, study, series, sop, caller, "frames")[0]
    options = _accepted(request)
    pixels = pixels_of(item)
    numbers = _frame_numbers(frame_list, pixels.number_of_frames)
    plan = _plan_pixels(pixels, options)
    if plan is None:
        raise _not_acceptable(
            f"frames are stored as {pixels.media_type} in {pixels.transfer_syntax_uid}", options
        )
    indexes = [n - 1 for n in numbers]
    if len(indexes) == 1:  # what viewers ask for: read before answering
        return multipart_bytes_response(_frame_now(pixels, plan, indexes[0]), plan.media_type)
    return multipart_response(_frame_parts(pixels, plan, indexes), plan.media_type)


def _steps(text: str) -> TagPath:
    try:
        return parse_tag_path(text)
    except BadTagPath as exc:
        raise Problem(400, "Invalid bulk data path", str(exc)) from None


def _pixel_data_parts(item: RetrieveItem, options: Sequence[Acceptable]) -> Response:
    """Encapsulated Pixel Data as bulk data: one part per frame (PS3.18 8.7.3.3.2)."""
    pixels = pixels_of(item)
    plan = _plan_pixels(pixels, options)
    if plan is None:
        raise _not_acceptable(f"pixel data is stored in {pixels.transfer_syntax_uid}", options)
    indexes = list(range(pixels.number_of_frames))
    if plan.decode:  # the uncompressed value: every frame, one part
        part = Part(OCTET_STREAM, plan.transfer_syntax, decoded_frames(pixels, indexes))
        return multipart_response([part], OCTET_STREAM)
    return multipart_response(_frame_parts(pixels, plan, indexes), plan.media_type)


@router.get(INSTANCE_PATH + "/bulkdata/{tag_path:path}")
def retrieve_bulkdata(
    study: str,
    series: str,
    sop: str,
    tag_path: str,
    request: Request,
    state: Hub,
    caller: CallerDep,
) -> Response:
    """Retrieve Bulkdata (PS3.18 10.4.1.1.4) of the element ``tag_path`` names."""
    item = find_instances(state, study, series, sop, caller, "bulkdata")[0]
    steps = _steps(tag_path)
    options = _accepted(request)
    is_pixels = len(steps) == 1 and steps[0][0] in PIXEL_TAGS
    if is_pixels and not is_native(item.transfer_syntax_uid):
        return _pixel_data_parts(item, options)
    if not any(matches(o.media_type, OCTET_STREAM) for o in options):
        raise _not_acceptable("bulk data is sent as application/octet-stream", options)
    try:
        value = element_value(item.blob, item.transfer_syntax_uid, steps)
    except NoSuchElement as exc:
        raise Problem(404, "Not found", f"instance {item.sop_instance_uid}: {exc}") from None
    syntax = EXPLICIT_VR_LITTLE_ENDIAN if is_pixels else None
    single = (request.headers.get("accept") or "").strip().lower() == OCTET_STREAM
    if single:  # a bare application/octet-stream Accept: one single-part body (PS3.18 8.6.1)
        return Response(b"".join(value.chunks()), media_type=OCTET_STREAM)
    return multipart_response([Part(OCTET_STREAM, syntax, value.chunks())], OCTET_STREAM)
