"""``pacs-hub routing ...``: routing rules and the state of the routing queue.

Exit status 0 on success, 2 when the request is refused (unknown destination or
establishment, duplicate name, unknown rule or item).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from pacs_hub.cli_common import (
    AsJson,
    DataDir,
    console,
    database,
    echo_json,
    print_table,
    refusals,
)
from pacs_hub.regional import routing, routing_rules

app = typer.Typer(
    help="Routing rules: forward arriving studies that match conditions to a node, through"
    " a persistent queue with retries (states: queued, sending, sent, failed).",
    no_args_is_help=True,
)
Name = Annotated[str, typer.Argument(help="The rule's name")]
Values = Annotated[list[str] | None, typer.Option(help="Repeat for any of several values")]


def _conditions(record: routing_rules.RuleRecord) -> str:
    return "; ".join(f"{k}={'|'.join(v)}" for k, v in record.conditions.items()) or "(any study)"


@app.command("add")
def add(
    name: Name,
    destination: Annotated[str, typer.Option(help="AE title of the node to send to")],
    establishment: Values = None,
    modality: Values = None,
    body_part: Values = None,
    station: Values = None,
    disabled: Annotated[bool, typer.Option(help="Register it disabled")] = False,
    data_dir: DataDir = None,
) -> None:
    """Register a rule: studies arriving that match every condition go to --destination.

    --establishment is the code of the establishment whose node sent the study;
    --modality, --body-part and --station are compared, ignoring case, with each
    series' Modality, Body Part Examined and Station Name (one series must match all).
    The destination must be a registered node and each establishment registered;
    otherwise nothing is stored. Example (tele-radiology):
    pacs-hub routing add ct-to-expert --establishment HOSP_A --modality CT --destination EXPERT
    """
    conditions: dict[str, object] = {
        key: values
        for key, values in (
            ("establishment", establishment),
            ("modality", modality),
            ("body_part", body_part),
            ("station", station),
        )
        if values
    }
    with refusals():
        record = routing_rules.create_rule(
            database(data_dir), name, conditions, destination, enabled=not disabled
        )
    console.print(f"rule {escape(record.name)}: {_conditions(record)} -> {record.destination}")


@app.command("list")
def list_(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """List the rules with their conditions, destination and whether they are enabled."""
    rules = routing_rules.list_rules(database(data_dir))
    if as_json:
        rows = [
            {
                "name": r.name,
                "conditions": r.conditions,
                "destination": r.destination,
                "enabled": r.enabled,
            }
            for r in rules
        ]
        echo_json(rows)
        return
    print_table(
        ("name", "conditions", "destination", "enabled"),
        (
            (escape(r.name), _conditions(r), r.destination, "yes" if r.enabled else "no")
            for r in rules
        ),
    )


def _switch(name: str, enabled: bool, data_dir: DataDir) -> None:
    with refusals():
        record = routing_rules.set_rule_enabled(database(data_dir), name, enabled)
    console.print(f"rule {escape(record.name)} {'enabled' if enabled else 'disabled'}")


@app.command("enable")
def enable(name: Name, data_dir: DataDir = None) -> None:
    """Enable a rule: new arrivals are queued and its queued items are sent."""
    _switch(name, True, data_dir)


@app.command("disable")
def disable(name: Name, data_dir: DataDir = None) -> None:
    """Disable a rule: nothing new is queued and its queued items wait."""
    _switch(name, False, data_dir)


@app.command("remove")
def remove(name: Name, data_dir: DataDir = None) -> None:
    """Delete a rule and its queue items."""
    with refusals():
        count = routing_rules.delete_rule(database(data_dir), name)
    console.print(f"rule {escape(name)} removed ({count} queue item(s) with it)")


@app.command("queue")
def queue(
    study: Annotated[str | None, typer.Option(help="Only this Study Instance UID")] = None,
    state: Annotated[str | None, typer.Option(help="queued, sending, sent or failed")] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Show the routing queue, newest first: each study, its rule, state and last error."""
    with refusals():
        items = routing.list_queue(database(data_dir), study=study, state=state, rule=rule)
    if as_json:
        rows = [
            {
                "id": i.id,
                "rule": i.rule,
                "study": i.study_instance_uid,
                "destination": i.destination,
                "state": i.state,
                "attempts": i.attempts,
                "next_attempt_at": i.next_attempt_at.isoformat() + "Z",
                "last_error": i.last_error,
            }
            for i in items
        ]
        echo_json(rows)
        return
    print_table(
        ("id", "study", "rule", "destination", "state", "attempts", "last error"),
        (
            (
                str(i.id),
                i.study_instance_uid,
                escape(i.rule),
                i.destination,
                i.state,
                str(i.attempts),
                escape(i.last_error),
            )
            for i in items
        ),
    )


@app.command("retry")
def retry(
    item_id: Annotated[int, typer.Argument(help="Queue item id (see 'routing queue')")],
    data_dir: DataDir = None,
) -> None:
    """Queue a failed (or sent) item again, with its attempts reset."""
    with refusals():
        record = routing.retry_item(database(data_dir), item_id)
    console.print(f"item {record.id} ({record.study_instance_uid}) queued again")
