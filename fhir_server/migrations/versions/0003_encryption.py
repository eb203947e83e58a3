"""encryption at rest: data keys (envelope encryption) and protected index values

Revision ID: 0003
Revises: 0002

``data_key``: one wrapped data key per (purpose, master key version) — compliance.envelope's
DataKeyStore. ``protection_state``: ``plaintext_below`` is the highest ``resource_version.seq``
that may still hold a payload in plain text: the rows written before this database was first
opened with keys (``RecordCore.rewrap`` encrypts them and sets it to 0). On a new database it is 0.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_key",
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("purpose", "version"),
    )
    op.create_table(
        "protection_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # Rows that exist now were written in plain text (before this revision).
    op.execute(
        "INSERT INTO protection_state (name, value) "
        "SELECT 'plaintext_below', COALESCE(MAX(seq), 0) FROM resource_version"
    )


def downgrade() -> None:
    op.drop_table("protection_state")
    op.drop_table("data_key")
