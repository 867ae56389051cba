"""The ``pacs-hub`` command line: serve, import, nodes.

Every command reads the same settings (``PACS_HUB_*`` variables, see
:mod:`pacs_hub.config`), so ``PACS_HUB_DATA_DIR`` points them all at one archive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pacs_hub.cli_common import DataDir, load_settings, open_database
from pacs_hub.errors import HubError
from pacs_hub.regional import establishments_cli, federation_cli, identity_cli, routing_cli
from pacs_hub.regional import nodes as node_registry

app = typer.Typer(
    help="PACS Hub: regional cloud PACS. Settings come from PACS_HUB_* environment variables.",
    no_args_is_help=True,
)
nodes_app = typer.Typer(help="Remote DICOM nodes (C-MOVE destinations, known peers).")
app.add_typer(nodes_app, name="nodes")
app.add_typer(establishments_cli.app, name="establishments")
app.add_typer(identity_cli.app, name="patients")
app.add_typer(federation_cli.app, name="federation")
app.add_typer(routing_cli.app, name="routing")
console = Console()


@app.command()
def serve(
    data_dir: DataDir = None,
    ae_title: Annotated[str | None, typer.Option(help="Our AE title [PACS_HUB_AE_TITLE]")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port [PACS_HUB_DICOM_PORT]")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port [PACS_HUB_HTTP_PORT]")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address [PACS_HUB_HOST]")] = None,
    gateway_processes: Annotated[
        int | None, typer.Option(help="DICOM processes, 0 = one per core")
    ] = None,
) -> None:
    """Run the hub: DICOM (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, storage commitment) and HTTP.

    Stops cleanly on Ctrl-C or SIGTERM.
    """
    from pacs_hub.service import serve as run

    run(
        load_settings(
            data_dir=data_dir,
            ae_title=ae_title,
            dicom_port=dicom_port,
            http_port=http_port,
            host=host,
            gateway_processes=gateway_processes,
        )
    )


def _check_label(value: str) -> str:
    if len(value) > 16:
        raise typer.BadParameter("at most 16 characters (the AE title column)")
    return value


@app.command("import")
def import_(
    paths: Annotated[
        list[Path],
        typer.Argument(exists=True, metavar="PATH", help="Files, folders, zip archives, DICOMDIRs"),
    ],
    received_from: Annotated[
        str,
        typer.Option(
            help="Label stored as the sender (at most 16 characters)", callback=_check_label
        ),
    ] = "",
    workers: Annotated[int, typer.Option(min=1, max=64, help="Ingest threads")] = 4,
    data_dir: DataDir = None,
) -> None:
    """Import DICOM files through the same ingest path as C-STORE.

    Folders are walked recursively, zip archives read member by member.
    A DICOMDIR is followed to the files it references; it is not stored itself.
    The report counts stored, duplicate (skipped) and rejected files,
    and names each rejected file with the reason.

    Exit status: 0 when nothing was rejected, 1 when a file was rejected, 2 on bad usage.
    """
    from pacs_hub.importer import run_import

    settings = load_settings(data_dir=data_dir)
    report = run_import(
        settings, paths, received_from=received_from, workers=workers, console=console
    )
    if report.rejected:
        raise typer.Exit(1)


@nodes_app.command("add")
def nodes_add(
    ae_title: Annotated[str, typer.Argument(help="The node's AE title (1-16 characters)")],
    host: Annotated[str, typer.Argument(help="Host name or IP address")],
    port: Annotated[int, typer.Argument(help="DICOM port")],
    establishment: Annotated[str, typer.Option(help="Establishment owning the node")] = "",
    data_dir: DataDir = None,
) -> None:
    """Register a remote node (or update it); running gateways see it at once."""
    db = open_database(load_settings(data_dir=data_dir))
    try:
        node = node_registry.add_node(db, ae_title, host, port, establishment)
    except HubError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    console.print(f"node {node.ae_title} -> {node.host}:{node.port} registered")


@nodes_app.command("list")
def nodes_list(data_dir: DataDir = None) -> None:
    """List the registered nodes."""
    db = open_database(load_settings(data_dir=data_dir))
    table = Table("AE title", "host", "port", "establishment")
    for node in node_registry.list_nodes(db):
        table.add_row(node.ae_title, node.host, str(node.port), node.establishment)
    console.print(table)


@nodes_app.command("remove")
def nodes_remove(
    ae_title: Annotated[str, typer.Argument(help="AE title of the node to forget")],
    data_dir: DataDir = None,
) -> None:
    """Forget a registered node."""
    db = open_database(load_settings(data_dir=data_dir))
    try:
        node_registry.remove_node(db, ae_title)
    except HubError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    console.print(f"node {ae_title} removed")


if __name__ == "__main__":
    app()
