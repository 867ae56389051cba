"""Audit entries as DICOM audit messages (PS3.15 A.5, IHE ATNA), validated by the schema.

Each entry of the trail becomes one message (two for a break-glass access: the
access itself and a Security Alert "Emergency Override Started"):

========================  =====================================  ======  ===========
entry action              message (EventID, PS3.15 A.5.3)        action  clause
========================  =====================================  ======  ===========
query                     110112 Query                           E       A.5.3.15
view                      110103 DICOM Instances Accessed        R       A.5.3.6
retrieve                  110104 DICOM Instances Transferred     R       A.5.3.7
store                     110104 DICOM Instances Transferred     C       A.5.3.7
export                    110106 Export                          R       A.5.3.8
delete                    110105 DICOM Study Deleted             D       A.5.3.5
audit-read / audit-prune  110101 Audit Log Used                  R / D   A.5.3.2
login / logout            110114 User Authentication             E       A.5.3.18
share(-revoke), consent   110113 Security Alert (110135 Object   E       A.5.3.17
                          Security Attributes Changed)
break-glass (any access)  + 110113 Security Alert (110127        E       A.5.3.17
                          Emergency Override Started)
associate                 110113 Security Alert (110126 Node     E       A.5.3.17
                          Authentication)
anything else             110113 Security Alert (110132 Use of   E       A.5.3.17
                          Restricted Function)
========================  =====================================  ======  ===========

EventOutcomeIndicator (A.5.1.1): allow / ok -> 0, deny -> 4 (minor failure: refused
by policy), anything else -> 8. Participants: the requestor (``UserID`` = the
trail's actor id: ``user:alice``, ``node:CT1``, with the caller's IP address when
the entry's detail holds one as ``address`` or ``source``) and the hub (its AE
title, ``UserIsRequestor`` false), with Source (110153) and Destination (110152)
role ids where the clause asks for them. The
study is ParticipantObject type 2, role 3, id type (110180, DCM, "Study Instance
UID"); the patient is type 1, role 1, id type (2, RFC-3881, "Patient Number") with
the *regional* id and its issuer (``RP00000012^^^PACS_HUB_REGION``): never a name
nor an establishment's Patient ID. The schema makes a ParticipantObjectName (or
Query) mandatory: it carries that same identifier, not a person's name.

:func:`validate` checks a message against the schema of PS3.15 A.5.1.1, kept
verbatim in ``schema/audit-message.rnc`` (its ``##`` documentation comments,
which the RELAX NG compact grammar only accepts before a pattern, are read as
plain comments).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lxml import etree

from pacs_hub.config import Settings
from pacs_hub.errors import HubError
from pacs_hub.trust.audit import PRUNE_ACTION
from pacs_hub.trust.audit_query import READ_ACTION, AuditRecord

SCHEMA = Path(__file__).with_name("schema") / "audit-message.rnc"
DCM = "DCM"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2"
SOURCE_ROLE = ("110153", "Source Role ID")
DESTINATION_ROLE = ("110152", "Destination Role ID")


class InvalidAuditMessage(HubError):
    """A generated audit message does not validate against PS3.15 A.5.1."""

    http_status = 500
    title = "Invalid audit message"


@dataclass(frozen=True, slots=True)
class Event:
    """An EventID of CID 400 (Audit Event ID) and its EventActionCode."""

    code: str
    meaning: str
    action_code: str
    type_code: tuple[str, str] | None = None
    """EventTypeCode (CID 401/403), for Security Alert and User Authentication."""


QUERY = Event("110112", "Query", "E")
ACCESSED = Event("110103", "DICOM Instances Accessed", "R")
TRANSFERRED_OUT = Event("110104", "DICOM Instances Transferred", "R")
TRANSFERRED_IN = Event("110104", "DICOM Instances Transferred", "C")
EXPORT = Event("110106", "Export", "R")
STUDY_DELETED = Event("110105", "DICOM Study Deleted", "D")
LOG_READ = Event("110101", "Audit Log Used", "R")
LOG_PRUNED = Event("110101", "Audit Log Used", "D")
LOGIN = Event("110114", "User Authentication", "E", ("110122", "Login"))
LOGOUT = Event("110114", "User Authentication", "E", ("110123", "Logout"))
SECURITY_CHANGE = Event(
    "110113", "Security Alert", "E", ("110135", "Object Security Attributes Changed")
)
EMERGENCY = Event("110113", "Security Alert", "E", ("110127", "Emergency Override Started"))
RESTRICTED = Event("110113", "Security Alert", "E", ("110132", "Use of Restricted Function"))
NODE_AUTH = Event("110113", "Security Alert", "E", ("110126", "Node Authentication"))

EVENTS: dict[str, Event] = {
    "query": QUERY,
    "view": ACCESSED,
    "retrieve": TRANSFERRED_OUT,
    "store": TRANSFERRED_IN,
    "export": EXPORT,
    "delete": STUDY_DELETED,
    READ_ACTION: LOG_READ,
    PRUNE_ACTION: LOG_PRUNED,
    "login": LOGIN,
    "logout": LOGOUT,
    "share": SECURITY_CHANGE,
    "share-revoke": SECURITY_CHANGE,
    "consent": SECURITY_CHANGE,
    "associate": NODE_AUTH,  # a DICOM association admitted or refused
}
OUTCOMES = {"allow": "0", "ok": "0", "deny": "4", "failed": "4"}
NOT_QUERY_KEYS = ("address", "source", "break_glass")


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who reports: AuditSourceIdentification and the hub's ActiveParticipant."""

    source_id: str
    site_id: str
    host: str

    @classmethod
    def of(cls, settings: Settings) -> AuditSource:
        """The hub described by its settings (AE title, regional issuer, listen host)."""
        return cls(settings.ae_title, settings.regional_issuer, settings.host)


@dataclass(frozen=True, slots=True)
class Message:
    """One audit message of one entry: its EventID and the XML (UTF-8)."""

    entry_id: int
    event_code: str
    xml: bytes


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold (2.2 Char) replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def _coded(parent: etree._Element, tag: str, code: str, system: str, meaning: str) -> None:
    etree.SubElement(
        parent,
        tag,
        {"csd-code": code, "codeSystemName": system, "originalText": meaning},
    )


def _event(root: etree._Element, rec: AuditRecord, event: Event) -> None:
    ident = etree.SubElement(
        root,
        "EventIdentification",
        EventActionCode=event.action_code,
        EventDateTime=rec.at.isoformat(timespec="milliseconds") + "Z",
        EventOutcomeIndicator=OUTCOMES.get(rec.outcome, "8"),
    )
    _coded(ident, "EventID", event.code, DCM, event.meaning)
    if event.type_code is not None:
        _coded(ident, "EventTypeCode", event.type_code[0], DCM, event.type_code[1])
    words = [f"{rec.outcome} by rule {rec.rule}" if rec.rule else rec.outcome]
    if rec.purpose:
        words.append(f"purpose {rec.purpose}")
    if rec.reason:
        words.append(f"reason: {rec.reason}")
    etree.SubElement(ident, "EventOutcomeDescription").text = _x("; ".join(words))


def _roles(event: Event) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(requestor's, hub's) RoleIDCode for the clause of ``event``."""
    if event is QUERY or event is TRANSFERRED_IN:
        return SOURCE_ROLE, DESTINATION_ROLE
    if event is TRANSFERRED_OUT:
        return DESTINATION_ROLE, SOURCE_ROLE
    if event is EXPORT:
        return None, SOURCE_ROLE
    return None, None


def _participants(
    root: etree._Element, rec: AuditRecord, event: Event, source: AuditSource
) -> None:
    requestor_role, hub_role = _roles(event)
    attrs = {"UserID": _x(rec.actor_id) or "anonymous", "UserIsRequestor": "true"}
    address = rec.detail.get("address") or rec.detail.get("source")  # HTTP / DICOM peer
    if isinstance(address, str) and address:
        attrs |= {"NetworkAccessPointID": _x(address), "NetworkAccessPointTypeCode": "2"}
    user = etree.SubElement(root, "ActiveParticipant", attrs)
    if requestor_role is not None:
        _coded(user, "RoleIDCode", requestor_role[0], DCM, requestor_role[1])
    hub = etree.SubElement(
        root,
        "ActiveParticipant",
        UserID=source.source_id,
        UserIsRequestor="false",
        NetworkAccessPointID=source.host,
        NetworkAccessPointTypeCode="1",
    )
    if hub_role is not None:
        _coded(hub, "RoleIDCode", hub_role[0], DCM, hub_role[1])


def _audit_source(root: etree._Element, source: AuditSource) -> None:
    ident = etree.SubElement(
        root,
        "AuditSourceIdentification",
        AuditEnterpriseSiteID=source.site_id,
        AuditSourceID=source.source_id,
    )
    etree.SubElement(ident, "AuditSourceTypeCode", {"csd-code": "4"})  # application server


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _query_object(root: etree._Element, rec: AuditRecord) -> None:
    sop_class = _x(str(rec.detail.get("sop_class_uid") or STUDY_ROOT_FIND))
    obj = etree.SubElement(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=sop_class,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="3",
    )
    _coded(obj, "ParticipantObjectIDTypeCode", "110181", DCM, "SOP Class UID")
    query = rec.detail.get("query")
    if not isinstance(query, str):  # the recorded query keys (level, UIDs; never names)
        keys = {k: v for k, v in rec.detail.items() if k not in NOT_QUERY_KEYS}
        query = json.dumps(keys, sort_keys=True, separators=(",", ":"))
    etree.SubElement(obj, "ParticipantObjectQuery").text = _b64(query)
    syntax = _x(str(rec.detail.get("transfer_syntax") or IMPLICIT_LITTLE_ENDIAN))
    etree.SubElement(obj, "ParticipantObjectDetail", type="TransferSyntax", value=_b64(syntax))


def _log_object(root: etree._Element, source: AuditSource) -> None:
    obj = etree.SubElement(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=f"{source.source_id}:audit_events",
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="13",
    )
    _coded(obj, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
    etree.SubElement(obj, "ParticipantObjectName").text = "Security Audit Log"


def _objects(root: etree._Element, rec: AuditRecord, event: Event, source: AuditSource) -> None:
    if event in (LOG_READ, LOG_PRUNED):
        _log_object(root, source)
    if event is QUERY:
        _query_object(root, rec)
    if rec.study_uid:
        study_uid = _x(rec.study_uid)
        study = etree.SubElement(
            root,
            "ParticipantObjectIdentification",
            ParticipantObjectID=study_uid,
            ParticipantObjectTypeCode="2",
            ParticipantObjectTypeCodeRole="3",
        )
        _coded(study, "ParticipantObjectIDTypeCode", "110180", DCM, "Study Instance UID")
        etree.SubElement(study, "ParticipantObjectName").text = study_uid
    if rec.regional_pk is not None:
        patient_id = f"{rec.regional_id}^^^{source.site_id}"
        patient = etree.SubElement(
            root,
            "ParticipantObjectIdentification",
            ParticipantObjectID=patient_id,
            ParticipantObjectTypeCode="1",
            ParticipantObjectTypeCodeRole="1",
        )
        _coded(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
        etree.SubElement(patient, "ParticipantObjectName").text = patient_id


def build(rec: AuditRecord, event: Event, source: AuditSource) -> etree._Element:
    """The AuditMessage element of ``rec`` reported as ``event``."""
    root = etree.Element("AuditMessage")
    _event(root, rec, event)
    _participants(root, rec, event, source)
    _audit_source(root, source)
    _objects(root, rec, event, source)
    return root


def events_of(rec: AuditRecord) -> list[Event]:
    """The events an entry is reported as (see the module's table)."""
    events = [EVENTS.get(rec.action, RESTRICTED)]
    if rec.detail.get("break_glass") or rec.purpose == "emergency":
        events.append(EMERGENCY)
    return events


def messages(rec: AuditRecord, source: AuditSource, *, check: bool = True) -> list[Message]:
    """The audit messages of one entry, each validated against the schema."""
    out = []
    for event in events_of(rec):
        root = build(rec, event, source)
        if check:
            validate(root)
        xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        out.append(Message(rec.id, event.code, xml))
    return out


@cache
def schema() -> etree.RelaxNG:
    """The RELAX NG schema of PS3.15 A.5.1.1 (loaded once)."""
    text = SCHEMA.read_text(encoding="utf-8").replace("##", "#")
    return etree.RelaxNG.from_rnc_string(text)


def schema_errors(message: etree._Element | bytes) -> list[str]:
    """Why ``message`` does not validate (empty when it does)."""
    root = etree.fromstring(message) if isinstance(message, bytes) else message
    checker = schema()
    if checker.validate(root):
        return []
    return [f"line {e.line}: {e.message}" for e in checker.error_log]


def validate(message: etree._Element | bytes) -> None:
    """Raise :class:`InvalidAuditMessage` unless ``message`` follows PS3.15 A.5.1."""
    errors = schema_errors(message)
    if errors:
        raise InvalidAuditMessage(
            "audit message does not follow PS3.15 A.5.1: " + "; ".join(errors[:5])
        )
