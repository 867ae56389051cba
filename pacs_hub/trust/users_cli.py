"""``pacs-hub users ...``: accounts of the embedded issuer (and users mapped from OIDC).

Exit status 0 on success, 2 when the registry refuses (unknown user or establishment,
duplicate username, unknown role, password too short).
"""

from __future__ import annotations

import secrets
from typing import Annotated

import typer
from rich.markup import escape

from pacs_hub.cli_common import DataDir, console, database, echo_json, print_table, refusals
from pacs_hub.trust import users as registry
from pacs_hub.trust.principal import Role

app = typer.Typer(
    help="Users: roles, establishments, passwords (embedded sign-in), patient accounts.",
    no_args_is_help=True,
)
Username = Annotated[str, typer.Argument(help="The user's login name")]
Roles = Annotated[
    list[str] | None,
    typer.Option("--role", help=f"Role (repeat for several): {', '.join(r.value for r in Role)}"),
]
Establishments = Annotated[
    list[str] | None,
    typer.Option("--establishment", help="Establishment code (repeat for several)"),
]
Password = Annotated[
    str | None,
    typer.Option(help="Password (at least 10 characters); default: prompt, or generate"),
]


def _print(record: registry.UserRecord) -> None:
    console.print(f"username        {escape(record.username)}")
    console.print(f"name            {escape(record.display_name) or '-'}")
    console.print(f"roles           {', '.join(record.roles) or '-'}")
    console.print(f"establishments  {', '.join(record.establishments) or '-'}")
    console.print(f"rpps            {record.rpps or '-'}")
    console.print(f"email           {escape(record.email) or '-'}")
    console.print(f"patient         {record.regional_id or '-'}")
    console.print(f"external        {escape(record.external_subject) or '-'}")
    console.print(f"password        {'set' if record.has_password else 'none'}")
    console.print(f"active          {'yes' if record.active else 'no (disabled)'}")


def _password(password: str | None, generate: bool) -> tuple[str | None, bool]:
    """The password to set and whether it was generated (and must be shown)."""
    if password is not None:
        return password, False
    if generate:
        return secrets.token_urlsafe(15), True
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True), False


@app.command("add")
def add(
    username: Username,
    role: Roles = None,
    establishment: Establishments = None,
    name: Annotated[str, typer.Option(help="Display name")] = "",
    rpps: Annotated[str, typer.Option(help="RPPS number (IDNPS without the leading 8)")] = "",
    email: Annotated[str, typer.Option(help="E-mail address")] = "",
    patient: Annotated[
        str, typer.Option(help="Regional id of the patient this account is (role patient)")
    ] = "",
    password: Password = None,
    generate_password: Annotated[
        bool, typer.Option("--generate-password", help="Generate a password and print it once")
    ] = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="No local password (OIDC or service only)")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Register a user with roles and establishments (and a password for the login page)."""
    secret, shown = (None, False) if no_password else _password(password, generate_password)
    with refusals():
        record = registry.create_user(
            database(data_dir),
            username,
            registry.UserFields(
                display_name=name,
                roles=tuple(role or ()),
                establishments=tuple(establishment or ()),
                rpps=rpps,
                email=email,
                regional_id=patient,
                password=secret,
            ),
        )
    console.print(f"user {escape(record.username)} added ({', '.join(record.roles) or 'no role'})")
    if shown:
        console.print(f"password: {secret}  (shown once)")


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    data_dir: DataDir = None,
) -> None:
    """Every user: roles, establishments, whether active."""
    records = registry.list_users(database(data_dir))
    if as_json:
        rows = [
            {
                "username": r.username,
                "roles": list(r.roles),
                "establishments": list(r.establishments),
                "rpps": r.rpps,
                "active": r.active,
                "external_subject": r.external_subject,
            }
            for r in records
        ]
        echo_json(rows)
        return
    print_table(
        ("username", "roles", "establishments", "rpps", "active"),
        (
            (
                escape(r.username),
                ", ".join(r.roles),
                ", ".join(r.establishments),
                r.rpps,
                "yes" if r.active else "no",
            )
            for r in records
        ),
    )


@app.command("show")
def show(username: Username, data_dir: DataDir = None) -> None:
    """One user."""
    with refusals():
        _print(registry.get_user(database(data_dir), username))


@app.command("passwd")
def passwd(
    username: Username,
    password: Password = None,
    generate_password: Annotated[
        bool, typer.Option("--generate-password", help="Generate a password and print it once")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Set a user's password (prompted unless given or generated)."""
    secret, shown = _password(password, generate_password)
    with refusals():
        registry.update_user(database(data_dir), username, registry.UserFields(password=secret))
    console.print(f"password of {escape(username)} changed")
    if shown:
        console.print(f"password: {secret}  (shown once)")


@app.command("update")
def update(
    username: Username,
    role: Roles = None,
    establishment: Establishments = None,
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    rpps: Annotated[str | None, typer.Option(help="RPPS number")] = None,
    email: Annotated[str | None, typer.Option(help="E-mail address")] = None,
    patient: Annotated[str | None, typer.Option(help="Regional id of the patient")] = None,
    data_dir: DataDir = None,
) -> None:
    """Change a user; --role and --establishment replace the current sets."""
    fields = registry.UserFields(
        display_name=name,
        roles=tuple(role) if role else None,
        establishments=tuple(establishment) if establishment else None,
        rpps=rpps,
        email=email,
        regional_id=patient,
    )
    with refusals():
        _print(registry.update_user(database(data_dir), username, fields))


def _set_active(username: str, active: bool, data_dir: DataDir) -> None:
    with refusals():
        registry.update_user(database(data_dir), username, registry.UserFields(active=active))
    console.print(f"user {escape(username)} {'enabled' if active else 'disabled'}")


@app.command("disable")
def disable(username: Username, data_dir: DataDir = None) -> None:
    """Disable a user: sign-in and their tokens stop working (within seconds)."""
    _set_active(username, False, data_dir)


@app.command("enable")
def enable(username: Username, data_dir: DataDir = None) -> None:
    """Enable a disabled user again."""
    _set_active(username, True, data_dir)


@app.command("grant-establishment")
def grant_establishment(
    username: Username,
    codes: Annotated[list[str], typer.Argument(help="Establishment codes to add")],
    data_dir: DataDir = None,
) -> None:
    """Add establishments to a user's (their staff see their studies)."""
    with refusals():
        record = registry.grant_establishment(database(data_dir), username, codes)
    console.print(f"{escape(username)}: {', '.join(record.establishments)}")
