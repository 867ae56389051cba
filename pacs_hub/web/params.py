"""Path parameters shared by the HTTP APIs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

RowId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Row id (a positive 64-bit integer)")]
"""An index row id in a path: out of range is 422 problem+json, never an overflow (500)."""
