"""The INS (Identité Nationale de Santé) and the identity traits of a DICOM dataset.

France's national health identifier (france.md section 3) travels in DICOM as a
Patient ID whose issuer is qualified by an OID (PS3.3 C.7.1.1, Issuer of Patient ID
Qualifiers Sequence (0010,0024) > Universal Entity ID (0040,0032), type ``ISO``):
either the Patient ID itself (Issuer ``ASIP-SANTE-INS-NIR``) or an item of the Other
Patient IDs Sequence (0010,1002). Only these OIDs mark an INS:

* ``1.2.250.1.213.1.4.8`` INS-NIR, ``.9`` INS-NIA (temporary number),
* ``.10`` INS-NIR of test patients, ``.11`` INS-NIR of demonstration patients.

A matricule is 15 characters: 13 digits (``2A``/``2B`` for Corsica in positions 6-7)
and a key ``97 - (N mod 97)`` computed with 2A -> 19, 2B -> 18; one with a wrong key
is not taken as an INS (a typo must never link two people).

The traits kept next to it (birth name, given names, sex, birth date, birth place)
are stored as received; :func:`trait_key` gives their normalised form for matching.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from pacs_hub.dicom.matching import fuzzy_name

INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_TEST = "1.2.250.1.213.1.4.10"
INS_DEMO = "1.2.250.1.213.1.4.11"
INS_OIDS = frozenset({INS_NIR, INS_NIA, INS_TEST, INS_DEMO})
INS_ISSUERS: dict[str, frozenset[str]] = {
    "ASIP-SANTE-INS-NIR": frozenset({INS_NIR, INS_TEST, INS_DEMO}),
    "ASIP-SANTE-INS-NIA": frozenset({INS_NIA}),
    **{oid: frozenset({oid}) for oid in INS_OIDS},
}
"""Issuer of Patient ID values that name an INS, and the OIDs each one covers."""
MATRICULE = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{8}$")


def valid_matricule(value: str) -> bool:
    """True for a 15-character NIR/NIA whose key is ``97 - (N mod 97)``."""
    value = value.strip().upper()
    if not MATRICULE.match(value):
        return False
    body = value[:13].replace("2A", "19", 1) if value[5:7] == "2A" else value[:13]
    body = body.replace("2B", "18", 1) if value[5:7] == "2B" else body
    return 97 - int(body) % 97 == int(value[13:])


def nir_key(body: str) -> str:
    """The two-digit key of a 13-character NIR body (for tests and tools)."""
    digits = body.upper().replace("2A", "19").replace("2B", "18")
    return f"{97 - int(digits) % 97:02d}"


@dataclass(frozen=True, slots=True)
class IdentityTraits:
    """What identifies a person beyond a local Patient ID (france.md 3, Traits)."""

    ins: str = ""
    ins_oid: str = ""
    birth_name: str = ""
    given_names: str = ""
    birth_place: str = ""


Text = Callable[[Dataset, str], str]
"""Reads one text attribute of a data set by keyword, "" when absent."""


def _str(item: Dataset, keyword: str) -> str:
    value: Any = item.get(keyword)
    return "" if value is None else str(value).strip()


def _sequence(item: Dataset, keyword: str) -> Any:
    """The items of a sequence, or None; an absent one costs no conversion."""
    return item.get(keyword) if keyword in item else None


def _qualifier_oid(item: Dataset, text: Text = _str) -> str:
    """The INS OID of an item's Issuer of Patient ID Qualifiers (ISO type), else ''."""
    issuer = text(item, "IssuerOfPatientID")
    qualifiers = _sequence(item, "IssuerOfPatientIDQualifiersSequence")
    for qualifier in qualifiers or ():
        oid = text(qualifier, "UniversalEntityID")
        kind = text(qualifier, "UniversalEntityIDType").upper()
        if oid in INS_OIDS and kind in ("ISO", ""):
            return oid
    return issuer if issuer in INS_OIDS else ""


def find_ins(ds: Dataset, text: Text = _str) -> tuple[str, str]:
    """(matricule, OID) of the dataset's INS, from the Patient ID or an Other Patient ID.

    PS3.3 C.7.1.1: the Patient ID with its Issuer of Patient ID Qualifiers Sequence,
    then each item of the Other Patient IDs Sequence (0010,1002). ``("", "")`` if none.
    ``text`` reads a text attribute (default: pydicom's value, stripped).
    """
    candidates = [ds, *(_sequence(ds, "OtherPatientIDsSequence") or ())]
    for item in candidates:
        oid = _qualifier_oid(item, text)
        matricule = text(item, "PatientID").upper()
        if oid and valid_matricule(matricule):
            return matricule, oid
    return "", ""


def _components(name: str) -> list[str]:
    """The components of the alphabetic group of a Person Name (PS3.5 6.2.1)."""
    return [c.strip() for c in name.split("=")[0].split("^")]


def identity_traits(ds: Dataset, text: Text = _str) -> IdentityTraits:
    """The INS and traits of a dataset; values as received (never normalised).

    Birth name: Patient's Birth Name (0010,1005) if present, else the family name
    component of Patient's Name; given names: its given name component, compound
    first names kept whole. DICOM has no birth-place attribute: it stays empty.
    ``text`` reads a text attribute (the ingest passes its reader of raw values).
    """
    ins, oid = find_ins(ds, text)
    name = _components(text(ds, "PatientName"))
    birth = _components(text(ds, "PatientBirthName"))
    return IdentityTraits(
        ins=ins,
        ins_oid=oid,
        birth_name=(birth[0] or name[0])[:64],
        given_names=(name[1] if len(name) > 1 else "")[:128],
    )


def first_given_name(given_names: str) -> str:
    """The first given name of a list separated by spaces or commas (compound kept)."""
    words = given_names.replace(",", " ").split()
    return words[0] if words else ""


def trait_key(birth_name: str, given_names: str, sex: str, birth_date: str) -> str:
    """The strict-traits key for matching: accents, case, hyphens and spaces folded.

    Two identities are candidates when their keys are equal and none is empty:
    normalised birth name, first given name, sex, birth date (france.md 3, Traits).
    """
    name = _fold(birth_name)
    given = _fold(first_given_name(given_names))
    sex = sex.strip().upper()
    birth_date = birth_date.strip()
    if not (name and given and sex in ("M", "F") and len(birth_date) == 8):
        return ""
    return "|".join((name, given, sex, birth_date))


def _fold(value: str) -> str:
    """:func:`fuzzy_name` without separators: "Jean-Pierre" and "JEAN PIERRE" agree."""
    return "".join(c for c in fuzzy_name(value) if c.isalnum())
