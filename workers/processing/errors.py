"""Errors of the processing pipeline, in the hub's one catalogue (pacs_hub.errors)."""

from __future__ import annotations

from pacs_hub.errors import HubError


class ProcessingError(HubError):
    """The input series cannot be processed as asked; nothing was produced.

    The message says what was found, what was expected and where (which slice, which
    attribute), so a job failure can show it to the user as it is.
    """

    dicom_status = 0xC000
    http_status = 422
    title = "Cannot process series"


class ProcessingCancelled(HubError):
    """The job was cancelled between two steps; nothing was produced."""

    dicom_status = 0xFE00
    http_status = 409
    title = "Processing cancelled"
