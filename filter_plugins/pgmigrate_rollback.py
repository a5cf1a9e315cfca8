# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the rollback role: what a rollback undoes, as an operator reads it."""
from __future__ import annotations


def rollback_lines(plan: dict, check_mode: bool = False) -> list[str]:
    """Lines of the rollback's plan (migration_rollback's result)."""
    run = plan.get("run") or {}
    verb = "Check mode: would undo" if check_mode else "Undoing"
    lines = [f"{verb} run #{run.get('id')} ({run.get('version')}, {run.get('status')}; revision "
             f"{run.get('from_revision') or '-'} -> {run.get('to_revision') or '-'}, live now "
             f"{plan.get('live_revision') or '-'}), in this order:"]
    for i, step in enumerate(plan.get("steps") or [], 1):
        lines.append(f"{i}. {step.get('what')}")
    if plan.get("strategy"):
        lines.append(f"Database: {plan['strategy']}, because {plan.get('strategy_reason')}.")
    for name, loss in (plan.get("losses") or {}).items():
        lines.append(f"Data discarded (accepted with rollback_discard_new_rows): {name}: {loss.get('rows')} row(s), "
                     f"{loss.get('why')}")
    for note in plan.get("notes") or []:
        lines.append(f"Left as it is: {note}")
    if check_mode:
        lines.append("Check mode: nothing was changed (no lock taken, nothing written).")
    return lines


class FilterModule:
    def filters(self) -> dict:
        return {"pgmigrate_rollback_lines": rollback_lines}
