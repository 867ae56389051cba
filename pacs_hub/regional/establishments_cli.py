"""``pacs-hub establishments ...``: the establishments of the region and their issuers.

Exit status 0 on success, 2 when the registry refuses (unknown code, duplicate
code, issuer owned by another establishment, nodes still attached).
"""

from __future__ import annotations

from typing import Annotated

import typer

from pacs_hub.cli_common import DataDir, console, database, print_table, refusals
from pacs_hub.regional import establishments as registry
from pacs_hub.regional.nodes import list_nodes

app = typer.Typer(
    help="Establishments (hospitals, clinics): code, name, Issuers of Patient ID, nodes.",
    no_args_is_help=True,
)
Code = Annotated[str, typer.Argument(help="The establishment's code (FINESS-like, 1-32 chars)")]
Issuers = Annotated[
    list[str] | None,
    typer.Option("--issuer", help="An Issuer of Patient ID it uses (repeat for several)"),
]


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
    with refusals():
        record = registry.create_establishment(
            database(data_dir), code, name, default_issuer, issuer or []
        )
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
    with refusals():
        record = registry.update_establishment(
            database(data_dir), code, name=name, default_issuer=default_issuer, issuers=issuer
        )
    _print(record)


@app.command("list")
def list_(data_dir: DataDir = None) -> None:
    """List the establishments with their issuers and nodes."""
    print_table(
        ("code", "name", "default issuer", "issuers", "nodes"),
        (
            (r.code, r.name, r.default_issuer, ", ".join(r.issuers), ", ".join(r.nodes))
            for r in registry.list_establishments(database(data_dir))
        ),
    )


@app.command("show")
def show(code: Code, data_dir: DataDir = None) -> None:
    """Show one establishment and the health of its nodes."""
    db = database(data_dir)
    with refusals():
        record = registry.get_establishment(db, code)
    _print(record)
    owned = [n for n in list_nodes(db) if n.ae_title in record.nodes]
    if owned:
        print_table(
            ("AE title", "host", "port", "role", "health"),
            ((n.ae_title, n.host, str(n.port), n.role, n.health_status) for n in owned),
        )


@app.command("remove")
def remove(code: Code, data_dir: DataDir = None) -> None:
    """Remove an establishment (refused while nodes are attached to it)."""
    with refusals():
        registry.remove_establishment(database(data_dir), code)
    console.print(f"establishment {code} removed")
