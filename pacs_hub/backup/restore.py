"""Restore (PRA): send an establishment's studies from the hub back to a rebuilt PACS.

``pacs-hub restore --establishment E --to NODE [--since DATE] [--studies UID ...]``
selects the establishment's studies in the hub (every study recorded as its own, and
those stored through the stand-in during an outage), or the named ones, and sends each
instance *as stored* (the blob's dataset bytes, in the transfer syntax it arrived in,
:mod:`pacs_hub.regional.forwarding`'s path), ``backup_restore_associations`` at
once: one study per association, or, with fewer studies than associations, each
study's instances shared by several (two large studies still use all four).

Every instance's answer is kept: Success or Warning (PS3.4 B.2.3) is restored,
anything else is a refusal with its status and meaning, and a presentation context
the PACS did not accept (a SOP class or transfer syntax it refuses, PS3.8 9.3.3.2)
is a refusal too, named. Progress is appended per study to the establishment's
journal (:func:`pacs_hub.backup.state.record`), so a restore killed mid-way
(kill -9) continues where it was when run again with the same target; a study cut
short is sent again whole (the PACS keeps one copy of a SOP Instance).

Verification at the end: a C-FIND per study and per series on the PACS, compared with
the hub's counts less the refused instances, and a sample of instances retrieved back
by C-GET whose dataset bytes (after the File Meta group) must have the SHA-256 of the
hub's blob, and, where the PACS supports it, Storage Commitment of every instance sent
(:mod:`pacs_hub.backup.commit`): an instance the PACS does not commit to makes the
restore incomplete. The report ends with a verdict.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from pacs_hub.backup import commit, inventory, remote, sample, state
from pacs_hub.config import Settings
from pacs_hub.errors import InvalidQuery, UnknownNode
from pacs_hub.gateway.egress import StoredFile, linked
from pacs_hub.gateway.retrieve import enable_stored_file_sends
from pacs_hub.regional import forwarding
from pacs_hub.regional.nodes import get_node
from pacs_hub.regional.scu import PacsNode
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Instance, Series, Study
from pacs_hub.storage.query import Level
from pacs_hub.storage.retrieval import RetrieveItem, RetrieveRequest, select_instances

LOGGER = logging.getLogger(__name__)
STORE_STATUS = {
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
}
DROPPED = "the association ended before this instance was sent"
RECONNECTS = 3
REJECTED_CONTEXT = "presentation context not accepted (SOP class or transfer syntax refused)"


@dataclass(frozen=True, slots=True)
class RestoreProgress:
    """How far a restore is."""

    studies_done: int
    studies_total: int
    instances_done: int
    instances_total: int
    bytes_done: int
    bytes_total: int
    eta_seconds: float | None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {name: getattr(self, name) for name in self.__slots__}


def _meaning(code: int) -> str:
    if 0xA700 <= code <= 0xA7FF:
        return "out of resources"
    if 0xC000 <= code <= 0xCFFF:
        return "cannot understand"
    return STORE_STATUS.get(code, "refused")


def target(database: Database, ae_title: str) -> PacsNode:
    """The registered node ``ae_title`` to restore to."""
    node = get_node(database, ae_title)
    if node is None:
        raise UnknownNode(f"no node with AE title {ae_title.strip()[:16]!r}")
    return PacsNode(node.pk, node.ae_title, node.host, node.port)


def select_studies(
    settings: Settings,
    database: Database,
    client: inventory.Client,
    since: str = "",
    studies: Sequence[str] = (),
) -> dict[str, tuple[int, int]]:
    """Study UID -> (instances, bytes) to restore: the establishment's, outage ones too."""
    outage = inventory.studies_of_instances(database, state.outage_instances(settings, client.code))
    stmt = select(Study.study_instance_uid, Study.num_instances, Study.size_bytes).where(
        Study.establishment_pk == client.establishment_pk
    )
    if since:
        stmt = stmt.where(Study.updated_at >= datetime.strptime(since, "%Y-%m-%d"))
    with database.reader() as session:
        chosen = {uid: (int(n), int(b)) for uid, n, b in session.execute(stmt).all()}
    chosen.update(inventory.study_counts(database, outage - set(chosen)))
    if studies:
        unknown = [u for u in studies if u not in chosen]
        if unknown:
            raise InvalidQuery(
                f"{len(unknown)} study(ies) not held for {client.code}: {unknown[0]}"
            )
        chosen = {u: chosen[u] for u in studies}
    return chosen


def _items(database: Database, blobs: BlobStore, study: str) -> list[RetrieveItem]:
    request = RetrieveRequest(Level.STUDY, {Level.STUDY: (study,)})
    with database.reader() as session:
        return select_instances(session, blobs, request)


def _send_one(assoc: Any, stored: StoredFile) -> tuple[int, str]:
    """``(status, reason)`` of one C-STORE (-1 when none came back)."""
    try:
        answer = assoc.send_c_store(stored)
    except ValueError:
        return -1, REJECTED_CONTEXT
    except RuntimeError:  # pynetdicom: the association ended between two messages
        return -1, DROPPED
    except OSError as exc:
        return -1, f"{type(exc).__name__}: {exc}"
    if answer is None or not answer:
        return -1, "no answer (timeout or abort)"
    code = int(answer.get("Status", -1))
    comment = str(answer.get("ErrorComment", "") or "")
    return code, f"0x{code:04X} {_meaning(code)}" + (f": {comment}" if comment else "")


def send_study(
    settings: Settings, where: PacsNode, items: Sequence[RetrieveItem], parallel: int = 1
) -> tuple[int, list[dict[str, Any]]]:
    """C-STORE every item; ``(restored, refusals)``, each refusal with status and reason.

    ``parallel`` associations share the items (a few large studies still use every
    association the restore may open). An association the PACS releases or aborts part
    way is opened again (up to :data:`RECONNECTS` times per batch) for the items not yet
    answered, so a busy PACS dropping one association does not turn the rest of the
    study into refusals.
    """
    if parallel > 1 and len(items) > parallel:
        shares = [items[start::parallel] for start in range(parallel)]
        with ThreadPoolExecutor(parallel, "restore-study") as pool:
            results = list(pool.map(lambda share: send_study(settings, where, share), shares))
        return sum(r[0] for r in results), [x for r in results for x in r[1]]
    sent, refused = 0, []
    destination = forwarding.Destination(where.ae_title, where.host, where.port)
    for batch in forwarding._batches(items):
        pending = list(batch)
        for attempt in range(RECONNECTS + 1):
            ae = forwarding._application_entity(settings, batch)
            assoc = ae.associate(where.host, where.port, ae_title=where.ae_title)
            if not assoc.is_established:
                reason = forwarding._association_failure(assoc, destination)
                if remote.echoes(settings, where):  # it answers, but accepted none of the contexts
                    reason = REJECTED_CONTEXT
                refused += [_refusal(i, -1, reason) for i in pending]
                pending = []
                break
            try:
                done, refusals = _send_on(assoc, pending)
                sent += done
                refused += refusals
            finally:
                if assoc.is_established:
                    assoc.release()
            if not pending:
                break
            if attempt == RECONNECTS:
                refused += [_refusal(i, -1, "the PACS released or aborted") for i in pending]
    return sent, refused


def _send_on(assoc: Any, pending: list[RetrieveItem]) -> tuple[int, list[dict[str, Any]]]:
    """Send ``pending`` (consumed from the front) while the association lasts, each
    instance's bytes read while the PACS stores the one before (egress.linked)."""
    sent, refused = 0, []
    for stored in linked(list(pending)):
        if not assoc.is_established:
            break
        code, reason = _send_one(assoc, stored)
        if code == -1 and reason == DROPPED:
            break  # answered by no one: sent again on a new association
        item = pending.pop(0)
        if forwarding._is_stored(code):
            sent += 1
        else:
            refused.append(_refusal(item, code, reason))
    return sent, refused


def _refusal(item: RetrieveItem, code: int, reason: str) -> dict[str, Any]:
    return {
        "sop_instance_uid": item.sop_instance_uid,
        "sop_class_uid": item.sop_class_uid,
        "status": code,
        "reason": reason,
    }


def _begin(
    settings: Settings, code: str, to: str, chosen: dict[str, tuple[int, int]], fresh: bool
) -> dict[str, Any]:
    def change(current: state.State) -> None:
        run = current.get("restore") or {}
        if fresh or run.get("to") != to or run.get("state") != "running":
            run = {"to": to, "state": "running", "started_at": state.now_iso(), "studies": {}}
        for uid, (count, size) in chosen.items():
            run["studies"].setdefault(uid, {"n": count, "bytes": size, "done": False})
        current["restore"] = run

    return dict(state.update(settings, code, change)["restore"])


def _progress(run: dict[str, Any], started: float, sent_now: int) -> RestoreProgress:
    studies = run["studies"].values()
    done = [s for s in studies if s.get("done")]
    total = sum(int(s["n"]) for s in studies)
    instances = sum(int(s["n"]) for s in done)
    rate = sent_now / max(time.monotonic() - started, 1e-3)
    eta = (total - instances) / rate if sent_now else None
    return RestoreProgress(
        len(done),
        len(run["studies"]),
        instances,
        total,
        sum(int(s["bytes"]) for s in done),
        sum(int(s["bytes"]) for s in studies),
        eta,
    )


def send_all(
    settings: Settings,
    database: Database,
    code: str,
    where: PacsNode,
    run: dict[str, Any],
    report: Callable[[RestoreProgress], None] | None,
) -> None:
    """Send every study of ``run`` not yet done, in parallel associations."""
    enable_stored_file_sends()
    blobs = BlobStore(settings.data_dir)
    pending = [u for u, s in run["studies"].items() if not s.get("done")]
    started, counter, lock = time.monotonic(), [0], threading.Lock()

    associations = settings.backup_restore_associations
    per_study = max(1, associations // max(1, min(associations, len(pending))))

    def one(uid: str) -> None:
        sent, refused = send_study(settings, where, _items(database, blobs, uid), per_study)

        outcome = {"done": True, "sent": sent, "refused": refused}
        state.record(settings, code, "restore", uid, outcome)
        with lock:
            run["studies"][uid].update(outcome)  # this run's copy, for the progress
            counter[0] += sent + len(refused)
            progress = _progress(run, started, counter[0])
        if report is not None:
            report(progress)

    with ThreadPoolExecutor(settings.backup_restore_associations, "restore") as pool:
        for _ in pool.map(one, pending):
            pass


def verify(
    settings: Settings, database: Database, where: PacsNode, run: dict[str, Any]
) -> list[dict[str, Any]]:
    """Studies whose counts on the PACS differ from what was restored (C-FIND)."""
    with remote.series_finder(settings, where) as finder:
        return [
            p
            for p in (
                _verify_study(database, finder, u, e) for u, e in sorted(run["studies"].items())
            )
            if p is not None
        ]


def _verify_study(
    database: Database, finder: remote.SeriesFinder, uid: str, entry: dict[str, Any]
) -> dict[str, Any] | None:
    """The series of ``uid`` whose count on the PACS is not what was restored, or None."""
    refused = {r["sop_instance_uid"] for r in entry.get("refused", [])}
    expected = inventory.hub_series(database, uid)
    if refused:
        expected = _less_refused(database, uid, refused, expected)
    found = {s.series_instance_uid: s.instances for s in finder.series(uid)}
    diff = {
        s: {"restored": expected.get(s, 0), "pacs": found.get(s)}
        for s in sorted(set(expected) | set(found))
        if expected.get(s, 0) != (found.get(s) or 0)
    }
    return {"study": uid, "series": diff} if diff else None


def _less_refused(
    database: Database, study: str, refused: set[str], counts: dict[str, int]
) -> dict[str, int]:
    stmt = (
        select(Series.series_instance_uid, Instance.sop_instance_uid)
        .join(Instance, Instance.series_pk == Series.id)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.study_instance_uid == study)
    )
    result = dict(counts)
    with database.reader() as session:
        for series, sop in session.execute(stmt).all():
            if sop in refused:
                result[series] -= 1
    return {k: v for k, v in result.items() if v > 0}


def restore(
    settings: Settings,
    database: Database,
    code: str,
    to: str,
    *,
    since: str = "",
    studies: Sequence[str] = (),
    fresh: bool = False,
    sample_size: int = 5,
    report: Callable[[RestoreProgress], None] | None = None,
) -> dict[str, Any]:
    """Restore ``code``'s studies to node ``to``; the final report (also in the state)."""
    client = inventory.client(settings, database, code)
    where = target(database, to)
    chosen = select_studies(settings, database, client, since, studies)
    with state.exclusive(settings, code, "restore") as mine:
        if not mine:
            raise InvalidQuery(f"a restore of {code} is already running")
        run = _begin(settings, code, where.ae_title, chosen, fresh)
        send_all(settings, database, code, where, run, report)
        run = state.load(settings, code)["restore"]
        problems = verify(settings, database, where, run)
        refused = [
            r | {"study": u} for u, s in run["studies"].items() for r in s.get("refused", [])
        ]
        refused_uids = {r["sop_instance_uid"] for r in refused}
        items = [
            i
            for u in random.Random(0).sample(sorted(run["studies"]), min(3, len(run["studies"])))
            for i in _items(database, BlobStore(settings.data_dir), u)
            if i.sop_instance_uid not in refused_uids
        ]
        checked = sample.check_bytes(settings, database, where, items, sample_size)
        commitment = _commitment(settings, database, where, run, refused_uids)
        report_ = _report(client, where, run, refused, problems, checked, commitment)
        report_["outage_returned"] = _return_outage(settings, database, code, run, problems)

        def change(current: state.State) -> None:
            current["restore"].update(state="done", finished_at=state.now_iso(), report=report_)

        state.update(settings, code, change)
        return report_


def _commitment(
    settings: Settings,
    database: Database,
    where: PacsNode,
    run: dict[str, Any],
    refused: set[str],
) -> dict[str, Any]:
    """Storage commitment (PS3.4 J) of every instance restored, as the report shows it."""
    if settings.backup_commitment_timeout <= 0:
        return commit.Commitment(False, "not asked", "backup_commitment_timeout is 0").as_report(0)
    blobs = BlobStore(settings.data_dir)
    references = [
        (item.sop_class_uid, item.sop_instance_uid)
        for uid in sorted(run["studies"])
        for item in _items(database, blobs, uid)
        if item.sop_instance_uid not in refused
    ]
    outcome = commit.request_commitment(settings, where, references)
    LOGGER.info(
        "restore to %s: storage commitment %s, %d of %d committed",
        where.ae_title,
        outcome.state,
        len(outcome.committed),
        len(references),
    )
    return outcome.as_report(len(references))


def _return_outage(
    settings: Settings,
    database: Database,
    code: str,
    run: dict[str, Any],
    problems: list[dict[str, Any]],
) -> int:
    """Clear the outage marks of instances now verified on the PACS; how many."""
    marked = state.outage_instances(settings, code)
    if not marked:
        return 0
    unverified = {p["study"] for p in problems}
    refused = {r["sop_instance_uid"] for s in run["studies"].values() for r in s.get("refused", [])}
    base = (
        select(Instance.sop_instance_uid, Study.study_instance_uid)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
    )
    returned: set[str] = set()
    with database.reader() as session:
        for start in range(0, len(marked), inventory.CHUNK):
            chunk = marked[start : start + inventory.CHUNK]
            returned.update(
                sop
                for sop, study in session.execute(
                    base.where(Instance.sop_instance_uid.in_(chunk))
                ).all()
                if study in run["studies"] and study not in unverified and sop not in refused
            )
    return state.clear_outage(settings, code, returned)


def _report(
    client: inventory.Client,
    where: PacsNode,
    run: dict[str, Any],
    refused: list[dict[str, Any]],
    problems: list[dict[str, Any]],
    checked: dict[str, Any],
    commitment: dict[str, Any],
) -> dict[str, Any]:
    restored = sum(int(s.get("sent", 0)) for s in run["studies"].values())
    total = sum(int(s["n"]) for s in run["studies"].values())
    unproven = checked["mismatched"] + len(checked["not_retrieved"])
    uncommitted = int(commitment["not_committed"])  # 0 when the PACS has no commitment
    ok = not refused and not problems and unproven == 0 and uncommitted == 0
    how = (
        f"committed by {where.ae_title}"
        if commitment["supported"]
        else f"storage commitment {commitment['state']}"
    )
    if ok:
        verdict = (
            f"COMPLETE: {restored} instance(s) of {len(run['studies'])} study(ies)"
            f" restored and verified (C-FIND counts, SHA-256 sample; {how})"
        )
    else:
        verdict = (
            f"INCOMPLETE: {restored} of {total} instance(s) restored, {len(refused)} refused by "
            f"{where.ae_title}, {len(problems)} study(ies) with other counts on the PACS, "
            f"{unproven} sampled instance(s) not proven byte-identical, "
            + (
                f"{uncommitted} instance(s) not committed by {where.ae_title}"
                if commitment["supported"]
                else how
            )
        )
    return {
        "establishment": client.code,
        "to": where.ae_title,
        "studies": len(run["studies"]),
        "instances": total,
        "bytes": sum(int(s["bytes"]) for s in run["studies"].values()),
        "restored": restored,
        "refused": refused,
        "count_mismatches": problems,
        "byte_check": checked,
        "storage_commitment": commitment,
        "complete": ok,
        "verdict": verdict,
    }
