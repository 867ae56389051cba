"""One error catalogue: every hub error carries a DICOM status and an HTTP status.

Adapters (SCP handlers, HTTP exception handlers) translate these into
the wire answer; everything inward raises them with a message that says what was
found, what was expected and where.
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub reports to a peer.

    ``dicom_status`` follows PS3.4 Annex B.2.3 (Storage) and C.4 (Query/Retrieve);
    ``http_status`` is what a DICOMweb or admin API answer uses (PS3.18 8.6).
    """

    dicom_status: int = 0xC000
    http_status: int = 400
    title: str = "Cannot understand"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def comment(self) -> str:
        """Error Comment (0000,0902): at most 64 characters of LO, per PS3.7 C.4."""
        text = self.message.replace("\\", "/")
        return text if len(text) <= 64 else text[:61] + "..."


class InvalidInstance(HubError):
    """The dataset cannot be parsed or misses a required attribute (0xC000 range)."""

    dicom_status = 0xC000
    http_status = 400
    title = "Invalid DICOM instance"


class MissingAttribute(InvalidInstance):
    """A Type 1 attribute the archive needs (UIDs) is absent or empty."""

    dicom_status = 0xC001


class UnsupportedSOPClass(HubError):
    """The SOP class is not a storage SOP class (PS3.7 C.5.4: 0x0122)."""

    dicom_status = 0x0122
    http_status = 415
    title = "SOP class not supported"


class DuplicateConflict(HubError):
    """Same SOP Instance UID, different bytes, policy keep-first (0xA900 range)."""

    dicom_status = 0xA900
    http_status = 409
    title = "Conflicting instance"


class OutOfResources(HubError):
    """Disk full or quota reached: PS3.4 B.2.3 0xA700 Out of Resources."""

    dicom_status = 0xA700
    http_status = 507
    title = "Out of resources"


class IndexUnavailable(HubError):
    """The index could not commit (database down or locked too long)."""

    dicom_status = 0xA701
    http_status = 503
    title = "Index unavailable"


class InvalidQuery(HubError):
    """An identifier that does not follow PS3.4 C.2.2 / C.4.1 (0xA900 for C-FIND)."""

    dicom_status = 0xA900
    http_status = 400
    title = "Invalid query"


class StudyDestroyed(HubError):
    """A study destroyed at the end of its legal retention (pacs_hub.archive.destruction):
    the hub does not pull it from an establishment's PACS again."""

    http_status = 410
    title = "Study destroyed"


class UnknownDestination(HubError):
    """C-MOVE destination AE title is not a registered node (PS3.4 C.4.2.1.4: 0xA801)."""

    dicom_status = 0xA801
    http_status = 404
    title = "Move destination unknown"


class UnknownNode(HubError):
    """An AE title that is not registered."""

    dicom_status = 0x0124
    http_status = 404
    title = "Unknown node"
