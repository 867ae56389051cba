"""Placeholder: the `pacs-hub` federation commands (issue 5), filled in by its work."""

from __future__ import annotations

import typer

app = typer.Typer(help="(not available yet)", no_args_is_help=True)
