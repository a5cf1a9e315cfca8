"""1.0.0 baseline: teams, matches, predictions.

Revision ID: v1_0_0
Revises:
Create Date: 2024-01-15 09:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "v1_0_0"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.Integer, primary_key=True),  # serial
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("country", sa.Text),
        sa.Column("founded", sa.Integer),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("name", name="uq_teams_name"),
    )
    op.create_table(
        "matches",
        sa.Column("id", sa.BigInteger, primary_key=True),  # bigserial
        sa.Column("home_team_id", sa.Integer, sa.ForeignKey("teams.id", name="fk_matches_home_team_id"),
                  nullable=False),
        sa.Column("away_team_id", sa.Integer, sa.ForeignKey("teams.id", name="fk_matches_away_team_id"),
                  nullable=False),
        sa.Column("kickoff_at", TIMESTAMPTZ, nullable=False),
        sa.Column("home_score", sa.Integer),
        sa.Column("away_score", sa.Integer),
        sa.Column("status", sa.Text, nullable=False, server_default="scheduled"),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('scheduled', 'live', 'finished', 'postponed')",
                           name="ck_matches_status"),
    )
    op.create_index("idx_matches_kickoff_at", "matches", ["kickoff_at"])
    op.create_table(
        "predictions",
        sa.Column("id", sa.BigInteger, primary_key=True),  # bigserial
        sa.Column("match_id", sa.BigInteger, sa.ForeignKey("matches.id", name="fk_predictions_match_id"),
                  nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("home_win_prob", sa.Float, nullable=False),
        sa.Column("draw_prob", sa.Float, nullable=False),
        sa.Column("away_win_prob", sa.Float, nullable=False),
        sa.Column("predicted_result", sa.Text, nullable=False),
        sa.Column("actual_result", sa.Text),
        sa.Column("confidence", sa.Float),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TIMESTAMPTZ),
        sa.CheckConstraint("predicted_result IN ('H', 'D', 'A')", name="ck_predictions_predicted_result"),
        sa.CheckConstraint("actual_result IN ('H', 'D', 'A')", name="ck_predictions_actual_result"),
    )
    op.create_index("idx_predictions_match_id", "predictions", ["match_id"])
    op.create_index("idx_predictions_created_at", "predictions", ["created_at"])


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("matches")
    op.drop_table("teams")
