"""Retrieve on demand: a C-MOVE or C-GET for a study the hub lacks pulls it and streams it.

When the hub's C-MOVE SCP (PS3.4 C.4.2) or C-GET SCP (C.4.3) is asked for studies it
does not hold, each missing study named by the Identifier's Study Instance UID
(STUDY, SERIES or IMAGE level; one value or a List of UID) is looked for on the
establishment PACS (a federated STUDY-level C-FIND,
:func:`~pacs_hub.regional.federation.remote_source`), asked for its Number of Study
Related Instances and SOP Classes in Study (:func:`~pacs_hub.regional.pull.remote_study`),
and pulled into the hub on a thread (:func:`~pacs_hub.regional.pull.pull_study`: C-MOVE
to the hub, one ingest path, single flight: a second requestor of the study waits for
the first one's job and is fed from the index the same way).

A :class:`Feed` hands the retrieve its instances as they become durable: the hub
acknowledges a pulled C-STORE only once the instance is in the index, so each new
index row of the named studies can be sent at once. The number of sub-operations
(C.4.2.1.5, C.4.3.1.4), which must be given before the first one, is what the hub held
plus the remote count; a STUDY-level retrieve whose counts are all known is streamed,
anything else (SERIES or IMAGE level, a PACS that does not answer the count, more than
65535) waits for the pull to end and is then served like any other retrieve.

Until the first instance is there, the requestor gets Pending responses carrying the
number of sub-operations to come, at most one a second, so it sees the retrieve is
alive. A pull that fails midway ends the retrieve with Warning 0xB000: what was sent
counted as completed, the instances that never came counted as failed (pynetdicom adds
the remaining ones), the Failed SOP Instance UID List naming the sub-operations that
failed toward the requestor (the UIDs the PACS never sent are unknown to the hub). A
pull that fails with nothing held answers with whatever the hub then holds (none:
Success with zero sub-operations, as for any retrieve that matches nothing). A PACS
whose count was short (the study grew after its C-FIND) has its extra instances stored
but not sent by this retrieve (pynetdicom stops at the number announced); the next
retrieve of the study sends them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.events import Event
from sqlalchemy import func, select

from pacs_hub.dicom.header import is_valid_uid
from pacs_hub.errors import HubError
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import PENDING
from pacs_hub.regional.federation import remote_source
from pacs_hub.regional.pull import ACTIVE, get_job, pull_study, remote_study
from pacs_hub.storage.models import Instance, RetrieveJob, Series, Study
from pacs_hub.storage.retrieval import RetrieveItem

LOGGER = logging.getLogger(__name__)
PENDING_EVERY = 1.0
POLL_EVERY = 0.05
"""Seconds between index polls while a pull runs and nothing arrived (a progress
report wakes it sooner)."""
BATCH_EVERY = 0.05
"""Fewest seconds between two index polls while a pull runs: the instances made durable
meanwhile go out as one batch. A pull reports every instance; one selection and one
access check per instance cost the hub more than sending it (measured 2026-11-30: a
third of the hub's CPU while streaming a 500-instance study)."""
MAX_SUB_OPERATIONS = 0xFFFF
Select = Callable[[int], list[RetrieveItem] | Dataset]
"""The retrieve's matches whose index row id is above the argument (0: all)."""


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


def _level(event: Event) -> str:
    try:
        return str(event.identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception:  # the retrieve itself reports the error
        return ""


def missing_studies(ctx: GatewayContext, studies: list[str]) -> list[str]:
    """The studies of ``studies`` the hub holds no instance of, or is pulling now (a
    second requestor joins the running pull instead of getting a part of the study)."""
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
        pulling = set(
            session.scalars(
                select(RetrieveJob.study_instance_uid).where(
                    RetrieveJob.study_instance_uid.in_(studies), RetrieveJob.state.in_(ACTIVE)
                )
            )
        )
    return [s for s in dict.fromkeys(studies) if s not in held or s in pulling]


def held_of(ctx: GatewayContext, studies: list[str], up_to: int) -> int:
    """Instances of ``studies`` indexed with an id up to ``up_to`` (a pull's first part)."""
    if not studies or not up_to:
        return 0
    with ctx.database.reader() as session:
        count = session.scalar(
            select(func.count(Instance.id))
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid.in_(studies), Instance.id <= up_to)
        )
    return int(count or 0)


class PendingSender:
    """Sends Pending C-MOVE / C-GET responses on the requestor's association until
    :meth:`close` (then pynetdicom sends them, one per sub-operation)."""

    def __init__(self, event: Event) -> None:
        self.event = event
        self.sent = 0.0
        self.last: int | None = None
        self.lock = threading.Lock()
        self.closed = False

    def __call__(self, received: int, expected: int | None) -> None:
        if expected is None or expected <= 0:
            return
        with self.lock:  # never two DIMSE messages at once on one association
            if self.closed:
                return
            if expected == self.last and time.monotonic() - self.sent < PENDING_EVERY:
                return
            self._send(expected)

    def _send(self, expected: int) -> None:
        request = cast(C_MOVE | C_GET, self.event.request)
        rsp = C_MOVE() if isinstance(request, C_MOVE) else C_GET()
        rsp.MessageIDBeingRespondedTo = request.MessageID
        rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
        rsp.Status = PENDING
        rsp.NumberOfRemainingSuboperations = min(expected, MAX_SUB_OPERATIONS)
        rsp.NumberOfCompletedSuboperations = 0
        rsp.NumberOfFailedSuboperations = 0
        rsp.NumberOfWarningSuboperations = 0
        self.sent, self.last = time.monotonic(), expected
        try:
            self.event.assoc.dimse.send_msg(rsp, self.event.context.context_id)
        except Exception:  # the requestor went away: the pull goes on regardless
            LOGGER.debug("pending response not sent", exc_info=True)

    def close(self) -> None:
        """Send no more (waits for a response being sent)."""
        with self.lock:
            self.closed = True


class Pull:
    """The named studies the hub lacks, located then pulled one after the other on a
    thread; :attr:`wake` is set at each progress report and at the end."""

    def __init__(self, event: Event, ctx: GatewayContext, studies: list[str]) -> None:
        self.ctx = ctx
        self.studies = studies
        self.pending = PendingSender(event)
        self.located = threading.Event()
        self.finished = threading.Event()
        self.wake = threading.Event()
        self.expected: dict[str, int | None] = {}
        self.sop_classes: list[str] = []
        self.errors: list[str] = []
        self.pulled = 0
        self.thread = threading.Thread(target=self._run, name="retrieve-on-demand", daemon=True)

    def start(self) -> Pull:
        self.thread.start()
        return self

    def _run(self) -> None:
        sources: list[tuple[str, str]] = []
        try:
            sources = [(study, src) for study in self.studies if (src := self._locate(study))]
        finally:
            self.located.set()
        try:
            for study, source in sources:
                self._pull(study, source)
        finally:
            self.finished.set()
            self.wake.set()

    def _locate(self, study: str) -> str | None:
        """The PACS holding ``study`` (its counts recorded), or None (nothing to pull)."""
        settings, database = self.ctx.settings, self.ctx.database
        self.expected[study] = 0
        try:
            source = remote_source(settings, database, study)
        except HubError as exc:
            LOGGER.info("retrieve on demand: study %s not located: %s", study, exc.message)
            return None
        except Exception:  # the SCP's adapter: the retrieve still gets an answer
            LOGGER.exception("retrieve on demand: study %s: unexpected error", study)
            return None
        if source is None:
            LOGGER.info("retrieve on demand: study %s is on no PACS node", study)
            return None
        self.expected[study] = None
        try:
            found = remote_study(settings, database, source, study)
            self.expected[study] = found.instances
            self.sop_classes += found.sop_classes
        except Exception as exc:  # the count only decides streaming; the pull goes on
            LOGGER.info("retrieve on demand: study %s: no count from %s (%s)", study, source, exc)
        return source

    def _pull(self, study: str, source: str) -> None:
        settings, database = self.ctx.settings, self.ctx.database
        try:
            job_id = pull_study(settings, database, source, study, progress=self._progress)
        except HubError as exc:
            LOGGER.info("retrieve on demand: study %s not pulled: %s", study, exc.message)
            self.errors.append(exc.message)
            return
        except Exception as exc:  # the SCP's adapter: the retrieve still gets an answer
            LOGGER.exception("retrieve on demand: study %s: unexpected error", study)
            self.errors.append(f"internal error: {type(exc).__name__}")
            return
        self.pulled += 1
        job = get_job(database, job_id)
        state = job.state if job else "?"
        if job is None or job.state != "done":
            self.errors.append(job.error if job is not None and job.error else "pull failed")
        LOGGER.info("retrieve on demand: study %s from %s: job %d %s", study, source, job_id, state)

    def _progress(self, received: int, expected: int | None) -> None:
        self.pending(received, expected)
        self.wake.set()


class Feed:
    """The matches of a retrieve whose studies are being pulled, as they become durable."""

    def __init__(
        self, pull: Pull, level: str, held: list[RetrieveItem], choose: Select, partial: int
    ) -> None:
        self.pull = pull
        self.level = level
        self.held = held
        self.choose = choose
        self.partial = partial
        """Instances of ``held`` that belong to a study being pulled (in its remote count)."""
        self.seen = {item.sop_instance_uid for item in held}
        self.after = max((item.pk for item in held), default=0)

    @property
    def error(self) -> str:
        """Why a pull failed ('' when none did)."""
        return "; ".join(self.pull.errors)

    @property
    def sop_classes(self) -> list[str]:
        """The SOP classes the PACS named for the studies pulled."""
        return list(dict.fromkeys(self.pull.sop_classes))

    def total(self) -> int | None:
        """The number of sub-operations, when it can be known before the pull ends."""
        expected = list(self.pull.expected.values())
        if self.level != "STUDY" or any(count is None for count in expected):
            return None
        total = len(self.held) + max(0, sum(cast(list[int], expected)) - self.partial)
        return total if total <= MAX_SUB_OPERATIONS else None

    def _new(self, after: int) -> list[RetrieveItem]:
        found = self.choose(after)
        if isinstance(found, Dataset):
            LOGGER.warning("retrieve on demand: selection failed (0x%04X)", int(found.Status))
            return []
        new = [item for item in found if item.sop_instance_uid not in self.seen]
        self.seen.update(item.sop_instance_uid for item in new)
        self.after = max([self.after, *(item.pk for item in new)])
        return new

    def first(self) -> tuple[list[RetrieveItem], int] | None:
        """What can be sent now and the number of sub-operations (at once when the hub
        holds some, else once the first pulled instance is durable); None when the
        retrieve cannot be streamed."""
        self.pull.located.wait()
        total = self.total()
        if total is None:
            return None
        arrived: list[RetrieveItem] = []
        if not self.held:  # else those can go now
            self.pull.pending(0, total)
            for batch in self.batches():
                arrived = batch
                break
        self.pull.pending.close()
        items = self.held + arrived
        return (items, total) if items else None

    def batches(
        self, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[list[RetrieveItem]]:
        """Each set of instances made durable since the last, until the pulls end (then
        the ones a poll missed: a full selection less what was already handed out).

        Polls are :data:`BATCH_EVERY` apart at least, except the last one, made as soon
        as the pulls end."""
        while not cancelled():
            done = self.pull.finished.is_set()
            self.pull.wake.clear()
            polled = time.monotonic()
            new = self._new(0 if done else self.after)
            if new:
                yield new
            if done:
                return
            if not new:
                self.pull.wake.wait(POLL_EVERY)
            self.pull.finished.wait(BATCH_EVERY - (time.monotonic() - polled))

    def finish(self, matches: list[RetrieveItem]) -> list[RetrieveItem] | Dataset:
        """After the pulls end: every match (``matches`` when nothing was pulled)."""
        self.pull.finished.wait()
        self.pull.pending.close()
        return self.choose(0) if self.pull.pulled else matches


def open_feed(
    event: Event, ctx: GatewayContext, matches: list[RetrieveItem], choose: Select
) -> Feed | None:
    """A :class:`Feed` pulling the named studies the hub lacks, or None when it has them."""
    missing = missing_studies(ctx, named_studies(event))
    if not missing:
        return None
    partial = held_of(ctx, missing, max((item.pk for item in matches), default=0))
    return Feed(Pull(event, ctx, missing).start(), _level(event), matches, choose, partial)
