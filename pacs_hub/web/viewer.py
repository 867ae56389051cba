"""Placeholder: serving the OHIF viewer on the hub's origin (filled in by the viewer work)."""

from __future__ import annotations

from fastapi import FastAPI

from pacs_hub.config import Settings


def mount_viewer(app: FastAPI, settings: Settings) -> None:
    """Mount the viewer at ``/`` after every API route (no-op until the viewer lands)."""
    del app, settings
