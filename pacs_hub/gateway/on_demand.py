"""Retrieve on demand: a C-MOVE or C-GET for a study the hub lacks pulls it first.

When the hub's C-MOVE SCP (PS3.4 C.4.2) or C-GET SCP (C.4.3) is asked for studies it
does not hold, each missing study named by the Identifier's Study Instance UID
(STUDY, SERIES or IMAGE level; one value or a List of UID) is looked for on the
establishment PACS (a federated STUDY-level C-FIND,
:func:`~pacs_hub.regional.federation.remote_source`) and pulled into the hub
(:func:`~pacs_hub.regional.pull.pull_study`: C-MOVE to the hub, one ingest path,
single flight). The instances are then selected again and served as usual.

While the pull runs, the requestor gets Pending responses (C.4.2.1.5, C.4.3.1.4)
carrying the number of sub-operations to come (Number of Remaining Sub-operations =
the instances expected from the PACS, none completed yet), at most one a second, so
it sees the retrieve is alive. A pull that fails leaves what arrived; the request is
answered with whatever the hub then holds (none: Success with zero sub-operations,
as for any retrieve that matches nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.events import Event
from sqlalchemy import select

from pacs_hub.dicom.header import is_valid_uid
from pacs_hub.errors import HubError
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import PENDING
from pacs_hub.regional.federation import remote_source
from pacs_hub.regional.pull import get_job, pull_study
from pacs_hub.storage.models import Study

LOGGER = logging.getLogger(__name__)
PENDING_EVERY = 1.0
T = TypeVar("T")


def named_studies(event: Event) -> list[str]:
    """The Study Instance UIDs the retrieve Identifier names (valid UIDs only)."""
    try:
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        value: Any = identifier.get("StudyInstanceUID")
    except Exception:  # pydicom decodes lazily; the retrieve itself reports the error
        return []
    if level not in {"STUDY", "SERIES", "IMAGE"} or value in (None, ""):
        return []
    values = [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
    return [v.strip() for v in values if is_valid_uid(v.strip())]


def missing_studies(ctx: GatewayContext, studies: list[str]) -> list[str]:
    """The studies of ``studies`` the hub holds no instance of."""
    if not studies:
        return []
    with ctx.database.reader() as session:
        held = set(
            session.scalars(
                select(Study.study_instance_uid).where(
                    Study.study_instance_uid.in_(studies), Study.num_instances > 0
                )
            )
        )
    return [s for s in dict.fromkeys(studies) if s not in held]


class PendingSender:
    """Sends Pending C-MOVE / C-GET responses on the requestor's association."""

    def __init__(self, event: Event) -> None:
        self.event = event
        self.sent = 0.0
        self.last: int | None = None

    def __call__(self, received: int, expected: int | None) -> None:
        if expected is None or expected <= 0:
            return
        if expected == self.last and time.monotonic() - self.sent < PENDING_EVERY:
            return
        request = cast(C_MOVE | C_GET, self.event.request)
        rsp = C_MOVE() if isinstance(request, C_MOVE) else C_GET()
        rsp.MessageIDBeingRespondedTo = request.MessageID
        rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
        rsp.Status = PENDING
        rsp.NumberOfRemainingSuboperations = min(expected, 0xFFFF)
        rsp.NumberOfCompletedSuboperations = 0
        rsp.NumberOfFailedSuboperations = 0
        rsp.NumberOfWarningSuboperations = 0
        self.sent, self.last = time.monotonic(), expected
        try:
            self.event.assoc.dimse.send_msg(rsp, self.event.context.context_id)
        except Exception:  # the requestor went away: the pull goes on regardless
            LOGGER.debug("pending response not sent", exc_info=True)


def complete(event: Event, ctx: GatewayContext, matches: T, reselect: Callable[[], T]) -> T:
    """``matches``, or after pulling the named studies the hub lacks, ``reselect()``."""
    if isinstance(matches, Dataset):
        return matches  # a failure status: the Identifier is wrong, nothing to pull
    missing = missing_studies(ctx, named_studies(event))
    pulled = 0
    for study in missing:
        try:
            pulled += _pull(event, ctx, study)
        except HubError as exc:
            LOGGER.info("retrieve on demand: study %s not pulled: %s", study, exc.message)
        except Exception:  # the SCP's adapter: the retrieve still gets an answer
            LOGGER.exception("retrieve on demand: study %s: unexpected error", study)
    return reselect() if pulled else matches


def _pull(event: Event, ctx: GatewayContext, study: str) -> int:
    """Pull one study from the PACS holding it; 1 if a pull ran, 0 if no PACS has it."""
    source = remote_source(ctx.settings, ctx.database, study)
    if source is None:
        LOGGER.info("retrieve on demand: study %s is on no PACS node", study)
        return 0
    job_id = pull_study(ctx.settings, ctx.database, source, study, progress=PendingSender(event))
    job = get_job(ctx.database, job_id)
    state = job.state if job else "?"
    LOGGER.info("retrieve on demand: study %s from %s: job %d %s", study, source, job_id, state)
    return 1
