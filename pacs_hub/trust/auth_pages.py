"""The HTML pages of the embedded issuer: sign in and signed out, in French and English."""

from __future__ import annotations

import html
from collections.abc import Mapping

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#0b1726;color:#e8eef5;display:flex;"
    "justify-content:center;padding-top:8vh}main{background:#14273d;padding:2rem 2.5rem;"
    "border-radius:8px;min-width:22rem;max-width:28rem}label{display:block;margin-top:1rem}"
    "input[type=text],input[type=password]{width:100%;padding:.5rem;margin-top:.3rem;"
    "box-sizing:border-box}button{margin-top:1.5rem;padding:.6rem 1.2rem}"
    ".error{background:#6b1d1d;padding:.6rem;border-radius:4px}.en{color:#9fb3c8}"
)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='fr'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def login_page(hidden: Mapping[str, str], username: str = "", error: str = "") -> str:
    """The sign-in form; ``hidden`` carries the authorization request's parameters."""
    fields = "".join(
        f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
        for k, v in hidden.items()
    )
    problem = f"<p class='error' role='alert'>{html.escape(error)}</p>" if error else ""
    body = (
        "<h1>PACS Hub</h1>"
        "<p>Connexion <span class='en'>/ Sign in</span></p>"
        f"{problem}"
        "<form method='post' action='/auth/authorize'>"
        f"{fields}"
        "<label for='username'>Identifiant <span class='en'>/ Username</span>"
        f"<input type='text' id='username' name='username' value='{html.escape(username)}'"
        " autocomplete='username' required autofocus></label>"
        "<label for='password'>Mot de passe <span class='en'>/ Password</span>"
        "<input type='password' id='password' name='password'"
        " autocomplete='current-password' required></label>"
        "<button type='submit' id='sign-in'>Se connecter <span class='en'>/ Sign in</span>"
        "</button></form>"
    )
    return _page("PACS Hub : connexion / sign in", body)


def signed_out_page() -> str:
    """Shown after logout."""
    body = (
        "<h1>PACS Hub</h1><p>Vous êtes déconnecté. <span class='en'>You are signed out.</span>"
        "</p><p><a href='/auth/login'>Se reconnecter <span class='en'>/ Sign in again</span>"
        "</a></p>"
    )
    return _page("PACS Hub : déconnecté / signed out", body)


def error_page(message: str) -> str:
    """A request the issuer cannot serve (bad client parameters): never redirected."""
    body = (
        "<h1>PACS Hub</h1><p class='error'>Demande de connexion invalide"
        f" <span class='en'>/ Invalid sign-in request</span>: {html.escape(message)}</p>"
    )
    return _page("PACS Hub : erreur / error", body)
