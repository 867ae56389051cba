"""``pacs-hub establishments ...``: the establishments of the region and their issuers.

Exit status 0 on success, 2 when the registry refuses (unknown code, duplicate
code, issuer owned by another establishment, nodes still attached).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pacs_hub.cli_common import DataDir, load_settings, open_database
from pacs_hub.errors import HubError
from pacs_hub.regional import establishments as registry
from pacs_hub.regional.nodes import list_nodes
from pacs_hub.storage.database import Database

app = typer.Typer(
    help="Establishments (hospitals, clinics): code, name, Issuers of Patient ID, nodes.",
    no_args_is_help=True,
)
console = Console()
Code = Annotated[str, typer.Argument(help="The establishment's code (FINESS-like, 1-32 chars)")]
Issuers = Annotated[
    list[str] | None,
    typer.Option("--issuer", help="An Issuer of Patient ID it uses (repeat for several)"),
]


def _database(data_dir: DataDir) -> Database:
    return open_database(load_settings(data_dir=data_dir))


def _fail(exc: HubError) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(exc.message)}")
    return typer.Exit(2)


def _print(record: registry.EstablishmentRecord) -> None:
    console.print(f"code            {record.code}")
    console.print(f"name            {record.name}")
    console.print(f"default issuer  {record.default_issuer or '-'}")
    console.print(f"issuers         {', '.join(record.issuers) or '-'}")
    console.print(f"nodes           {', '.join(record.nodes) or '-'}")


@app.command("add")
def add(
    code: Code,
    name: Annotated[str, typer.Argument(help="Its name, as people say it")],
    issuer: Issuers = None,
    default_issuer: Annotated[
        str,
        typer.Option(help="Issuer given to instances its nodes send without one (also owned)"),
    ] = "",
    data_dir: DataDir = None,
) -> None:
    """Register an establishment and the Issuers of Patient ID it owns.

    An issuer belongs to one establishment only. Instances that its nodes send
    without Issuer of Patient ID (0010,0021) are indexed under --default-issuer.
    """
    try:
        record = registry.create_establishment(
            _database(data_dir), code, name, default_issuer, issuer or []
        )
    except HubError as exc:
        raise _fail(exc) from exc
    console.print(f"establishment {record.code} ({record.name}) registered")


@app.command("update")
def update(
    code: Code,
    name: Annotated[str | None, typer.Option(help="New name")] = None,
    issuer: Issuers = None,
    default_issuer: Annotated[
        str | None, typer.Option(help="New default issuer ('' for none)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Change an establishment; --issuer options replace the issuers it owns."""
    try:
        record = registry.update_establishment(
            _database(data_dir), code, name=name, default_issuer=default_issuer, issuers=issuer
        )
    except HubError as exc:
        raise _fail(exc) from exc
    _print(record)


@app.command("list")
def list_(data_dir: DataDir = None) -> None:
    """List the establishments with their issuers and nodes."""
    table = Table("code", "name", "default issuer", "issuers", "nodes")
    for r in registry.list_establishments(_database(data_dir)):
        table.add_row(r.code, r.name, r.default_issuer, ", ".join(r.issuers), ", ".join(r.nodes))
    console.print(table)


@app.command("show")
def show(code: Code, data_dir: DataDir = None) -> None:
    """Show one establishment and the health of its nodes."""
    db = _database(data_dir)
    try:
        record = registry.get_establishment(db, code)
    except HubError as exc:
        raise _fail(exc) from exc
    _print(record)
    owned = [n for n in list_nodes(db) if n.ae_title in record.nodes]
    if owned:
        table = Table("AE title", "host", "port", "role", "health")
        for n in owned:
            table.add_row(n.ae_title, n.host, str(n.port), n.role, n.health_status)
        console.print(table)


@app.command("remove")
def remove(code: Code, data_dir: DataDir = None) -> None:
    """Remove an establishment (refused while nodes are attached to it)."""
    try:
        registry.remove_establishment(_database(data_dir), code)
    except HubError as exc:
        raise _fail(exc) from exc
    console.print(f"establishment {code} removed")
