"""What every ``pacs-hub`` command shares: settings, the data folder option, the index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pacs_hub.config import Settings
from pacs_hub.storage.database import Database

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data folder [env PACS_HUB_DATA_DIR]")
]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command-line options that were given."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**given)


def open_database(settings: Settings) -> Database:
    """The index of the archive, created or migrated if needed."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(settings.index_url)
