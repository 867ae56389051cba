"""Building DIMSE status datasets (PS3.7 C: Status, Error Comment)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from pacs_hub.errors import HubError

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
PROCESSING_FAILURE = 0x0110


def status(code: int, comment: str = "") -> Dataset:
    """A status dataset with (0000,0900) Status and, if given, (0000,0902) Error Comment."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def error_status(error: HubError) -> Dataset:
    """The status dataset for a catalogued hub error."""
    return status(error.dicom_status, error.comment)
