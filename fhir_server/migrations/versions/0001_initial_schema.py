"""initial schema: versioned resources and the search index tables

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Index text is compared bytewise (UTF-8 order = code point order on both databases), so prefix
# searches run as index range scans.
_Text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
_Id = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def _index_tables() -> dict[str, tuple[list[sa.Column[object]], list[str]]]:
    # Built anew per call: a Column belongs to one Table (tests migrate many schemas).
    return {
        "ix_token": (
            [sa.Column("system", _Text), sa.Column("code", _Text), sa.Column("text", _Text)],
            ["code", "system"],
        ),
        "ix_string": (
            [sa.Column("value", _Text, nullable=False), sa.Column("exact", _Text, nullable=False)],
            ["value"],
        ),
        "ix_reference": (
            [
                sa.Column("target_type", sa.String(64)),
                sa.Column("target_id", _Id),
                sa.Column("version", sa.String(64)),
                sa.Column("url", _Text, nullable=False),
            ],
            ["target_id", "target_type"],
        ),
        "ix_date": (
            [
                sa.Column("low", sa.BigInteger, nullable=False),
                sa.Column("high", sa.BigInteger, nullable=False),
            ],
            ["low", "high"],
        ),
        "ix_number": (
            [
                sa.Column("value", sa.Float, nullable=False),
                sa.Column("low", sa.Float, nullable=False),
                sa.Column("high", sa.Float, nullable=False),
            ],
            ["value"],
        ),
        "ix_quantity": (
            [
                sa.Column("value", sa.Float, nullable=False),
                sa.Column("low", sa.Float, nullable=False),
                sa.Column("high", sa.Float, nullable=False),
                sa.Column("system", _Text),
                sa.Column("code", _Text),
                sa.Column("unit", _Text),
            ],
            ["code", "value"],
        ),
        "ix_uri": ([sa.Column("value", _Text, nullable=False)], ["value"]),
        "ix_position": (
            [
                sa.Column("latitude", sa.Float, nullable=False),
                sa.Column("longitude", sa.Float, nullable=False),
            ],
            ["latitude", "longitude"],
        ),
        # Narrative and whole-content text for _text/_content: no value index (searched by substring).
        "ix_text": ([sa.Column("value", _Text, nullable=False)], []),
    }


_STATISTICS = {
    "ix_token": "res_type, param, code",  # nosec B105 # an index's columns, not a password
    "ix_reference": "res_type, param, target_type",
    "ix_string": "res_type, param",
    "ix_date": "res_type, param",
    "ix_quantity": "res_type, param, code",
    "ix_uri": "res_type, param",
}


def upgrade() -> None:
    op.create_table(
        "resource",
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", _Id, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("res_type", "res_id"),
    )
    op.create_table(
        "resource_version",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", _Id, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.BigInteger(), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("res_type", "res_id", "version", name="uq_resource_version"),
    )
    op.create_index("ix_resource_version_type_seq", "resource_version", ["res_type", "seq"])
    for name, (columns, lookup) in _index_tables().items():
        op.create_table(
            name,
            sa.Column("res_type", sa.String(64), nullable=False),
            sa.Column("res_id", _Id, nullable=False),
            sa.Column("param", sa.String(100), nullable=False),
            *columns,
            sa.Column("grp", sa.Integer(), nullable=False, server_default="0"),
        )
        op.create_index(f"{name}_resource", name, ["res_type", "res_id", "param"])
        if lookup:
            op.create_index(f"{name}_lookup", name, ["res_type", "param", *lookup])
    if op.get_bind().dialect.name == "postgresql":
        # Search plans depend on fresh statistics; by default a table is re-analysed only after
        # 10 % of it changed, so a fast-growing record (bulk imports) is planned on stale counts.
        for name in ("resource", *_index_tables()):
            op.execute(
                f"ALTER TABLE {name} SET (autovacuum_analyze_scale_factor = 0.01, "
                "autovacuum_analyze_threshold = 500)"
            )
        # The planner assumes columns independent: "Observation" x "code" x "55284-4" would be
        # estimated ~20x too rare and the search started from the wrong side. Joint statistics
        # (most common combinations, functional dependencies) fix the estimates.
        for name, columns in _STATISTICS.items():
            op.execute(
                f"CREATE STATISTICS {name}_joint (mcv, dependencies) ON {columns} FROM {name}"
            )


def downgrade() -> None:
    for name in reversed(_index_tables()):
        op.drop_table(name)
    op.drop_index("ix_resource_version_type_seq", "resource_version")
    op.drop_table("resource_version")
    op.drop_table("resource")
