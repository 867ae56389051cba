"""trust

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 15:12:47

Users and their establishments, consents, share grants, the hash-chained audit trail
(with its one-row head), per-node permissions, and the establishment of each study
(backfilled from the node that sent its first instance).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=256), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("regional_pk", sa.Integer(), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_actor_id"), ["actor_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_audit_events_regional_pk"), ["regional_pk"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_audit_events_study_uid"), ["study_uid"], unique=False)

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "consents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("regional_pk", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("doctor_ref", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("recorded_by", sa.String(length=128), nullable=False),
        sa.Column("proof_sha256", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["regional_pk"],
            ["regional_patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consents_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_consents_regional_pk"), ["regional_pk"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("roles", sa.String(length=128), nullable=False),
        sa.Column("rpps", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=128), nullable=False),
        sa.Column("external_subject", sa.String(length=256), nullable=False),
        sa.Column("regional_patient_pk", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["regional_patient_pk"],
            ["regional_patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_users_email"), ["email"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_users_external_subject"), ["external_subject"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_users_rpps"), ["rpps"], unique=False)

    op.create_table(
        "share_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by_user_pk", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(length=128), nullable=False),
        sa.Column("regional_pk", sa.Integer(), nullable=False),
        sa.Column("study_uids", sa.Text(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("one_time_code_sha256", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_user_pk"],
            ["users.id"],
        ),
        sa.ForeignKeyConstraint(
            ["regional_pk"],
            ["regional_patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    with op.batch_alter_table("share_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_share_grants_created_by_user_pk"), ["created_by_user_pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_share_grants_regional_pk"), ["regional_pk"], unique=False
        )

    op.create_table(
        "user_establishments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=False),
        sa.Column("establishment_pk", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["establishment_pk"],
            ["establishments.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_pk"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_pk", "establishment_pk"),
    )
    with op.batch_alter_table("user_establishments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_user_establishments_establishment_pk"),
            ["establishment_pk"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_user_establishments_user_pk"), ["user_pk"], unique=False
        )

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("can_store", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(
            sa.Column("can_query", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(
            sa.Column("can_retrieve", sa.Boolean(), nullable=False, server_default=sa.true())
        )

    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("establishment_pk", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_studies_establishment_pk"), ["establishment_pk"], unique=False
        )
        batch_op.create_foreign_key(
            "fk_studies_establishment", "establishments", ["establishment_pk"], ["id"]
        )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index(
            "ix_patients_birth_date_sex", ["patient_birth_date", "patient_sex"], unique=False
        )
    _backfill()


GENESIS = "0" * 64


def _backfill() -> None:
    conn = op.get_bind()
    conn.execute(
        sa.text(
            "UPDATE studies SET establishment_pk = ("
            " SELECT n.establishment_pk FROM instances i"
            " JOIN series se ON se.id = i.series_pk"
            " JOIN nodes n ON n.ae_title = i.received_from_ae"
            " WHERE se.study_pk = studies.id ORDER BY i.id LIMIT 1)"
        )
    )
    conn.execute(
        sa.text("INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, 0, :genesis)"),
        {"genesis": GENESIS},
    )


def downgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index("ix_patients_birth_date_sex")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_establishment_pk"))
        batch_op.drop_column("establishment_pk")

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("can_retrieve")
        batch_op.drop_column("can_query")
        batch_op.drop_column("can_store")

    with op.batch_alter_table("user_establishments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_establishments_user_pk"))
        batch_op.drop_index(batch_op.f("ix_user_establishments_establishment_pk"))

    op.drop_table("user_establishments")
    with op.batch_alter_table("share_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_share_grants_regional_pk"))
        batch_op.drop_index(batch_op.f("ix_share_grants_created_by_user_pk"))

    op.drop_table("share_grants")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_rpps"))
        batch_op.drop_index(batch_op.f("ix_users_external_subject"))
        batch_op.drop_index(batch_op.f("ix_users_email"))

    op.drop_table("users")
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consents_regional_pk"))
        batch_op.drop_index(batch_op.f("ix_consents_at"))

    op.drop_table("consents")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_study_uid"))
        batch_op.drop_index(batch_op.f("ix_audit_events_regional_pk"))
        batch_op.drop_index(batch_op.f("ix_audit_events_at"))
        batch_op.drop_index(batch_op.f("ix_audit_events_actor_id"))

    op.drop_table("audit_events")
