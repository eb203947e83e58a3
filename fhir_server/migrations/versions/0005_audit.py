"""tamper-evident audit trail (IHE BALP AuditEvents in a chained-HMAC log)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Id = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    # Sealed AuditEvents waiting for the chainer: a write's own events are inserted in the
    # writing transaction, read events by a background writer in small batches.
    op.create_table(
        "audit_pending",
        sa.Column("id", _Seq, autoincrement=True, nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # The chain: h_seq = HMAC(k_key_version, h_{seq-1} || JCS(AuditEvent event_id as stored)).
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", _Id, nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    # Ed25519-signed chain heads (copies belong outside the database too).
    op.create_table(
        "audit_signed_head",
        sa.Column("id", _Seq, autoincrement=True, nullable=False),
        sa.Column("head_index", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.LargeBinary(), nullable=False),
        sa.Column("signed_at", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("audit_signed_head")
    op.drop_table("audit_log")
    op.drop_table("audit_pending")
