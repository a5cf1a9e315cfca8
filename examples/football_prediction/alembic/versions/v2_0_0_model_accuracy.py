"""2.0.0: model accuracy and feature importance on predictions.

Both columns are NULL-able, so adding them is a catalogue-only change; the data
migration (backfill) fills them afterwards.

Revision ID: v2_0_0
Revises: v1_0_0
Create Date: 2024-06-01 09:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "v2_0_0"
down_revision: str | Sequence[str] | None = "v1_0_0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("model_accuracy", sa.Float, nullable=True))
    op.add_column("predictions", sa.Column("feature_importance", postgresql.JSONB, nullable=True))
    op.create_index("idx_predictions_model_accuracy", "predictions", ["model_accuracy"])


def downgrade() -> None:
    op.drop_index("idx_predictions_model_accuracy", table_name="predictions")
    op.drop_column("predictions", "feature_importance")
    op.drop_column("predictions", "model_accuracy")
