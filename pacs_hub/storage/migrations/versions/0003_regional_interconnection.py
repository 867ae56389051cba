"""regional interconnection: establishments, identity, routing

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 14:54:40

Establishments and their issuers, node ownership and health, identity traits and the
regional cross-reference (with its history and review candidates), retrieve jobs,
routing rules and their persistent queue.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "establishments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("default_issuer", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code"),
    )
    op.create_table(
        "identity_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("reverted_by_pk", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["reverted_by_pk"],
            ["identity_events.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("identity_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_events_at"), ["at"], unique=False)

    op.create_table(
        "regional_patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("regional_id", sa.String(length=64), nullable=False),
        sa.Column("ins", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("ins_oid", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("merged_into_pk", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["merged_into_pk"],
            ["regional_patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("regional_id"),
    )
    with op.batch_alter_table("regional_patients", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_regional_patients_ins"), ["ins"], unique=False)

    op.create_table(
        "establishment_issuers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("establishment_pk", sa.Integer(), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["establishment_pk"],
            ["establishments.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("issuer"),
    )
    with op.batch_alter_table("establishment_issuers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_establishment_issuers_establishment_pk"),
            ["establishment_pk"],
            unique=False,
        )

    op.create_table(
        "link_candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("regional_pk", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_pk"],
            ["patients.id"],
        ),
        sa.ForeignKeyConstraint(
            ["regional_pk"],
            ["regional_patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_pk", "regional_pk"),
    )
    with op.batch_alter_table("link_candidates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_link_candidates_patient_pk"), ["patient_pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_link_candidates_regional_pk"), ["regional_pk"], unique=False
        )

    op.create_table(
        "retrieve_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("source_node_pk", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expected", sa.Integer(), nullable=True),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["source_node_pk"],
            ["nodes.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("retrieve_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_retrieve_jobs_state"), ["state"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_retrieve_jobs_study_instance_uid"), ["study_instance_uid"], unique=False
        )

    op.create_table(
        "routing_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("conditions", sa.Text(), nullable=False),
        sa.Column("destination_node_pk", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["destination_node_pk"],
            ["nodes.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "routing_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule_pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("destination_node_pk", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["destination_node_pk"],
            ["nodes.id"],
        ),
        sa.ForeignKeyConstraint(
            ["rule_pk"],
            ["routing_rules.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rule_pk", "study_instance_uid"),
    )
    with op.batch_alter_table("routing_queue", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routing_queue_rule_pk"), ["rule_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_routing_queue_state"), ["state"], unique=False)

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("establishment_pk", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), nullable=False, server_default="pacs")
        )
        batch_op.add_column(
            sa.Column("tls", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column(
                "health_status", sa.String(length=8), nullable=False, server_default="unknown"
            )
        )
        batch_op.add_column(sa.Column("health_checked_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("down_since", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("latency_ms", sa.Float(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_nodes_establishment_pk"), ["establishment_pk"], unique=False
        )
        batch_op.create_foreign_key(
            "fk_nodes_establishment", "establishments", ["establishment_pk"], ["id"]
        )

    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ins", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("ins_oid", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("birth_name", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("given_names", sa.String(length=128), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("birth_place", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("regional_patient_pk", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("link_method", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.create_index(batch_op.f("ix_patients_ins"), ["ins"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_patients_regional_patient_pk"), ["regional_patient_pk"], unique=False
        )
        batch_op.create_foreign_key(
            "fk_patients_regional_patient", "regional_patients", ["regional_patient_pk"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patients_regional_patient_pk"))
        batch_op.drop_index(batch_op.f("ix_patients_ins"))
        batch_op.drop_column("link_method")
        batch_op.drop_column("regional_patient_pk")
        batch_op.drop_column("birth_place")
        batch_op.drop_column("given_names")
        batch_op.drop_column("birth_name")
        batch_op.drop_column("ins_oid")
        batch_op.drop_column("ins")

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nodes_establishment_pk"))
        batch_op.drop_column("latency_ms")
        batch_op.drop_column("down_since")
        batch_op.drop_column("health_checked_at")
        batch_op.drop_column("health_status")
        batch_op.drop_column("tls")
        batch_op.drop_column("role")
        batch_op.drop_column("establishment_pk")

    with op.batch_alter_table("routing_queue", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routing_queue_state"))
        batch_op.drop_index(batch_op.f("ix_routing_queue_rule_pk"))

    op.drop_table("routing_queue")
    op.drop_table("routing_rules")
    with op.batch_alter_table("retrieve_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrieve_jobs_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_retrieve_jobs_state"))

    op.drop_table("retrieve_jobs")
    with op.batch_alter_table("link_candidates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_link_candidates_regional_pk"))
        batch_op.drop_index(batch_op.f("ix_link_candidates_patient_pk"))

    op.drop_table("link_candidates")
    with op.batch_alter_table("establishment_issuers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_establishment_issuers_establishment_pk"))

    op.drop_table("establishment_issuers")
    with op.batch_alter_table("regional_patients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_regional_patients_ins"))

    op.drop_table("regional_patients")
    with op.batch_alter_table("identity_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_events_at"))

    op.drop_table("identity_events")
    op.drop_table("establishments")
