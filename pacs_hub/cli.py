"""The ``pacs-hub`` command line: serve, import, nodes, and the command groups.

Every command reads the same settings (``PACS_HUB_*`` variables, see
:mod:`pacs_hub.config`), so ``PACS_HUB_DATA_DIR`` points them all at one archive.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pacs_hub.archive import cli as archive_cli
from pacs_hub.backup import cli as backup_cli
from pacs_hub.cli_common import (
    DataDir,
    console,
    database,
    load_settings,
    open_database,
    print_table,
    refusals,
)
from pacs_hub.regional import establishments_cli, federation_cli, identity_cli, routing_cli
from pacs_hub.regional import nodes as node_registry
from pacs_hub.trust import audit_cli, users_cli
from workers import cli as workers_cli

app = typer.Typer(
    help="PACS Hub: regional cloud PACS. Settings come from PACS_HUB_* environment variables.",
    no_args_is_help=True,
)
nodes_app = typer.Typer(
    help="Remote DICOM nodes: establishment PACS, modalities, workstations, destinations.",
    no_args_is_help=True,
)
app.add_typer(nodes_app, name="nodes")
app.add_typer(establishments_cli.app, name="establishments")
app.add_typer(identity_cli.app, name="patients")
app.add_typer(federation_cli.app, name="federation")
app.add_typer(routing_cli.app, name="routing")
app.add_typer(users_cli.app, name="users")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(backup_cli.app, name="backup")
app.add_typer(archive_cli.app, name="archive")
app.command("restore")(backup_cli.restore)
app.command("worker")(workers_cli.worker)
app.command("process")(workers_cli.process)


@app.command()
def serve(
    data_dir: DataDir = None,
    ae_title: Annotated[str | None, typer.Option(help="Our AE title [PACS_HUB_AE_TITLE]")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port [PACS_HUB_DICOM_PORT]")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port [PACS_HUB_HTTP_PORT]")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address [PACS_HUB_HOST]")] = None,
    gateway_processes: Annotated[
        int | None,
        typer.Option(help="DICOM processes, 0 = one per core [PACS_HUB_GATEWAY_PROCESSES]"),
    ] = None,
    http_processes: Annotated[
        int | None,
        typer.Option(help="HTTP processes, 0 = one per core [PACS_HUB_HTTP_PROCESSES]"),
    ] = None,
) -> None:
    """Run the hub: DICOM (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, storage commitment) and HTTP.

    Stops cleanly on Ctrl-C or SIGTERM.
    A gateway or HTTP process that dies is replaced (with back-off if it keeps dying).

    Exit status 2 when the DICOM or HTTP port is held by another process,
    or the data folder by another hub
    (after waiting PACS_HUB_PORT_RELEASE_WAIT seconds, 20 by default,
    for a hub stopped just before to let go of them).
    """
    from pacs_hub.listeners import PortUnavailable
    from pacs_hub.service import serve as run
    from pacs_hub.storage.data_lock import DataDirUnusable

    settings = load_settings(
        data_dir=data_dir,
        ae_title=ae_title,
        dicom_port=dicom_port,
        http_port=http_port,
        host=host,
        gateway_processes=gateway_processes,
        http_processes=http_processes,
    )
    try:
        run(settings)
    except (PortUnavailable, DataDirUnusable) as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc


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


Role = Annotated[
    str,
    typer.Option(
        help="pacs (query/retrieve peer, C-ECHOed for health), modality, workstation or destination"
    ),
]


@nodes_app.command("add")
def nodes_add(
    ae_title: Annotated[str, typer.Argument(help="The node's AE title (1-16 characters)")],
    host: Annotated[str, typer.Argument(help="Host name or IP address")],
    port: Annotated[int, typer.Argument(help="DICOM port")],
    establishment: Annotated[
        str, typer.Option(help="Code or name of the registered establishment owning the node")
    ] = "",
    role: Role = "pacs",
    tls: Annotated[bool, typer.Option("--tls", help="The node speaks DICOM over TLS")] = False,
    permissions: Annotated[
        str | None,
        typer.Option(
            help="What it may do: store,query,retrieve (any subset; 'none'); default all"
            " for a new node, unchanged for a registered one"
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a remote node (or update it); running gateways see it within seconds.

    Its calls are attributed to its establishment; instances it sends without an
    Issuer of Patient ID are indexed under the establishment's default issuer.
    """
    with refusals():
        node = node_registry.add_node(
            database(data_dir),
            ae_title,
            host,
            port,
            establishment,
            role=role,
            tls=tls,
            permissions=None if permissions is None else permissions.split(","),
        )
    owner = f" ({node.establishment})" if node.establishment else ""
    allowed = ",".join(p for p in node_registry.PERMISSIONS if p in node.permissions) or "none"
    console.print(f"node {node.ae_title} -> {node.host}:{node.port} registered{owner} ({allowed})")


def _since(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


@nodes_app.command("list")
def nodes_list(data_dir: DataDir = None) -> None:
    """List the registered nodes with their establishment, role and health."""
    print_table(
        ("AE title", "host", "port", "establishment", "role", "TLS", "health"),
        (
            (
                node.ae_title,
                node.host,
                str(node.port),
                node.establishment,
                node.role,
                "yes" if node.tls else "",
                node.health_status,
            )
            for node in node_registry.list_nodes(database(data_dir))
        ),
    )


@nodes_app.command("health")
def nodes_health(
    check: Annotated[
        bool, typer.Option("--check", help="C-ECHO every pacs node now, then show")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Health of the PACS nodes: up/down, down since, C-ECHO latency, last check.

    The running hub C-ECHOes every node of role pacs each
    PACS_HUB_HEALTH_CHECK_INTERVAL seconds; --check runs one round from here.
    """
    settings = load_settings(data_dir=data_dir)
    db = open_database(settings)
    if check:
        from pacs_hub.regional.health import check_nodes

        check_nodes(db, settings)
    print_table(
        ("AE title", "establishment", "status", "down since", "latency ms", "checked"),
        (
            (
                node.ae_title,
                node.establishment,
                node.health_status,
                _since(node.down_since),
                f"{node.latency_ms:.1f}" if node.latency_ms is not None else "",
                _since(node.health_checked_at),
            )
            for node in node_registry.list_nodes(db, role="pacs")
        ),
    )


@nodes_app.command("remove")
def nodes_remove(
    ae_title: Annotated[str, typer.Argument(help="AE title of the node to forget")],
    data_dir: DataDir = None,
) -> None:
    """Forget a registered node (it can no longer call the hub when unknown callers are refused)."""
    db = database(data_dir)
    with refusals():
        node_registry.remove_node(db, ae_title)
    console.print(f"node {ae_title} removed")


if __name__ == "__main__":
    app()
