"""instance metadata as DICOM JSON (PS3.18 F.2), made at ingest; fuzzy name columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 15:00:00
"""

import sqlalchemy as sa
from alembic import op

from pacs_hub.dicom.matching import fuzzy_name

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


FUZZY = (
    ("patients", "patient_name", "patient_name_fuzzy"),
    ("studies", "referring_physician_name", "referring_physician_name_fuzzy"),
)


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("metadata_json", sa.LargeBinary(), nullable=True))
    conn = op.get_bind()
    for table, source, target in FUZZY:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column(target, sa.String(length=330), nullable=False, server_default="")
            )
        rows = conn.execute(sa.text(f"SELECT id, {source} FROM {table}")).all()
        for pk, name in rows:
            conn.execute(
                sa.text(f"UPDATE {table} SET {target} = :v WHERE id = :pk"),
                {"v": fuzzy_name(name or ""), "pk": pk},
            )


def downgrade() -> None:
    for table, _source, target in FUZZY:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(target)
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("metadata_json")
