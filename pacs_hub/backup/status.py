"""One establishment's backup status: enrolment, stand-in, backfill, coverage, RPO."""

from __future__ import annotations

from typing import Any

from pacs_hub.backup import backfill, standin, state
from pacs_hub.config import Settings
from pacs_hub.storage.database import Database


def set_standin(settings: Settings, code: str, mode: str, port: int | None = None) -> None:
    """Set the stand-in mode of ``code``: on, off or auto (on while its PACS is down);
    ``port``: the DICOM port of its own (0: none; None: unchanged), opened within seconds."""
    if mode not in state.STANDIN_MODES:
        raise state.NotEnrolled(f"stand-in mode {mode!r}: expected one of auto, on, off")
    if port is not None and (not 0 <= port <= 65535 or port == settings.dicom_port):
        raise state.NotEnrolled(
            f"stand-in port {port}: expected 1-65535 other than the hub's DICOM port, or 0"
        )

    def change(current: state.State) -> None:
        current["standin"] = mode
        if port is not None:
            current["standin_port"] = port

    state.update(settings, code, change)


def describe(settings: Settings, database: Database, code: str) -> dict[str, Any]:
    """What the CLI and the API show for ``code``."""
    current = state.load(settings, code)
    reconciliation = current.get("reconciliation") or {}
    rpo = reconciliation.get("rpo_seconds")
    restore = current.get("restore") or {}
    return {
        "establishment": code,
        "node": current.get("node"),
        "enrolled_at": current.get("enrolled_at"),
        "standin_mode": current.get("standin", "auto"),
        "standin_port": int(current.get("standin_port") or 0),
        "standin_active": str(current.get("node")) in standin.load_standins(settings, database),
        "outage_instances": len(state.outage_instances(settings, code)),
        "backfill": backfill.progress_of(code, current).as_json(),
        "reconciliation": reconciliation,
        "last_matched": current.get("last_matched"),
        "rpo_seconds": rpo,
        "rpo_alert": rpo is not None and rpo > settings.backup_rpo_alert_minutes * 60,
        "restore": {k: v for k, v in restore.items() if k != "studies"},
    }
