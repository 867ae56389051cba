"""The access policy on the DICOM services: who is calling, and what it may do.

One association is one caller. When the access policy is on
(``PACS_HUB_AUTH_REQUIRED=true``), :func:`admission` decides at A-ASSOCIATE-RQ
(PS3.8 7.1.1) whether the caller may associate at all, and the caller's
:class:`~pacs_hub.trust.principal.Principal` (kind ``node``, subject its AE title, its
node's establishment, the node's permissions) is kept on the association for every
DIMSE request it makes:

* only a registered node may associate (:class:`~pacs_hub.regional.nodes.NodeDirectory`,
  whatever ``PACS_HUB_UNKNOWN_CALLERS`` says);
* the association must come from the node's registered host: its IP address, or one
  of the addresses its name resolves to (resolved once per directory reload). Loopback
  is no exception: a node registered at ``127.0.0.1`` calling from ``127.0.0.2`` is
  refused; a node registered as ``localhost`` may call from 127.0.0.1 or ::1;
* a node marked ``tls`` must call over TLS (the hub listening with
  ``PACS_HUB_DICOM_TLS_CERT``/``_KEY``) and present a client certificate, checked
  against ``PACS_HUB_DICOM_TLS_CA``, whose subject Common Name or one of whose
  subjectAltName DNS names equals its AE title.

A refused association gets A-ASSOCIATE-RJ: rejected-permanent, service-user, reason 3
(calling AE title not recognized, PS3.8 9.3.4), the reason in the hub's log and in the
audit trail (one ``associate`` deny).

Then each service asks the policy (:mod:`pacs_hub.trust.access`), purpose ``care``:
C-STORE :data:`~pacs_hub.trust.principal.Action.STORE` (once per association, audited
once per study it stores, every refusal audited), C-FIND results restricted in SQL to
the visible studies, C-MOVE/C-GET a RETRIEVE decision per study (and for C-MOVE the
destination node's too), storage commitment only for instances the caller may see.
With the policy off nothing here runs beyond one attribute read.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.events import Event
from sqlalchemy import select

from pacs_hub.config import Settings
from pacs_hub.gateway.context import GatewayContext
from pacs_hub.gateway.status import status
from pacs_hub.regional.nodes import NodeOwner, normal_address
from pacs_hub.storage.models import Instance, Series, Study
from pacs_hub.storage.query import Access
from pacs_hub.storage.retrieval import RetrieveItem
from pacs_hub.trust import audit
from pacs_hub.trust.access import (
    AuditWindow,
    RemoteAnswer,
    authorize,
    query_access,
    record_query,
    remote_visible,
)
from pacs_hub.trust.policy import Decision, Policy
from pacs_hub.trust.principal import Action, Kind, Principal, Purpose

LOGGER = logging.getLogger(__name__)
PURPOSE = Purpose.CARE
NOT_AUTHORIZED = 0x0124
"""Refused: Not Authorized (PS3.7 C.5)."""
_ATTRIBUTE = "_pacs_hub_caller"
_POLICIES: dict[int, Policy] = {}
UID_CHUNK = 500


@dataclass
class Caller:
    """The principal of one association and what was already audited for it."""

    principal: Principal
    window: AuditWindow = field(default_factory=lambda: AuditWindow(seconds=float("inf")))
    store: Decision | None = None
    stored: set[str] = field(default_factory=set)


def policy_of(settings: Settings) -> Policy:
    """The policy of this process's settings (built once)."""
    policy = _POLICIES.get(id(settings))
    if policy is None:
        policy = _POLICIES[id(settings)] = Policy(settings)
    return policy


def node_principal(owner: NodeOwner) -> Principal:
    """A registered node as a caller: its AE title, establishment and permissions."""
    return Principal(
        Kind.NODE,
        owner.ae_title,
        establishments=frozenset({owner.establishment_pk})
        if owner.establishment_pk
        else frozenset(),
        node_permissions=frozenset(Action(p) for p in owner.permissions),
    )


def peer_certificate(assoc: Association) -> dict[str, Any] | None:
    """The client certificate of a TLS association (already checked against the CA)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    return dict(cert) if cert else None


def certificate_names(cert: dict[str, Any]) -> set[str]:
    """Subject Common Names and subjectAltName DNS names of a certificate."""
    names = {
        str(value) for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"
    }
    names |= {str(value) for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}
    return names


def admission(assoc: Association, owner: NodeOwner | None) -> str:
    """Why the association may not go on ('' when it may); see the module docstring."""
    if owner is None:
        return "unregistered AE title"
    try:
        source = normal_address(str(assoc.requestor.address))
    except ValueError:
        source = str(assoc.requestor.address)
    if source not in owner.addresses:
        return f"source address {source} is not the node's host {owner.host}"
    if owner.tls:
        cert = peer_certificate(assoc)
        if cert is None:
            return "node requires TLS with a client certificate"
        if owner.ae_title not in certificate_names(cert):
            return "client certificate does not name the AE title"
    return ""


def admit(ctx: GatewayContext, assoc: Association, calling: str, owner: NodeOwner | None) -> bool:
    """At A-ASSOCIATE-RQ: True when the caller may associate; keeps its principal.

    A refusal is recorded in the audit trail (action ``associate``, rule
    ``node-admission``) with the reason."""
    policy = policy_of(ctx.settings)
    if not policy.enforced:
        return True
    reason = admission(assoc, owner)
    if not reason and owner is not None:
        setattr(assoc, _ATTRIBUTE, Caller(node_principal(owner)))
        return True
    LOGGER.warning(
        "association from %s at %s refused: %s", calling, assoc.requestor.address, reason
    )
    entry = audit.AuditEntry(
        actor_kind=str(Kind.NODE),
        actor_id=f"{Kind.NODE}:{calling}",
        action="associate",
        outcome="deny",
        purpose=str(PURPOSE),
        rule="node-admission",
        reason=reason,
        detail={"source": str(assoc.requestor.address)},
    )
    try:
        with ctx.database.session() as session:
            audit.record(session.connection(), entry)
    except Exception:
        LOGGER.exception("association refusal of %s not audited", calling)
    return False


def caller(event: Event, ctx: GatewayContext) -> Caller | None:
    """The association's caller, or None when the policy is off (everything allowed)."""
    found: Caller | None = getattr(event.assoc, _ATTRIBUTE, None)
    if found is not None:
        return found
    if not policy_of(ctx.settings).enforced:
        return None
    # Not admitted through EVT_REQUESTED (cannot happen on the hub's SCP): nobody.
    found = Caller(Principal(Kind.ANONYMOUS, str(event.assoc.requestor.ae_title).strip()))
    setattr(event.assoc, _ATTRIBUTE, found)
    return found


def _detail(event: Event, service: str, **extra: str) -> dict[str, Any]:
    return {"dicom": service, "source": str(event.assoc.requestor.address), **extra}


def refused(comment: str) -> Dataset:
    """A status dataset 0x0124 Refused: Not Authorized with an Error Comment."""
    return status(NOT_AUTHORIZED, comment)


# -- C-STORE ---------------------------------------------------------------------------


def store_refusal(event: Event, ctx: GatewayContext) -> Dataset | None:
    """Before a C-STORE: None when the caller may store, else the status to answer.

    Decided once per association (a store is decided on the node, not a study);
    every refused C-STORE is audited."""
    found = caller(event, ctx)
    if found is None:
        return None
    decision = found.store
    if decision is None:
        with ctx.database.read_connection() as conn:
            decision = policy_of(ctx.settings).decide(conn, found.principal, Action.STORE, PURPOSE)
        found.store = decision
    if decision.allowed:
        return None
    entry = audit.decision_entry(
        found.principal, Action.STORE, PURPOSE, decision, detail=_detail(event, "C-STORE")
    )
    with ctx.database.session() as session:
        audit.record(session.connection(), entry)
    return refused(f"not authorised to store (rule {decision.rule})")


def stored(event: Event, ctx: GatewayContext, study_uid: str) -> None:
    """After a C-STORE: the first instance of each study in an association is audited."""
    found: Caller | None = getattr(event.assoc, _ATTRIBUTE, None)
    if found is None or study_uid in found.stored or found.store is None:
        return
    found.stored.add(study_uid)
    decision = Decision(True, found.store.rule, study_uid=study_uid)
    entry = audit.decision_entry(
        found.principal, Action.STORE, PURPOSE, decision, detail=_detail(event, "C-STORE")
    )
    try:
        with ctx.database.session() as session:
            audit.record(session.connection(), entry)
    except Exception:
        found.stored.discard(study_uid)
        LOGGER.exception("C-STORE audit entry not recorded")


# -- retrieve ---------------------------------------------------------------------------


def studies_of(ctx: GatewayContext, sop_instance_uids: list[str]) -> dict[str, str]:
    """SOP Instance UID -> Study Instance UID for the stored instances among ``uids``."""
    found: dict[str, str] = {}
    with ctx.database.read_connection() as conn:
        for start in range(0, len(sop_instance_uids), UID_CHUNK):
            chunk = sop_instance_uids[start : start + UID_CHUNK]
            rows = conn.execute(
                select(Instance.sop_instance_uid, Study.study_instance_uid)
                .join(Series, Series.id == Instance.series_pk)
                .join(Study, Study.id == Series.study_pk)
                .where(Instance.sop_instance_uid.in_(chunk))
            )
            found.update({str(sop): str(study) for sop, study in rows})
    return found


def allowed_studies(
    event: Event,
    ctx: GatewayContext,
    studies: set[str],
    service: str,
    destination: NodeOwner | None = None,
) -> set[str]:
    """The studies of ``studies`` the caller (and a C-MOVE destination other than the
    caller) may retrieve; each decision audited once per association, every deny."""
    found = caller(event, ctx)
    if found is None:
        return studies
    policy = policy_of(ctx.settings)
    target = None
    if destination is not None and destination.ae_title != found.principal.subject:
        target = node_principal(destination)
    allowed = set()
    for study_uid in sorted(studies):
        extra = {"destination": destination.ae_title} if destination else {}
        decision = authorize(
            ctx.database,
            policy,
            found.principal,
            Action.RETRIEVE,
            PURPOSE,
            study_uid=study_uid,
            detail=_detail(event, service, **extra),
            window=found.window,
        )
        if decision.allowed and target is not None:
            decision = authorize(
                ctx.database,
                policy,
                target,
                Action.RETRIEVE,
                PURPOSE,
                study_uid=study_uid,
                detail=_detail(event, service, requested_by=found.principal.subject),
                window=found.window,
            )
        if decision.allowed:
            allowed.add(study_uid)
    return allowed


# -- C-FIND ------------------------------------------------------------------------------


def find_access(
    event: Event, ctx: GatewayContext, service: str
) -> tuple[Dataset | None, Access | None]:
    """Before a C-FIND: (the refusal status or None, the restriction for its query).

    A node without the query permission is refused (0x0124); any other caller's
    results are restricted in SQL to the studies it may see (so nothing it may not
    see is matched, counted or answered). One audit entry per association."""
    found = caller(event, ctx)
    if found is None:
        return None, None
    policy = policy_of(ctx.settings)
    principal = found.principal
    with ctx.database.read_connection() as conn:
        decision = policy.decide(conn, principal, Action.QUERY, PURPOSE)
        access = None if not decision.allowed else query_access(policy, conn, principal, PURPOSE)
    if not decision.allowed:
        entry = audit.decision_entry(
            principal, Action.QUERY, PURPOSE, decision, detail=_detail(event, service)
        )
        with ctx.database.session() as session:
            audit.record(session.connection(), entry)
        return refused(f"not authorised to query (rule {decision.rule})"), None
    if found.window.first((str(Action.QUERY), service)):
        record_query(ctx.database, policy, principal, PURPOSE, detail=_detail(event, service))
    return None, access


def remote_shown(
    event: Event, ctx: GatewayContext, remote: Dataset | None, locations: tuple[str, ...]
) -> bool:
    """May the caller see a federated answer only a PACS gave? (the rules of
    :func:`pacs_hub.trust.access.remote_visible`, as QIDO-RS ``includeremote`` applies)."""
    found = caller(event, ctx)
    if found is None:
        return True

    def text(keyword: str) -> str:
        value = remote.get(keyword) if remote is not None else None
        return str(value or "").strip()

    answer = RemoteAnswer(
        locations, text("StudyInstanceUID"), text("PatientID"), text("IssuerOfPatientID")
    )
    with ctx.database.read_connection() as conn:
        return remote_visible(policy_of(ctx.settings), conn, found.principal, PURPOSE, answer)


# -- storage commitment ------------------------------------------------------------------


def visible_instances(
    ctx: GatewayContext, assoc: Association, sop_instance_uids: list[str]
) -> set[str] | None:
    """The instances of ``uids`` whose commitment the caller may learn: those it sent,
    those of its establishment's studies, those of studies it may query. None when
    the policy is off (every instance)."""
    found: Caller | None = getattr(assoc, _ATTRIBUTE, None)
    policy = policy_of(ctx.settings)
    if not policy.enforced:
        return None
    if found is None:
        return set()
    principal = found.principal
    rows: list[Any] = []
    with ctx.database.read_connection() as conn:
        for start in range(0, len(sop_instance_uids), UID_CHUNK):
            chunk = sop_instance_uids[start : start + UID_CHUNK]
            rows += conn.execute(
                select(
                    Instance.sop_instance_uid,
                    Instance.received_from_ae,
                    Study.study_instance_uid,
                    Study.establishment_pk,
                )
                .join(Series, Series.id == Instance.series_pk)
                .join(Study, Study.id == Series.study_pk)
                .where(Instance.sop_instance_uid.in_(chunk))
            ).all()
        seen: set[str] = set()
        decided: dict[str, bool] = {}
        for sop, sender, study, establishment in rows:
            if sender == principal.subject or establishment in principal.establishments:
                seen.add(str(sop))
                continue
            if study not in decided:
                decided[study] = policy.decide(
                    conn, principal, Action.QUERY, PURPOSE, study_uid=str(study)
                ).allowed
            if decided[study]:
                seen.add(str(sop))
    return seen


# -- C-MOVE / C-GET ----------------------------------------------------------------------


def may_retrieve(event: Event, ctx: GatewayContext) -> bool:
    """False when the caller may retrieve nothing at all (a node without the retrieve
    permission): the hub then pulls nothing on its behalf (retrieve on demand)."""
    found = caller(event, ctx)
    if found is None:
        return True
    principal = found.principal
    if principal.kind is Kind.NODE:
        return Action.RETRIEVE in principal.node_permissions
    return principal.kind is not Kind.ANONYMOUS


def retrieve_filter(
    event: Event,
    ctx: GatewayContext,
    items: list[RetrieveItem],
    service: str,
    destination: str = "",
) -> tuple[list[RetrieveItem], int]:
    """The matches the caller may retrieve (and a C-MOVE destination receive), and the
    number of instances withheld. Policy off: every match, none withheld."""
    if not items or caller(event, ctx) is None:
        return items, 0
    owner = None
    if destination:
        owner = ctx.ingestor.senders.lookup(destination)
        if owner is None:  # registered a moment ago: not in this process's snapshot yet
            return [], len(items)
    study_of = studies_of(ctx, [item.sop_instance_uid for item in items])
    allowed = allowed_studies(event, ctx, set(study_of.values()), service, owner)
    kept = [item for item in items if study_of.get(item.sop_instance_uid) in allowed]
    return kept, len(items) - len(kept)


def withheld(count: int, service: str) -> Dataset:
    """The final status of a retrieve some of whose studies were withheld.

    PS3.4 C.4.2.1.5 / C.4.3.1.4: Warning B000 (sub-operations complete, one or more
    failures), the withheld instances counted as failed sub-operations (pynetdicom
    counts the remaining ones), an empty Failed SOP Instance UID List: no UID of what
    the caller may not see is returned."""
    answer = status(0xB000, f"{service}: {count} instance(s) not authorised, not sent")
    return answer


def no_failed_uids() -> Dataset:
    """The Identifier of a final response: an empty Failed SOP Instance UID List."""
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = ""
    return identifier


# -- TLS ---------------------------------------------------------------------------------


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The DICOM port's TLS server context (PS3.15 B.1, BCP 195: TLS 1.2 or later), or
    None when ``PACS_HUB_DICOM_TLS_CERT`` / ``_KEY`` are not set.

    With ``PACS_HUB_DICOM_TLS_CA`` a client certificate is asked for and, when one is
    presented, must chain to that CA (else the handshake fails); whether a node must
    present one is the node's ``tls`` flag (:func:`admission`)."""
    if not (settings.dicom_tls_cert and settings.dicom_tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
    if settings.dicom_tls_ca:
        context.load_verify_locations(settings.dicom_tls_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
