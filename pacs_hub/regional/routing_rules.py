"""Routing rules: which arriving studies go to which node (issue 5, tele-radiology).

A rule is data in the index (``routing_rules``): a unique name, conditions and a
destination node (by AE title). Conditions are a JSON object whose keys are all
optional and AND-ed:

* ``establishment``: code of the establishment that sent the study (the sending AE
  title of its instances, (0000,0600)/A-ASSOCIATE calling AE, looked up in
  ``nodes``, then the node's establishment);
* ``modality``: Modality (0008,0060) of a series;
* ``body_part``: Body Part Examined (0018,0015) of a series;
* ``station``: Station Name (0008,1010) of a series.

Each value is a string or a list of strings (any of them); matching ignores case.
A study matches when one of its series satisfies every condition (so "every CT of
establishment A" is ``{"establishment": "A", "modality": "CT"}``). A rule naming an
unknown destination AE title or establishment code is refused and nothing is stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from pacs_hub.errors import HubError
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, Node, RoutingItem, RoutingRule

CONDITION_KEYS = ("establishment", "modality", "body_part", "station")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


class InvalidRoutingRule(HubError):
    """A rule whose name, conditions or destination the registry cannot accept."""

    http_status = 422
    title = "Invalid routing rule"


class UnknownRoutingRule(HubError):
    """No rule has this name."""

    http_status = 404
    title = "Unknown routing rule"


class RoutingRuleExists(HubError):
    """A rule with this name is already registered."""

    http_status = 409
    title = "Routing rule exists"


@dataclass(frozen=True, slots=True)
class RuleRecord:
    """A routing rule as the API and the CLI show it."""

    name: str
    conditions: dict[str, list[str]]
    destination: str
    enabled: bool
    created_at: datetime
    pk: int = 0


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What rules look at in one series of an arrived study."""

    modality: str
    body_part: str
    station: str
    establishments: frozenset[str] = field(default_factory=frozenset)
    """Codes of the establishments whose nodes sent instances of the series."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _values(key: str, raw: object) -> list[str]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InvalidRoutingRule(f"condition {key!r}: expected a string or a list of strings")
    values = [v.strip() for v in items if v.strip()]
    if not values:
        raise InvalidRoutingRule(f"condition {key!r} is empty")
    if any(len(v) > 64 or "\\" in v for v in values):
        raise InvalidRoutingRule(f"condition {key!r}: values are at most 64 characters, no '\\'")
    return values


def normalise_conditions(raw: Mapping[str, object]) -> dict[str, list[str]]:
    """Check a conditions object; return it as key -> list of values (empty keys dropped)."""
    unknown = sorted(set(raw) - set(CONDITION_KEYS))
    if unknown:
        raise InvalidRoutingRule(
            f"unknown condition(s) {', '.join(unknown)}; expected {', '.join(CONDITION_KEYS)}"
        )
    return {key: _values(key, raw[key]) for key in CONDITION_KEYS if raw.get(key) not in (None, "")}


def _check_name(name: str) -> str:
    value = name.strip()
    if not NAME_PATTERN.match(value):
        raise InvalidRoutingRule(
            f"rule name must be 1-64 letters, digits, spaces, '.', '_' or '-', got {value!r}"
        )
    return value


def _destination(session: Session, ae_title: str) -> Node:
    node = session.scalars(select(Node).where(Node.ae_title == ae_title.strip())).one_or_none()
    if node is None:
        raise InvalidRoutingRule(
            f"destination {ae_title.strip()!r} is not a registered node (see 'pacs-hub nodes')"
        )
    return node


def _check_establishments(session: Session, codes: Iterable[str]) -> None:
    for code in codes:
        found = session.scalar(
            select(func.count())
            .select_from(Establishment)
            .where(func.lower(Establishment.code) == code.lower())
        )
        if not found:
            raise InvalidRoutingRule(f"establishment {code!r} is not registered")


def _record(rule: RoutingRule, destination: str) -> RuleRecord:
    return RuleRecord(
        name=rule.name,
        conditions=json.loads(rule.conditions or "{}"),
        destination=destination,
        enabled=rule.enabled,
        created_at=rule.created_at,
        pk=rule.id,
    )


def create_rule(
    db: Database,
    name: str,
    conditions: Mapping[str, object],
    destination: str,
    *,
    enabled: bool = True,
) -> RuleRecord:
    """Register a rule; :class:`InvalidRoutingRule` (nothing stored) when it cannot apply."""
    name = _check_name(name)
    checked = normalise_conditions(conditions)
    with db.session() as session:
        node = _destination(session, destination)
        _check_establishments(session, checked.get("establishment", []))
        if session.scalars(select(RoutingRule.id).where(RoutingRule.name == name)).first():
            raise RoutingRuleExists(f"a routing rule named {name!r} already exists")
        rule = RoutingRule(
            name=name,
            conditions=json.dumps(checked, sort_keys=True),
            destination_node_pk=node.id,
            enabled=enabled,
            created_at=_now(),
        )
        session.add(rule)
        session.flush()
        return _record(rule, node.ae_title)


def _rules(session: Session, *where: ColumnElement[bool]) -> list[RuleRecord]:
    stmt = select(RoutingRule, Node.ae_title).join(Node, Node.id == RoutingRule.destination_node_pk)
    rows = session.execute(stmt.where(*where).order_by(RoutingRule.name))
    return [_record(rule, ae) for rule, ae in rows]


def list_rules(db: Database, *, enabled_only: bool = False) -> list[RuleRecord]:
    """Every rule, by name."""
    with db.reader() as session:
        return _rules(session, *([RoutingRule.enabled.is_(True)] if enabled_only else []))


def get_rule(db: Database, name: str) -> RuleRecord:
    """The rule named ``name``; :class:`UnknownRoutingRule` otherwise."""
    with db.reader() as session:
        found = _rules(session, RoutingRule.name == name.strip())
    if not found:
        raise UnknownRoutingRule(f"no routing rule named {name.strip()!r}")
    return found[0]


def set_rule_enabled(db: Database, name: str, enabled: bool) -> RuleRecord:
    """Enable or disable a rule (a disabled rule neither queues nor sends)."""
    with db.session() as session:
        rule = session.scalars(select(RoutingRule).where(RoutingRule.name == name.strip())).first()
        if rule is None:
            raise UnknownRoutingRule(f"no routing rule named {name.strip()!r}")
        rule.enabled = enabled
        node = session.get(Node, rule.destination_node_pk)
        return _record(rule, node.ae_title if node else "")


def delete_rule(db: Database, name: str) -> int:
    """Forget a rule and its queue items; return how many items went with it."""
    with db.session() as session:
        rule = session.scalars(select(RoutingRule).where(RoutingRule.name == name.strip())).first()
        if rule is None:
            raise UnknownRoutingRule(f"no routing rule named {name.strip()!r}")
        result = session.execute(delete(RoutingItem).where(RoutingItem.rule_pk == rule.id))
        session.delete(rule)
        return int(result.rowcount)  # type: ignore[attr-defined]


def _matches(wanted: list[str] | None, have: Iterable[str]) -> bool:
    if not wanted:
        return True
    folded = {h.strip().casefold() for h in have}
    return any(w.casefold() in folded for w in wanted)


def series_matches(conditions: Mapping[str, list[str]], series: SeriesFacts) -> bool:
    """True when ``series`` satisfies every condition (case-insensitive)."""
    return (
        _matches(conditions.get("establishment"), series.establishments)
        and _matches(conditions.get("modality"), [series.modality])
        and _matches(conditions.get("body_part"), [series.body_part])
        and _matches(conditions.get("station"), [series.station])
    )


def study_matches(conditions: Mapping[str, list[str]], series: Iterable[SeriesFacts]) -> bool:
    """True when one series of the study satisfies every condition."""
    return any(series_matches(conditions, s) for s in series)
