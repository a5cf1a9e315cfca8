# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the backfill's health holds can see with the privileges of the connecting role.

A hold reads statistics views that hide other roles' details without the right role:

* ``replication_lag`` reads ``pg_stat_replication``: without the privileges of
  ``pg_read_all_stats`` every walsender shows only its pid, the lag columns are NULL, and the
  hold never holds;
* ``vacuum`` reads ``pg_stat_progress_vacuum``: without them the table of an autovacuum
  worker (or of another role's VACUUM) is NULL, so only the role's own vacuums are seen;
* ``archive_backlog`` calls ``pg_ls_archive_statusdir()``, which needs superuser or
  ``pg_monitor``.

``blind_holds`` says, for the holds a backfill asks for, which of them cannot see and what
to grant.  The backfill (pg_batch_update) and the plan phase (pg_preflight) both use it: a
blind hold is a warning, and a refusal before anything changes when the plan lists it in
``required_holds``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HOLD_KINDS = ("replication_lag", "vacuum", "archive_backlog")
HOLD_OPTION = {"replication_lag": "max_replication_lag_s", "vacuum": "hold_on_autovacuum",
               "archive_backlog": "max_archive_backlog"}


def configured_holds(options: Mapping[str, Any]) -> list[str]:
    """The holds a backfill's options turn on, in HOLD_KINDS order."""
    on = {"replication_lag": options.get("max_replication_lag_s") is not None,
          "vacuum": bool(options.get("hold_on_autovacuum")),
          "archive_backlog": options.get("max_archive_backlog") is not None}
    return [kind for kind in HOLD_KINDS if on[kind]]


def required_holds_problems(options: Mapping[str, Any], where: str) -> list[str]:
    """required_holds entries that name an unknown hold or a hold the backfill does not turn on."""
    problems = []
    on = configured_holds(options)
    for kind in options.get("required_holds") or []:
        if kind not in HOLD_KINDS:
            problems.append(f"{where}.required_holds: {kind!r} is not a hold (one of {', '.join(HOLD_KINDS)})")
        elif kind not in on:
            problems.append(f"{where}.required_holds: {kind} is required but {HOLD_OPTION[kind]} is not set: set "
                            f"{HOLD_OPTION[kind]} (the hold's threshold) or remove {kind} from required_holds")
    return problems


def read_privileges(cur) -> dict:
    """What the connecting role may see (one catalog query; reads nothing else)."""
    cur.execute("SELECT current_user::text, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), "
                "coalesce(has_function_privilege(to_regprocedure('pg_ls_archive_statusdir()')::oid, 'EXECUTE'), "
                "false)")
    role, stats, archive = cur.fetchone()
    return {"role": role, "pg_read_all_stats": bool(stats), "pg_ls_archive_statusdir": bool(archive)}


def blind_holds(kinds: list[str], privileges: dict) -> dict[str, str]:
    """For each hold in ``kinds`` that cannot see: why, and the GRANT that fixes it."""
    role = privileges["role"]
    stats_fix = f"GRANT pg_read_all_stats TO {role} (or GRANT pg_monitor TO {role})"
    out: dict[str, str] = {}
    if "replication_lag" in kinds and not privileges["pg_read_all_stats"]:
        out["replication_lag"] = (
            f"replication lag is not checked (max_replication_lag_s): role {role} lacks the privileges of "
            "pg_read_all_stats, so in pg_stat_replication it sees NULL write_lag, flush_lag and replay_lag for every "
            f"standby and this hold would never hold however far a standby falls behind. Fix: {stats_fix}")
    if "vacuum" in kinds and not privileges["pg_read_all_stats"]:
        out["vacuum"] = (
            f"vacuum on the table is checked only for role {role}'s own sessions (hold_on_autovacuum): without the "
            "privileges of pg_read_all_stats, pg_stat_progress_vacuum hides the table of autovacuum workers and "
            f"of other roles' VACUUM. Fix: {stats_fix}")
    if "archive_backlog" in kinds and not privileges["pg_ls_archive_statusdir"]:
        out["archive_backlog"] = (
            f"WAL archive backlog is not checked (max_archive_backlog): pg_ls_archive_statusdir() needs superuser "
            f"or pg_monitor, which role {role} does not have. Fix: GRANT pg_monitor TO {role}")
    return out


def refusal(name: str, required: list[str], blind: dict[str, str]) -> str | None:
    """The message that refuses backfill ``name`` when a hold it requires is blind (None when none is)."""
    missing = [kind for kind in required if kind in blind]
    if not missing:
        return None
    return (f"backfill {name} requires the hold(s) {', '.join(missing)} (required_holds), which cannot see with "
            f"these privileges: " + "; ".join(blind[k] for k in missing)
            + ". Grant the privilege and rerun, or remove the hold from required_holds to run with a warning; "
              "nothing was changed")


def hint_for_warning(kind: str) -> str:
    return f" (to refuse to run without it, add {kind} to the backfill's required_holds)"
