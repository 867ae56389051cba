"""Placeholder: the federation admin API (issue 5), filled in by its work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
