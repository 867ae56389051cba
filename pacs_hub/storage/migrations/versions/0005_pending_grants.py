"""pending grants

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 21:00:00

Authorization codes and web sign-in states, shared by the hub's HTTP processes
(hashed secret, kind, JSON payload, expiry).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_grants",
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("secret_hash"),
    )
    with op.batch_alter_table("pending_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pending_grants_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("pending_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_grants_expires_at"))
    op.drop_table("pending_grants")
