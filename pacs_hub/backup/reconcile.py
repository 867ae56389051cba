"""Reconciliation of an establishment PACS with the hub, and its RPO.

The PACS side is asked by C-FIND (studies by date window with their instance counts,
then the series of every study whose count differs or that both hold, with theirs);
the hub side is read from the index. The report lists:

* *missing*: studies on the PACS that the hub does not hold at all;
* *different*: studies both hold whose series or instance counts differ (each series
  named with both counts);
* *extra*: studies of the establishment in the hub that the PACS does not hold (sent
  during an outage and not yet restored, or deleted on the PACS);
* *destroyed*: studies on the PACS that the hub destroyed at the end of their legal
  retention (:mod:`pacs_hub.archive.destruction`): not missing (never pulled again),
  listed so the establishment destroys its own copies.

It *matches* when nothing is missing or different; the time it last matched is kept
in the state file. RPO is the age of the oldest study not yet safe in the hub (its
Study Date and Time): the span of the PACS's data a loss of the PACS now would cost.
Above ``backup_rpo_alert_minutes`` the establishment is in ``alert``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pacs_hub.archive.models import destroyed_in
from pacs_hub.backup import inventory, remote, state
from pacs_hub.config import Settings
from pacs_hub.storage.database import Database


@dataclass(frozen=True, slots=True)
class Difference:
    """One study held by both sides with different series or instance counts."""

    study: str
    pacs_instances: int | None
    hub_instances: int
    series: dict[str, tuple[int | None, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What a reconciliation found."""

    establishment: str
    node: str
    checked_at: str
    pacs_studies: int
    hub_studies: int
    missing: list[str]
    extra: list[str]
    different: list[Difference]
    last_matched: str | None
    rpo_seconds: float
    rpo_alert: bool
    destroyed: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        """True when nothing is missing or different."""
        return not self.missing and not self.different

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "establishment": self.establishment,
            "node": self.node,
            "checked_at": self.checked_at,
            "pacs_studies": self.pacs_studies,
            "hub_studies": self.hub_studies,
            "missing": self.missing,
            "extra": self.extra,
            "destroyed": self.destroyed,
            "different": [
                {
                    "study": d.study,
                    "pacs_instances": d.pacs_instances,
                    "hub_instances": d.hub_instances,
                    "series": {k: {"pacs": v[0], "hub": v[1]} for k, v in d.series.items()},
                }
                for d in self.different
            ],
            "matched": self.matched,
            "last_matched": self.last_matched,
            "rpo_seconds": self.rpo_seconds,
            "rpo_alert": self.rpo_alert,
        }


def _when(study: remote.RemoteStudy) -> datetime | None:
    text = study.study_date + (study.study_time.split(".")[0] + "000000")[:6]
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def compare_study(
    database: Database, finder: remote.SeriesFinder, study: remote.RemoteStudy, held: int
) -> Difference | None:
    """Compare one study held by both sides, series by series."""
    theirs = {s.series_instance_uid: s.instances for s in finder.series(study.study_instance_uid)}
    ours = inventory.hub_series(database, study.study_instance_uid)
    series = {
        uid: (theirs.get(uid), ours.get(uid, 0))
        for uid in sorted(set(theirs) | set(ours))
        if theirs.get(uid) is None or theirs.get(uid) != ours.get(uid, 0)
    }
    if not series and (study.instances is None or study.instances == held):
        return None
    return Difference(study.study_instance_uid, study.instances, held, series)


def destroyed_here(database: Database, uids: list[str]) -> list[str]:
    """Those of ``uids`` the hub destroyed at the end of their retention."""
    with database.read_connection() as conn:
        return [uid for uid in uids if destroyed_in(conn, uid) is not None]


def compare(
    settings: Settings,
    database: Database,
    client: inventory.Client,
    pacs: dict[str, remote.RemoteStudy],
) -> tuple[list[str], list[str], list[Difference], list[str]]:
    """``(missing, extra, different, destroyed)`` between ``pacs`` and the hub (studies
    the hub destroyed at the end of their retention are not missing)."""
    ours = inventory.hub_studies(database, client.establishment_pk)
    held = inventory.study_counts(database, pacs)
    absent = sorted(uid for uid in pacs if uid not in held)
    gone = set(destroyed_here(database, absent))
    missing = [uid for uid in absent if uid not in gone]
    extra = sorted(uid for uid in ours if uid not in pacs)
    different = []
    with remote.series_finder(settings, client.node) as finder:
        for uid, study in sorted(pacs.items()):
            if uid in held:
                found = compare_study(database, finder, study, held[uid][0])
                if found is not None:
                    different.append(found)
    return missing, extra, different, sorted(gone)


def reconcile(
    settings: Settings, database: Database, code: str, since: str = "", until: str = ""
) -> Reconciliation:
    """Compare the PACS of ``code`` with the hub; record the result in the state file."""
    client = inventory.client(settings, database, code)
    now = datetime.now(UTC).replace(tzinfo=None)
    pacs = remote.find_all_studies(
        settings, client.node, since or settings.backup_since, until or now.strftime("%Y%m%d")
    )
    missing, extra, different, destroyed = compare(settings, database, client, pacs)
    unsafe = [pacs[uid] for uid in missing] + [pacs[d.study] for d in different]
    times = [t for t in (_when(s) for s in unsafe) if t is not None]
    rpo = max(0.0, (now - min(times)).total_seconds()) if times else 0.0
    checked = state.now_iso()
    matched = not missing and not different

    def change(current: state.State) -> None:
        if matched:
            current["last_matched"] = checked
        current["reconciliation"] = {
            "checked_at": checked,
            "missing": len(missing),
            "extra": len(extra),
            "different": len(different),
            "destroyed": len(destroyed),
            "rpo_seconds": rpo,
        }

    recorded = state.update(settings, code, change)
    return Reconciliation(
        code,
        client.node.ae_title,
        checked,
        len(pacs),
        len(inventory.hub_studies(database, client.establishment_pk)),
        missing,
        extra,
        different,
        recorded.get("last_matched"),
        rpo,
        rpo > settings.backup_rpo_alert_minutes * 60,
        destroyed,
    )
