"""subscriptions: outbox, notifications and delivery state (https://hl7.org/fhir/R4/subscription.html)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # One row per written version, inserted in the writing transaction; the dispatcher deletes
    # the rows it has matched against the subscriptions.
    op.create_table(
        "subscription_outbox",
        sa.Column("seq", _Seq, autoincrement=True, nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    # Notifications owed to a subscription, deleted once delivered (rest-hook) or after a while
    # (websocket). Ids are a cursor for the websocket pollers: SQLite must never reuse one.
    op.create_table(
        "subscription_notification",
        sa.Column("id", _Seq, autoincrement=True, nullable=False),
        sa.Column("sub_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_subscription_notification_sub",
        "subscription_notification",
        ["sub_id", "channel", "id"],
    )
    op.create_table(
        "subscription_delivery",
        sa.Column("sub_id", sa.String(64), nullable=False),
        sa.Column("sub_version", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("sub_id"),
    )


def downgrade() -> None:
    op.drop_table("subscription_delivery")
    op.drop_index("ix_subscription_notification_sub", "subscription_notification")
    op.drop_table("subscription_notification")
    op.drop_table("subscription_outbox")
