"""api keys, job owners and priorities; indexes for retention and model deletion

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("max_queued", sa.Integer(), nullable=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    # Jobs made before keys existed have no owner: they are the admin's.
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("owner", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("priority", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.create_foreign_key(
            op.f("fk_jobs_owner_api_keys"), "api_keys", ["owner"], ["id"]
        )
        batch_op.create_index("ix_jobs_state_owner", ["state", "owner"], unique=False)
        batch_op.create_index("ix_jobs_finished_at", ["finished_at"], unique=False)
    with op.batch_alter_table("artifacts") as batch_op:
        batch_op.create_index(op.f("ix_artifacts_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch_op:
        batch_op.drop_index(op.f("ix_artifacts_sha256"))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_finished_at")
        batch_op.drop_index("ix_jobs_state_owner")
        batch_op.drop_constraint(op.f("fk_jobs_owner_api_keys"), type_="foreignkey")
        batch_op.drop_column("priority")
        batch_op.drop_column("owner")
    op.drop_table("api_keys")
