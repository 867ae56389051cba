"""Noticing studies that arrived, for the background tasks that react to them.

The routing queue and the prefetch of priors scan the index for studies whose
timestamp (``studies.updated_at`` or ``created_at``) is newer than their last scan.
The time of the last scan is kept in a small marker file in the data folder, so a
restarted hub (or one that was down while ``pacs-hub import`` ran) resumes where it
stopped. Each scan looks back :data:`LOOKBACK` before the marker, because ingest
stamps a row when it starts its transaction, which may commit a little later; what
was already handled in this process is skipped by remembering each study's version.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

from pacs_hub.config import Settings

LOGGER = logging.getLogger(__name__)
LOOKBACK = timedelta(seconds=120)


class ArrivalWatch:
    """The last-scan marker of one task and the study versions it has handled."""

    def __init__(self, name: str, lookback: timedelta = LOOKBACK) -> None:
        self.name = name
        self.lookback = lookback
        self._seen: dict[str, datetime] = {}

    def marker_path(self, settings: Settings) -> Path:
        """``<data dir>/regional/<name>.marker``."""
        return settings.data_dir / "regional" / f"{self.name}.marker"

    def window_start(self, settings: Settings, now: datetime) -> datetime:
        """Scan rows stamped after this: the last scan (or now) minus the look-back."""
        try:
            text = self.marker_path(settings).read_text().strip()
            last = datetime.fromisoformat(text)
        except (OSError, ValueError):
            last = now
        return min(last, now) - self.lookback

    def unseen(self, versions: Mapping[str, datetime]) -> list[str]:
        """Study UIDs whose version differs from the one handled last (or new ones)."""
        return [uid for uid, version in versions.items() if self._seen.get(uid) != version]

    def handled(
        self, settings: Settings, now: datetime, since: datetime, versions: Mapping[str, datetime]
    ) -> None:
        """Remember ``versions`` as handled and move the marker to ``now``."""
        self._seen.update(versions)
        for uid in [uid for uid, version in self._seen.items() if version <= since]:
            del self._seen[uid]
        path = self.marker_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        temp.write_text(now.isoformat())
        os.replace(temp, path)
