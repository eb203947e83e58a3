"""retention: legal holds and expunge bookkeeping (§630f BGB)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Id = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    # Who placed a hold on which patient's record, why and when; released holds are kept (with
    # who, when and why) until the record itself is expunged.
    op.create_table(
        "legal_hold",
        sa.Column("id", _Seq, autoincrement=True, nullable=False),
        sa.Column("patient_id", _Id, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("placed_by", sa.String(200), nullable=False),
        sa.Column("placed_at", sa.BigInteger(), nullable=False),
        sa.Column("released_by", sa.String(200), nullable=True),
        sa.Column("released_at", sa.BigInteger(), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_legal_hold_patient", "legal_hold", ["patient_id", "released_at"])
    # One row per run of the retention job: counts only, no patient ids.
    op.create_table(
        "retention_run",
        sa.Column("id", _Seq, autoincrement=True, nullable=False),
        sa.Column("started", sa.BigInteger(), nullable=False),
        sa.Column("finished", sa.BigInteger(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("patients", sa.Integer(), nullable=False),
        sa.Column("due", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("expunged", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("run_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("retention_run")
    op.drop_index("ix_legal_hold_patient", "legal_hold")
    op.drop_table("legal_hold")
