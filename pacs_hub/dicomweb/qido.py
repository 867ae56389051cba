"""Placeholder router, filled in by the qido work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
