"""Who is asking: the caller of an HTTP request or a DICOM association, and why.

Every access path builds one :class:`Principal` (from a bearer token, a session, a
share link, or a registered DICOM node) and hands it, with a :class:`Purpose` and an
:class:`Action`, to :func:`pacs_hub.trust.policy.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """What a user does in the region (issue 4, Authentication)."""

    REGIONAL_ADMIN = "regional-admin"
    ESTABLISHMENT_ADMIN = "establishment-admin"
    RADIOLOGIST = "radiologist"
    REFERRING_DOCTOR = "referring-doctor"
    PATIENT = "patient"
    SERVICE = "service"


class Kind(StrEnum):
    """What sort of caller a principal is."""

    USER = "user"
    NODE = "node"  # a registered DICOM application entity
    SHARE = "share"  # the bearer of a share link (a capability)
    SYSTEM = "system"  # the hub itself (routing, prefetch, backup jobs)
    ANONYMOUS = "anonymous"


class Purpose(StrEnum):
    """Why the data is accessed (recorded in every audit entry)."""

    CARE = "care"
    SHARING = "sharing"
    BACKUP = "backup"
    ADMIN = "admin"
    EMERGENCY = "emergency"  # break-glass: needs a reason, flagged for review


class Action(StrEnum):
    """What is done; the DICOM and DICOMweb services map onto these."""

    QUERY = "query"  # C-FIND, QIDO-RS, federated queries, metadata listings
    RETRIEVE = "retrieve"  # C-MOVE, C-GET, WADO-RS, downloads
    VIEW = "view"  # the viewer
    STORE = "store"  # C-STORE, STOW-RS, import
    SHARE = "share"
    EXPORT = "export"
    DELETE = "delete"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or anonymous) caller.

    ``subject`` identifies it in the audit trail: a username, an AE title, a share
    grant id, never a patient name. ``establishments`` are establishment primary keys
    (a user's employers, a node's owner).
    """

    kind: Kind
    subject: str
    roles: frozenset[Role] = frozenset()
    establishments: frozenset[int] = frozenset()
    user_pk: int | None = None
    rpps: str = ""
    email: str = ""
    regional_patient_pk: int | None = None
    """For a patient: their own regional identity."""
    share_grant_pk: int | None = None
    """For the bearer of a share link: the grant."""
    node_permissions: frozenset[Action] = field(default_factory=frozenset)
    """For a DICOM node: which of store, query, retrieve it may do."""

    @property
    def audit_id(self) -> str:
        """How the audit trail names this caller."""
        return f"{self.kind}:{self.subject}"

    def has(self, *roles: Role) -> bool:
        """True when the principal holds any of ``roles``."""
        return any(role in self.roles for role in roles)


ANONYMOUS = Principal(Kind.ANONYMOUS, "anonymous")
SYSTEM = Principal(Kind.SYSTEM, "pacs-hub")
