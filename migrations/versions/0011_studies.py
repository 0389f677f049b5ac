"""studies and their trials; the pruned state's columns; validation and early stopping

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_index("ix_studies_state_id", "studies", ["state", "id"], unique=False)
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("study_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("trial", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("stopped_early_at_epoch", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_jobs_study_id_studies"), "studies", ["study_id"], ["id"]
        )
        batch_op.create_index(op.f("ix_jobs_study_id"), ["study_id"], unique=False)
    op.create_table(
        "study_trials",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("system_attrs", sa.JSON(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_study_trials_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_study_trials_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("study_id", "number", name=op.f("pk_study_trials")),
        sa.UniqueConstraint("job_id", name=op.f("uq_study_trials_job_id")),
    )
    with op.batch_alter_table("epochs") as batch_op:
        batch_op.add_column(sa.Column("val_loss", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("val_accuracy", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epochs") as batch_op:
        batch_op.drop_column("val_accuracy")
        batch_op.drop_column("val_loss")
    op.drop_table("study_trials")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index(op.f("ix_jobs_study_id"))
        batch_op.drop_constraint(op.f("fk_jobs_study_id_studies"), type_="foreignkey")
        batch_op.drop_column("stopped_early_at_epoch")
        batch_op.drop_column("trial")
        batch_op.drop_column("study_id")
    op.drop_index("ix_studies_state_id", table_name="studies")
    op.drop_table("studies")
