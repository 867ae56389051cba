"""Small server-rendered HTML pages of the trust layer (share links, the patient page).

Plain HTML, no script, French or English (``?lang=``, else the browser's
Accept-Language, else French); every value is escaped. Pages are never cached
(``Cache-Control: no-store``) and refuse framing.
"""

from __future__ import annotations

import html

from fastapi import Request
from fastapi.responses import HTMLResponse

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#1b1b1b}table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ccc;"
    "padding:.3rem .5rem;text-align:left;vertical-align:top}.flag{color:#b00;font-weight:bold}"
    "form.inline{display:inline}blockquote{background:#f4f4f4;padding:.5rem 1rem}"
)
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


def language(request: Request) -> str:
    """fr or en: ``?lang=``, else the first language the browser accepts, else fr."""
    asked = request.query_params.get("lang", "")
    if asked in ("fr", "en"):
        return asked
    accepted = request.headers.get("accept-language", "").lower()
    return "en" if accepted.startswith("en") else "fr"


def esc(value: object) -> str:
    """HTML-escape any value."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str, lang: str, status: int = 200) -> HTMLResponse:
    """A complete page around ``body`` (already escaped HTML)."""
    document = (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=HEADERS)


def same_origin(request: Request) -> bool:
    """A form POST came from this hub's own pages (Origin or Sec-Fetch-Site), not from
    another site riding on the user's cookies (CSRF)."""
    site = request.headers.get("sec-fetch-site", "")
    if site:  # Fetch Metadata, sent by every current browser: the browser's own word
        return site in ("same-origin", "none")
    origin = request.headers.get("origin", "")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        return origin.split("://", 1)[-1] == host
    return True
