"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 9.5.1.2.x; 8.3.5.1).

``/rendered`` and ``/thumbnail`` at study, series, instance and frame level, answered
with one consumer image: ``image/jpeg`` (the default, also for ``*/*`` and
``image/*``), ``image/png`` or ``image/gif`` by Accept, else 406.

* Study and series level render a representative instance: the middle image
  (instances with pixel data, by Series Number then Instance Number), as PS3.18
  9.5.1.2.1 lets the origin server choose. Instance level renders the first frame;
  frame level the one frame named (a single 1-based number).
* Query parameters (PS3.18 8.3.5.1): ``window=center,width[,linear|linear-exact|sigmoid]``,
  ``viewport=vw,vh[,sx,sy,sw,sh]`` (source region cropped, then fitted, aspect
  ratio kept), ``quality=1..100`` (JPEG). Without a
  window the stored one is used (:mod:`pacs_hub.dicom.render`). A bad value is 400.
* ``/thumbnail`` is the same rendering fitted into 128x128 unless a viewport is given.

Access (issue 4): the access policy decides for the study first (action retrieve; 403
with no image when refused), audited once a minute per caller and study
(:mod:`pacs_hub.dicomweb.access`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pacs_hub.dicom.frames import StoredPixels, can_decode
from pacs_hub.dicom.render import (
    PIL_FORMATS,
    RenderOptions,
    Viewport,
    parse_viewport,
    parse_window,
    render_frame,
)
from pacs_hub.dicomweb.access import Caller, CallerDep
from pacs_hub.dicomweb.multipart import parse_accept
from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.state import HubState
from pacs_hub.dicomweb.wado import INSTANCE_PATH, find_instances, pixels_of
from pacs_hub.storage.query import Level
from pacs_hub.storage.retrieval import RetrieveItem, RetrieveRequest, representative_instance

router = APIRouter()
THUMBNAIL_VIEWPORT = Viewport(128, 128)
DEFAULT_MEDIA = "image/jpeg"


def _media_type(accept: str | None) -> str:
    for media in parse_accept(accept):
        if media.media_type in PIL_FORMATS:
            return media.media_type
        if media.media_type in ("*/*", "image/*"):
            return DEFAULT_MEDIA
    offered = ", ".join(PIL_FORMATS)
    raise Problem(406, "Not Acceptable", f"rendered images are {offered}; asked {accept!r}")


def _options(request: Request, thumbnail: bool) -> RenderOptions:
    media_type = _media_type(request.headers.get("accept"))
    query = request.query_params
    try:
        window = parse_window(query["window"]) if "window" in query else None
        viewport = parse_viewport(query["viewport"]) if "viewport" in query else None
        quality = int(query.get("quality", "90"))
    except ValueError as exc:
        raise Problem(400, "Invalid query parameter", str(exc)) from None
    if not 1 <= quality <= 100:
        raise Problem(400, "Invalid query parameter", f"quality {quality}: expected 1 to 100")
    if viewport is None and thumbnail:
        viewport = THUMBNAIL_VIEWPORT
    return RenderOptions(media_type, window, viewport, quality)


def _pixels(item: RetrieveItem) -> StoredPixels:
    if not can_decode(item.transfer_syntax_uid):
        raise Problem(406, "Not Acceptable", f"no decoder for {item.transfer_syntax_uid}")
    return pixels_of(item, 406, "Not Acceptable")


def _render(item: RetrieveItem, index: int, options: RenderOptions) -> Response:
    pixels = _pixels(item)
    if index >= pixels.number_of_frames:
        raise Problem(
            404, "Not found", f"frame {index + 1} beyond the {pixels.number_of_frames} stored"
        )
    try:
        body = render_frame(pixels, index, options)
    except Exception as exc:  # pydicom and the codecs raise many types on bad data
        raise Problem(
            406, "Not Acceptable", f"pixel data cannot be decoded: {type(exc).__name__}"
        ) from exc
    return Response(body, media_type=options.media_type)


def _representative(
    state: HubState, caller: Caller, study: str, series: str | None
) -> RetrieveItem:
    find_instances(state, study, series, caller=caller, resource="rendered")  # 400/403/404 first
    keys: dict[Level, tuple[str, ...]] = {Level.STUDY: (study,)}
    level = Level.STUDY
    if series is not None:
        keys[Level.SERIES], level = (series,), Level.SERIES
    with state.database.reader() as session:
        item = representative_instance(session, state.blobs, RetrieveRequest(level, keys))
    if item is None:
        raise Problem(406, "Not Acceptable", "no instance with pixel data to render")
    return item


def _frame_index(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 9:
        raise Problem(400, "Invalid frame number", f"{text[:20]!r}: expected one 1-based number")
    return int(text) - 1


def _study(study: str, request: Request, caller: Caller, thumbnail: bool) -> Response:
    options = _options(request, thumbnail)
    return _render(_representative(caller.hub, caller, study, None), 0, options)


def _series(study: str, series: str, request: Request, caller: Caller, thumbnail: bool) -> Response:
    options = _options(request, thumbnail)
    return _render(_representative(caller.hub, caller, study, series), 0, options)


def _instance(
    study: str, series: str, sop: str, frame: int, request: Request, caller: Caller, thumb: bool
) -> Response:
    options = _options(request, thumb)
    item = find_instances(caller.hub, study, series, sop, caller, "rendered")[0]
    return _render(item, frame, options)


@router.get("/studies/{study}/rendered")
def study_rendered(study: str, request: Request, caller: CallerDep) -> Response:
    """Rendered study (PS3.18 10.4.1.1.3): its representative image."""
    return _study(study, request, caller, thumbnail=False)


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(study: str, request: Request, caller: CallerDep) -> Response:
    """Study thumbnail (PS3.18 9.5.1.2.1)."""
    return _study(study, request, caller, thumbnail=True)


@router.get("/studies/{study}/series/{series}/rendered")
def series_rendered(study: str, series: str, request: Request, caller: CallerDep) -> Response:
    """Rendered series: its representative (middle) image."""
    return _series(study, series, request, caller, thumbnail=False)


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: str, series: str, request: Request, caller: CallerDep) -> Response:
    """Series thumbnail."""
    return _series(study, series, request, caller, thumbnail=True)


@router.get(INSTANCE_PATH + "/rendered")
def instance_rendered(
    study: str, series: str, sop: str, request: Request, caller: CallerDep
) -> Response:
    """Rendered instance: its first frame."""
    return _instance(study, series, sop, 0, request, caller, thumb=False)


@router.get(INSTANCE_PATH + "/thumbnail")
def instance_thumbnail(
    study: str, series: str, sop: str, request: Request, caller: CallerDep
) -> Response:
    """Instance thumbnail."""
    return _instance(study, series, sop, 0, request, caller, thumb=True)


@router.get(INSTANCE_PATH + "/frames/{frame}/rendered")
def frame_rendered(
    study: str, series: str, sop: str, frame: str, request: Request, caller: CallerDep
) -> Response:
    """Rendered frame (PS3.18 10.4.1.1.3): one 1-based frame number."""
    index = _frame_index(frame)
    return _instance(study, series, sop, index, request, caller, thumb=False)


@router.get(INSTANCE_PATH + "/frames/{frame}/thumbnail")
def frame_thumbnail(
    study: str, series: str, sop: str, frame: str, request: Request, caller: CallerDep
) -> Response:
    """Frame thumbnail."""
    index = _frame_index(frame)
    return _instance(study, series, sop, index, request, caller, thumb=True)
