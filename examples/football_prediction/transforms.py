"""Python transforms for the 2.0.0 backfill (``pg_batch_update`` with ``python:``).

``prediction_accuracy`` computes exactly what the SQL expressions of migrations/2.0.0.yml
compute, so either way of backfilling gives the same rows:

* ``model_accuracy`` = 1 - Brier score / 2 over the three outcomes, NULL without a result
  (same float operations in the same order as the SQL, so the doubles are identical);
* ``feature_importance`` = a small JSON object; numbers are rounded like PostgreSQL's
  ``round(float8::numeric, 4)`` (the float8 goes to numeric through 15 significant digits,
  then rounds half away from zero) and written as JSON text, so the jsonb is identical.

The engine passes a list of dicts (one per row) and writes back the dicts returned.
"""
from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal

_FOUR = Decimal("0.0001")


def numeric4(value: float) -> str:
    """round(value::numeric, 4) as PostgreSQL prints it."""
    return str(Decimal(f"{value:.15g}").quantize(_FOUR, rounding=ROUND_HALF_UP))


def accuracy(home: float, draw: float, away: float, actual: str | None) -> float | None:
    if actual is None:
        return None
    h = home - (1 if actual == "H" else 0)
    d = draw - (1 if actual == "D" else 0)
    a = away - (1 if actual == "A" else 0)
    return 1 - (h * h + d * d + a * a) / 2


def importance(home: float, draw: float, away: float, model_version: str) -> str:
    return (f'{{"home_advantage": {numeric4(home - away)}, "draw_tendency": {numeric4(draw)}, '
            f'"uncertainty": {numeric4(1 - max(home, draw, away))}, "model_version": {json.dumps(model_version)}}}')


def prediction_accuracy(rows: list[dict]) -> list[dict]:
    out = []
    append = out.append
    for row in rows:
        home, draw, away = row["home_win_prob"], row["draw_prob"], row["away_win_prob"]
        append({"id": row["id"],
                "model_accuracy": accuracy(home, draw, away, row["actual_result"]),
                "feature_importance": importance(home, draw, away, row["model_version"])})
    return out
