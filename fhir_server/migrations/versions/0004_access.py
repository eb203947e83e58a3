"""access grants: which organisation may see which patient, and why

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "access_grant",
        sa.Column("id", _Seq, autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("grantee", sa.String(200), nullable=False),
        sa.Column("res_class", sa.String(64), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=True),
        sa.Column("basis", sa.String(32), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # Searches ask "which patients may this grantee see" (covering the validity columns);
    # writes replace one patient's rows.
    op.create_index(
        "ix_access_grant_grantee",
        "access_grant",
        ["grantee", "res_class", "patient_id", "valid_from", "valid_until"],
    )
    op.create_index("ix_access_grant_patient", "access_grant", ["patient_id"])


def downgrade() -> None:
    op.drop_table("access_grant")
