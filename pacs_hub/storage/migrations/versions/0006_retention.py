"""retention and destruction

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 05:30:00

Legal retention (CSP R. 1112-7): an establishment's retention period, a patient's date
of death, legal holds, and destructions with their studies and signatures
(:mod:`pacs_hub.archive.models`).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("establishments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retention_years", sa.Integer(), nullable=True))
    with op.batch_alter_table("regional_patients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("death_date", sa.String(length=8), nullable=False, server_default="")
        )
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("regional_pk", sa.Integer(), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("placed_by", sa.String(length=128), nullable=False),
        sa.Column("placed_at", sa.DateTime(), nullable=False),
        sa.Column("released_by", sa.String(length=128), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["regional_pk"], ["regional_patients.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_legal_holds_regional_pk"), ["regional_pk"])
        batch_op.create_index(
            batch_op.f("ix_legal_holds_study_instance_uid"), ["study_instance_uid"]
        )
    op.create_table(
        "destructions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("establishment_pk", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("as_of", sa.String(length=8), nullable=False),
        sa.Column("note", sa.String(length=256), nullable=False),
        sa.Column("proposed_by", sa.String(length=128), nullable=False),
        sa.Column("proposed_at", sa.DateTime(), nullable=False),
        sa.Column("executed_by", sa.String(length=128), nullable=False),
        sa.Column("executed_at", sa.DateTime(), nullable=True),
        sa.Column("cancelled_by", sa.String(length=128), nullable=False),
        sa.Column("cancel_reason", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["establishment_pk"], ["establishments.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("destructions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_destructions_establishment_pk"), ["establishment_pk"])
        batch_op.create_index(batch_op.f("ix_destructions_state"), ["state"])
    op.create_table(
        "destruction_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("destruction_pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("regional_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("study_description", sa.String(length=64), nullable=False),
        sa.Column("last_contact", sa.String(length=8), nullable=False),
        sa.Column("retention_end", sa.String(length=8), nullable=False),
        sa.Column("num_instances", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("kept_reason", sa.String(length=256), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["destruction_pk"], ["destructions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destruction_pk", "study_instance_uid"),
    )
    with op.batch_alter_table("destruction_studies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_destruction_studies_destruction_pk"), ["destruction_pk"]
        )
        batch_op.create_index(
            batch_op.f("ix_destruction_studies_study_instance_uid"), ["study_instance_uid"]
        )
    op.create_table(
        "destruction_signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("destruction_pk", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.String(length=16), nullable=False),
        sa.Column("signer", sa.String(length=128), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=False),
        sa.Column("signed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["destruction_pk"], ["destructions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destruction_pk", "capacity"),
    )
    with op.batch_alter_table("destruction_signatures", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_destruction_signatures_destruction_pk"), ["destruction_pk"]
        )


def downgrade() -> None:
    op.drop_table("destruction_signatures")
    op.drop_table("destruction_studies")
    op.drop_table("destructions")
    op.drop_table("legal_holds")
    with op.batch_alter_table("regional_patients", schema=None) as batch_op:
        batch_op.drop_column("death_date")
    with op.batch_alter_table("establishments", schema=None) as batch_op:
        batch_op.drop_column("retention_years")
