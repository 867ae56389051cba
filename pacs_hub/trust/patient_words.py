"""The patient page's words, in French and English: plain language, no jargon.

``RULES`` says in words why the access policy (:mod:`pacs_hub.trust.policy`)
allowed or refused an access; ``ACTIONS`` what was done.
"""

from __future__ import annotations

from typing import Any

Words = dict[str, Any]

WORDS: dict[str, Words] = {
    "fr": {
        "title": "Mes images médicales",
        "intro": "Cette page montre vos consentements au partage de vos images, les partages "
        "en cours, et chaque consultation de vos images : qui, quand, quel examen et pourquoi.",
        "logout": "Se déconnecter",
        "other": "English",
        "not_patient": "Cette page est réservée aux patients connectés avec leur compte.",
        "consents": "Mes consentements",
        "shares": "Partages de mes images",
        "accesses": "Qui a consulté mes images",
        "purposes": {
            "regional-sharing": "Partage avec les professionnels de santé de la région",
            "named-doctor": "Partage avec un médecin",
            "national-record": "Publication dans Mon espace santé (DMP)",
            "research": "Recherche médicale",
        },
        "link_doctor": "le médecin à qui le lien est remis",
        "status": {
            "granted": "Vous avez donné votre accord",
            "refused": "Vous avez refusé",
            "withdrawn": "Vous avez retiré votre accord",
            "none": "Pas encore de décision",
        },
        "method": {
            "in-person": "recueilli par un professionnel",
            "patient-link": "par vous-même en ligne",
        },
        "buttons": {
            "granted": "J'accepte",
            "refused": "Je refuse",
            "withdrawn": "Je retire mon accord",
        },
        "no_share": "Aucun partage.",
        "link": "Lien de partage (sans destinataire nommé)",
        "revoke": "Retirer ce partage",
        "share_head": ("Destinataire", "Envoyé par", "Examens", "Expire le", "État"),
        "share_state": {
            "active": "actif",
            "revoked": "retiré",
            "expired": "expiré",
            "consent-withdrawn": "arrêté (consentement retiré)",
        },
        "all_studies": "tous vos examens",
        "no_access": "Personne n'a encore consulté vos images.",
        "access_head": ("Quand", "Qui", "Quoi", "Examen", "Pourquoi"),
        "you": "vous-même",
        "share_bearer": "un médecin avec le lien de partage n° {id}",
        "node": "l'appareil ou le logiciel d'imagerie {ae}",
        "system": "le système (tâche automatique)",
        "break_glass": "ACCÈS D'URGENCE (bris de glace), vérifié après coup",
        "refused": "REFUSÉ :",
        "roles": {
            "regional-admin": "administrateur régional",
            "establishment-admin": "administrateur d'établissement",
            "radiologist": "radiologue",
            "referring-doctor": "médecin",
            "patient": "patient",
            "service": "logiciel",
        },
    },
    "en": {
        "title": "My medical images",
        "intro": "This page shows your consents to sharing your images, the shares in place, "
        "and every time your images were looked at: who, when, which examination and why.",
        "logout": "Sign out",
        "other": "Français",
        "not_patient": "This page is for patients signed in with their own account.",
        "consents": "My consents",
        "shares": "Shares of my images",
        "accesses": "Who looked at my images",
        "purposes": {
            "regional-sharing": "Sharing with the health professionals of the region",
            "named-doctor": "Sharing with a doctor",
            "national-record": "Publication to Mon espace santé (national record)",
            "research": "Medical research",
        },
        "link_doctor": "the doctor to whom the link is handed",
        "status": {
            "granted": "You agreed",
            "refused": "You refused",
            "withdrawn": "You withdrew your agreement",
            "none": "No decision yet",
        },
        "method": {
            "in-person": "recorded by a professional",
            "patient-link": "by yourself online",
        },
        "buttons": {
            "granted": "I agree",
            "refused": "I refuse",
            "withdrawn": "I withdraw my agreement",
        },
        "no_share": "No share.",
        "link": "Share link (no named recipient)",
        "revoke": "Revoke this share",
        "share_head": ("Recipient", "Sent by", "Examinations", "Expires", "State"),
        "share_state": {
            "active": "active",
            "revoked": "revoked",
            "expired": "expired",
            "consent-withdrawn": "stopped (consent withdrawn)",
        },
        "all_studies": "all your examinations",
        "no_access": "Nobody has looked at your images yet.",
        "access_head": ("When", "Who", "What", "Examination", "Why"),
        "you": "yourself",
        "share_bearer": "a doctor holding share link no. {id}",
        "node": "the imaging device or software {ae}",
        "system": "the system (automatic task)",
        "break_glass": "EMERGENCY ACCESS (break-glass), reviewed afterwards",
        "refused": "REFUSED:",
        "roles": {
            "regional-admin": "regional administrator",
            "establishment-admin": "establishment administrator",
            "radiologist": "radiologist",
            "referring-doctor": "doctor",
            "patient": "patient",
            "service": "software",
        },
    },
}

RULES: dict[str, dict[str, str]] = {
    "fr": {
        "establishment": "vous avez été examiné(e) dans son établissement",
        "care-team": "il fait partie de votre équipe de soins",
        "consent": "vous avez accepté le partage régional",
        "share": "un partage de vos images le permettait",
        "own-record": "ce sont vos propres images",
        "break-glass": "urgence",
        "regional-admin": "administration régionale",
        "system": "fonctionnement du système (copie, sauvegarde, transfert)",
        "policy-off": "contrôle d'accès désactivé",
        "node-permission": "appareil autorisé de l'établissement",
        "patient-objected": "vous vous êtes opposé(e) au partage",
        "share-scope": "le partage n'était plus valable ou ne couvrait pas cet examen",
        "no-rule": "aucune autorisation",
    },
    "en": {
        "establishment": "you were examined at their establishment",
        "care-team": "they belong to your care team",
        "consent": "you agreed to regional sharing",
        "share": "a share of your images allowed it",
        "own-record": "these are your own images",
        "break-glass": "emergency",
        "regional-admin": "regional administration",
        "system": "the system's own work (copy, backup, transfer)",
        "policy-off": "access control switched off",
        "node-permission": "a permitted device of the establishment",
        "patient-objected": "you objected to sharing",
        "share-scope": "the share was no longer valid or did not cover this examination",
        "no-rule": "no authorisation",
    },
}

ACTIONS: dict[str, dict[str, str]] = {
    "fr": {
        "view": "a consulté",
        "retrieve": "a téléchargé ou affiché",
        "query": "a recherché",
        "export": "a exporté",
        "share": "a partagé",
        "delete": "a supprimé",
    },
    "en": {
        "view": "viewed",
        "retrieve": "downloaded or displayed",
        "query": "searched",
        "export": "exported",
        "share": "shared",
        "delete": "deleted",
    },
}
