"""What every ``pacs-hub`` command shares: settings, the data folder option, the index,
the console, refusals as exit status 2, and rows printed as a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pacs_hub.config import Settings
from pacs_hub.errors import HubError
from pacs_hub.storage.database import Database

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder [PACS_HUB_DATA_DIR]")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
console = Console()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command-line options that were given.

    A value that is not valid (``PACS_HUB_DICOM_PORT=abc``) is said as
    ``error: PACS_HUB_DICOM_PORT='abc': <why>`` (or the option's name), exit status 2.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            option = f"--{field.replace('_', '-')}"
            source = option if field in given else f"PACS_HUB_{field.upper()}"
            said = f"{source}={error.get('input')!r}: " if field else ""
            console.print(f"[red]error:[/red] {escape(said + error['msg'])}")
        raise typer.Exit(2) from exc


def open_database(settings: Settings) -> Database:
    """The index of the archive, created or migrated if needed."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(settings.index_url)


def database(data_dir: Path | None) -> Database:
    """The index of the archive in ``--data-dir`` (or the environment's)."""
    return open_database(load_settings(data_dir=data_dir))


@contextmanager
def refusals(kind: type[HubError] = HubError) -> Iterator[None]:
    """A refusal (``kind``) raised inside becomes ``error: <message>`` and exit status 2."""
    try:
        yield
    except kind as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc


def echo_json(value: object, *, ensure_ascii: bool = True) -> None:
    """``value`` as indented JSON on standard output."""
    typer.echo(json.dumps(value, ensure_ascii=ensure_ascii, indent=2))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """One table: a header of ``columns``, then each row (text, already escaped)."""
    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    console.print(table)
