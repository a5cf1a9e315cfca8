#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: pg_batch_update
short_description: Backfill a table in small, resumable, throttled batches
description:
  - Walks the table's key (the primary key, or any unique, not-null key, composite keys included) in key ranges.
    Each batch is one transaction that updates the rows of one range (an index range scan) and moves the
    checkpoint in O(ops_schema).batch_checkpoints in the same transaction.
  - After C(kill -9) of the module, of C(ansible-playbook), or a PostgreSQL restart, the next run resumes after the
    last committed batch; nothing is skipped and nothing is done twice. A second copy of the same backfill is
    refused while the first one runs.
  - Transforms are SQL expressions per column (O(set), computed by the server from the current row) or a Python
    function (O(python)). The Python function receives the batch's rows read without row locks and returns the
    new values; they are COPYed into a temporary table and written with one UPDATE bounded by the batch's range and
    guarded by the values read (every column read or written, NULL-safe). A row changed by another session between
    the read and the write is skipped by that UPDATE, read again and transformed again (at most O(max_retries)
    rounds, then the batch fails and names the key), so a concurrent change is never overwritten with a value computed
    from a stale row, and no row is dropped. Row locks are held only from that UPDATE to the commit.
  - The batch size adapts toward O(target_batch_ms) within [O(min_batch_size), O(max_batch_size)]. A lock timeout
    halves the batch and retries. Optional health holds wait while a standby lags, a vacuum runs on the table, or
    WAL waits to be archived, and say why.
  - Before the first batch it checks that each hold it was given can see with the connecting role's privileges
    (C(pg_read_all_stats) for the replication lag and for other roles' vacuums, C(pg_monitor) for the WAL archive).
    A hold that cannot see is a warning (in the result and the progress log), or, when O(required_holds) lists
    it, a failure with nothing changed that names the privilege to grant.
  - Progress (rows done, estimated total, rate, ETA) goes to a JSON-lines file (O(progress_file), for C(tail -f))
    and to a Prometheus textfile (O(metrics_file)), and is summarised in the result.
  - The SQL of the plan (O(set), O(where)) is operator-owned configuration, composed as SQL by design; it is
    planned with EXPLAIN before the first batch, so a syntax error or an unknown column fails with nothing changed.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: >-
      Plans the statements, counts the rows that would change (a planner estimate above O(check_count_limit)
      rows) and returns the SQL; updates nothing. Before the schema phase a missing table or column is a warning,
      unless O(schema_ready=true).
  diff_mode:
    support: none
options:
  name:
    description: Name of the backfill; its checkpoint is kept under this name.
    type: str
    required: true
  table:
    description: Table to update, C(table) or C(schema.table), taken literally (never parsed as SQL).
    type: str
    required: true
  key:
    description: Key columns to batch on, in the order of their unique index. Defaults to the primary key.
    type: list
    elements: str
  set:
    description:
      - Column to SQL expression over the current row. Give this or O(python).
      - Each expression is parsed with PostgreSQL's grammar (pglast) before the module connects and must be exactly
        one expression; C(;), a second statement, a data-modifying statement, C(SELECT INTO) or C(FOR UPDATE) is
        refused with the option and the fragment named, and nothing is run.
    type: dict
  python:
    description:
      - Python transform C(module.path:function). It receives a list of dicts (one per row, the key and
        O(read_columns)) and returns an iterable of dicts with the key columns and O(columns); rows it leaves
        out stay unchanged. Values are written in the column's text form (C(None) is NULL, dict and list are JSON).
    type: str
  python_path:
    description: Directories to add to the import path for O(python).
    type: list
    elements: path
    default: []
  columns:
    description: Columns the Python transform writes (required with O(python)).
    type: list
    elements: str
  read_columns:
    description: Columns the Python transform reads (default all). The write is guarded by these and O(columns);
      a change to any of them between the read and the write makes the row be read and transformed again.
    type: list
    elements: str
  where:
    description:
      - SQL filter of the rows to update, for example only rows not migrated yet; a second run then updates
        nothing (C(changed=false)).
      - Parsed like O(set) before the module connects; it must be exactly one expression.
    type: str
  incremental:
    description: Only rows whose O(incremental.column) is in the last O(incremental.hours) hours, or newer than the
      start of the last completed pass of this backfill (O(incremental.since_last_run)).
    type: dict
    suboptions:
      column:
        description: Timestamp column of the window.
        type: str
        default: created_at
      hours:
        description: Size of the window in hours.
        type: float
      since_last_run:
        description:
          - Only rows since the safe watermark of the last completed pass (all rows when there was none).
          - The watermark is the start of that pass, moved back to the start of the oldest transaction that was
            still open in the database when the pass began (a row it inserted may carry an older timestamp and
            commit later), and back by O(incremental.overlap_s) more.
        type: bool
        default: false
      overlap_s:
        description:
          - Seconds the watermark of O(incremental.since_last_run) moves back beyond the oldest open transaction,
            for timestamps the application sets before its transaction starts. Rows in the overlap are visited
            again, so the transform must be idempotent (a O(where) that skips migrated rows makes them no-ops).
        type: float
        default: 0
  batch_size:
    description: Rows in the first batch.
    type: int
    default: 10000
  min_batch_size:
    description: Smallest batch the adaptive size and lock-timeout retries go down to.
    type: int
    default: 100
  max_batch_size:
    description: Largest batch the adaptive size grows to.
    type: int
    default: 100000
  target_batch_ms:
    description: Duration of a batch transaction the adaptive size aims at (row locks are held that long); with
      O(python), the time from the batch's write to its commit (the only time its rows are locked).
    type: int
    default: 100
  pause_ms:
    description: Pause between batches of a worker (the duty cycle left to the application).
    type: int
    default: 0
  lock_timeout:
    description: C(lock_timeout) of each batch; on timeout the batch is halved and retried.
    type: str
    default: 2s
  statement_timeout:
    description: C(statement_timeout) of each batch statement.
    type: str
    default: 1min
  max_retries:
    description: Retries in a row (lock timeout, deadlock) before the backfill stops; with O(python) also the
      rounds a batch re-reads rows that changed between its read and its write before it fails.
    type: int
    default: 10
  workers:
    description: Connections working on disjoint key ranges, each with its own checkpoint. With a foreground
      budget (O(max_foreground_p99_ms)) the batches that run at once start at this number.
    type: int
    default: 1
  max_workers:
    description:
      - The most batches the foreground budget may let run at once; the key space is split into this many
        ranges (each with its own connection and checkpoint). Default O(workers).
    type: int
  max_foreground_p99_ms:
    description:
      - The application's latency budget while the backfill runs, in milliseconds. A probe, a small Python process
        of its own with its own connection (so the module's threads never delay it), times a cheap indexed read
        of the target every 20 ms (a key a batch has just written); about every two seconds the
        p99 of the latest probes steers the pace. Over 80% of the budget (a margin, as the probes sample the
        foreground thinly), one worker fewer, then shorter batches (down
        to 20 ms), then longer pauses (up to O(max_pause_ms)); under half of it, the same steps back, up to
        O(target_batch_ms) and O(max_workers). The current workers, batch time, pause and measured p99 are in
        every progress line and in the metrics; RV(pace) sums up the run.
      - V(0) turns the budget off (the plan's settings hold for the whole run).
    type: float
    default: 100
  max_pause_ms:
    description: The longest pause between a worker's batches the foreground budget may set.
    type: int
    default: 1000
  nice:
    description:
      - With O(python), the niceness (0-19) of the worker threads that run the transform, so that its CPU work
        yields to the application on a busy host (the threads are reniced; the server's work is not). V(0) keeps
        the normal priority.
    type: int
    default: 10
  max_replication_lag_s:
    description: Hold while a standby in C(pg_stat_replication) lags more than this many seconds.
    type: float
  hold_on_autovacuum:
    description: Hold while a vacuum runs on the table (C(pg_stat_progress_vacuum)).
    type: bool
    default: false
  max_archive_backlog:
    description: Hold while more WAL segments than this wait to be archived (needs superuser or C(pg_monitor)).
    type: int
  required_holds:
    description:
      - Holds that must be able to see. The backfill fails before its first batch, changing nothing, when one of
        them cannot with the connecting role's privileges (V(replication_lag) and V(vacuum) need the privileges of
        C(pg_read_all_stats), V(archive_backlog) needs C(pg_monitor) or superuser); a hold not listed here only
        warns. Each listed hold must be turned on by its option (O(max_replication_lag_s), O(hold_on_autovacuum),
        O(max_archive_backlog)).
    type: list
    elements: str
    choices: [replication_lag, vacuum, archive_backlog]
    default: []
  hold_poll_s:
    description: Seconds between health checks during a hold.
    type: float
    default: 5
  max_hold_s:
    description: Fail when one hold lasts longer than this.
    type: float
    default: 1800
  progress_file:
    description: JSON-lines progress log (appended; C(tail -f) it).
    type: path
  metrics_file:
    description: Prometheus textfile (node_exporter textfile collector), replaced atomically.
    type: path
  progress_interval_s:
    description: Seconds between progress lines and metric updates.
    type: float
    default: 1
  run_id:
    description:
      - Ledger run the backfill belongs to, recorded in the checkpoint and with every execution in
        O(ops_schema).batch_passes (rows, batches, status), so a report counts the rows of runs that were killed.
      - Its database sessions are named C(pgmigrate-ops run <run_id> backfill <name>) (C(application_name)); the
        migration lock of that run is not stale while any of them is connected.
    type: int
  controller_pid:
    description:
      - PID of the C(ansible-playbook) (or C(ansible-runner)) that controls this backfill. While the backfill runs
        it checks every second that this process still lives (with O(controller_pid_start), so a recycled PID is
        not taken for it), and when it is gone (C(kill -9), Ctrl-C, a lost session) the workers stop at their
        next batch boundary, the checkpoint kept, so that the next run resumes.
      - Unset, the module looks for its outermost ansible driver process itself (not found when it runs under
        C(async), which detaches it; the data_migrate role passes the lock owner's PID). V(0) turns the watch off.
    type: int
  controller_pid_start:
    description: Start time of O(controller_pid) (field 22 of C(/proc/PID/stat)), as the migration lock records it.
    type: str
  controller_host:
    description: Host name of O(controller_pid); on another host the process cannot be watched and is not.
    type: str
  progress_token:
    description: A word written into every progress line, so a follower can tell this run's lines from older ones.
    type: str
  restart:
    description: Discard an unfinished pass and start a new one from the beginning.
    type: bool
    default: false
  check_count_limit:
    description: In check mode, tables with more rows (estimate) are counted with a planner estimate.
    type: int
    default: 5000000
  schema_ready:
    description:
      - The database already has the plan's schema (for example the backup phase's rehearsal copy after its schema
        migration). In check mode a missing table or column then fails, naming the backfill and the field, instead
        of being a warning that the schema phase may create it.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Backfill accuracy and importance of every prediction
  pg_batch_update:
    login_db: football_prediction
    name: predictions_accuracy
    table: predictions
    set:
      model_accuracy: "CASE WHEN actual_result IS NULL THEN NULL ELSE 1 - (...) / 2 END"
      feature_importance: "jsonb_build_object('draw_tendency', round(draw_prob::numeric, 4))"
    where: feature_importance IS NULL
    target_batch_ms: 100
    progress_file: /var/log/pgmigrate/backfill-predictions_accuracy.jsonl
    metrics_file: /var/lib/node_exporter/textfile/pgmigrate_backfill.prom

- name: Backfill with a Python function, two workers, holding while a standby lags
  pg_batch_update:
    login_db: football_prediction
    name: predictions_accuracy_py
    table: predictions
    python: transforms:prediction_accuracy
    python_path: [/opt/pgmigrate-ops/examples/football_prediction]
    columns: [model_accuracy, feature_importance]
    where: feature_importance IS NULL
    workers: 2
    max_replication_lag_s: 30
    required_holds: [replication_lag]  # fail at once, changing nothing, if the login cannot see the lag

- name: Backfill only the predictions of the last 24 hours
  pg_batch_update:
    login_db: football_prediction
    name: predictions_recent
    table: predictions
    set: {feature_importance: "jsonb_build_object('model_version', model_version)"}
    incremental: {column: created_at, hours: 24}
'''

RETURN = r'''
rows_updated:
  description: Rows this run updated (every execution is also recorded in O(ops_schema).batch_passes).
  returned: success
  type: int
  sample: 1000000
rows_done:
  description: Rows (keys) this run walked through, updated or not.
  returned: success
  type: int
rows_total:
  description: Rows of the pass (exact once it is complete).
  returned: success
  type: int
batches:
  description: Batches this run committed.
  returned: success
  type: int
duration_s:
  description: Seconds this run took.
  returned: success
  type: float
rows_per_s:
  description: Rows walked per second.
  returned: success
  type: float
retries:
  description: Batches retried after a lock timeout or deadlock.
  returned: success
  type: int
holds:
  description: Health holds (count, seconds, and count per reason).
  returned: success
  type: dict
  sample: {count: 1, seconds: 12.0, reasons: {replication_lag: 1}}
blind_holds:
  description: Holds that could not see with the connecting role's privileges, each with why and what to grant
    (also returned when a required one made the backfill fail).
  returned: always, when a hold was given
  type: dict
  sample: {replication_lag: "replication lag is not checked (max_replication_lag_s): role football lacks ..."}
max_batch_ms:
  description: Longest batch transaction in milliseconds.
  returned: success
  type: float
max_lock_ms:
  description: Longest time a batch held row locks (from its UPDATE to its commit), in milliseconds.
  returned: success
  type: float
pace:
  description:
    - What the foreground budget (O(max_foreground_p99_ms)) measured and chose. V(foreground_p99_ms) and
      V(foreground_p50_ms) over every probe of the run; V(workers), V(target_batch_ms) and V(pause_ms) at the
      end; the values each of them took (V(workers_used), V(batch_ms_used), V(pause_ms_used)); the number of
      V(decisions) and the V(last_decisions); V(over_budget_at_slowest) counts the decisions that found the
      budget exceeded with nothing left to slow down.
  returned: when batches ran
  type: dict
  sample: {budget_ms: 10.0, enabled: true, probes: 1450, foreground_p99_ms: 6.1, foreground_p50_ms: 0.4,
           workers: 1, max_workers: 2, target_batch_ms: 50.0, pause_ms: 0.0, workers_used: [1, 2],
           batch_ms_used: [50.0, 100.0], pause_ms_used: [0.0], decisions: 3, over_budget_at_slowest: 0}
rows_retried:
  description: Rows of committed batches that a Python transform read and transformed again because another
    session changed them between the batch's read and its write (0 for O(set)).
  returned: success
  type: int
conflicts:
  description: Guarded writes of a Python transform that skipped changed rows (each followed by a re-read of
    those rows; 0 for O(set)).
  returned: success
  type: int
batch_size:
  description: Batch size at the end (adaptive).
  returned: success
  type: int
resumed:
  description: Whether this run resumed an unfinished pass.
  returned: success
  type: bool
checkpoint:
  description: The checkpoint after the run (status, rows done and updated, batches, per-worker ranges and last keys).
  returned: always
  type: dict
would_update:
  description: Rows that would be updated.
  returned: check mode
  type: int
sql:
  description: The batch statement (with placeholders for the range bounds).
  returned: when the table and columns exist
  type: str
field:
  description: The plan field whose SQL does not plan (V(set.<column>) or V(where)), when it can be told apart.
  returned: when the backfill's SQL does not plan
  type: str
  sample: set.model_accuracy
progress_file:
  description: The JSON-lines progress log.
  returned: success
  type: str
'''

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible.module_utils.pgmigrate import (
    HAS_PSYCOPG2,
    PSYCOPG2_IMP_ERR,
    RUN_APP_PREFIX,
    connect,
    connection_argument_spec,
    connection_kwargs,
)
from ansible.module_utils.pgmigrate_batch import (
    Backfill,
    BackfillError,
    Spec,
    read_checkpoints,
    spec_defaults,
    summarise_checkpoints,
)
from ansible.module_utils.pgmigrate_owner import find_owner_pid, hostname, process_start
from ansible.module_utils.pgmigrate_sql import HAS_PGLAST, PGLAST_IMP_ERR, backfill_fragments, check_errors

SPEC_OPTIONS = ("name", "table", "key", "set", "python", "python_path", "columns", "read_columns", "where",
                "incremental", "batch_size", "min_batch_size", "max_batch_size", "target_batch_ms", "pause_ms",
                "lock_timeout", "statement_timeout", "max_retries", "workers", "max_workers", "max_foreground_p99_ms",
                "max_pause_ms", "nice", "max_replication_lag_s",
                "hold_on_autovacuum", "max_archive_backlog", "required_holds", "hold_poll_s", "max_hold_s",
                "progress_file", "metrics_file", "progress_interval_s", "run_id", "controller_pid",
                "controller_pid_start", "controller_host", "progress_token", "restart", "ops_schema",
                "check_count_limit")


def argument_spec() -> dict:
    defaults = spec_defaults()  # one definition of the backfill's defaults: pgmigrate_batch.Spec
    spec = connection_argument_spec()
    spec.update(
        name=dict(type="str", required=True),
        table=dict(type="str", required=True),
        key=dict(type="list", elements="str"),
        set=dict(type="dict"),
        python=dict(type="str"),
        python_path=dict(type="list", elements="path", default=defaults["python_path"]),
        columns=dict(type="list", elements="str"),
        read_columns=dict(type="list", elements="str"),
        where=dict(type="str"),
        incremental=dict(type="dict", options=dict(
            column=dict(type="str", default="created_at"),
            hours=dict(type="float"),
            since_last_run=dict(type="bool", default=False),
            overlap_s=dict(type="float", default=0.0))),
        batch_size=dict(type="int", default=defaults["batch_size"]),
        min_batch_size=dict(type="int", default=defaults["min_batch_size"]),
        max_batch_size=dict(type="int", default=defaults["max_batch_size"]),
        target_batch_ms=dict(type="int", default=defaults["target_batch_ms"]),
        pause_ms=dict(type="int", default=defaults["pause_ms"]),
        lock_timeout=dict(type="str", default=defaults["lock_timeout"]),
        statement_timeout=dict(type="str", default=defaults["statement_timeout"]),
        max_retries=dict(type="int", default=defaults["max_retries"]),
        workers=dict(type="int", default=defaults["workers"]),
        max_workers=dict(type="int"),
        max_foreground_p99_ms=dict(type="float", default=defaults["max_foreground_p99_ms"]),
        max_pause_ms=dict(type="int", default=defaults["max_pause_ms"]),
        nice=dict(type="int", default=defaults["nice"]),
        max_replication_lag_s=dict(type="float"),
        hold_on_autovacuum=dict(type="bool", default=defaults["hold_on_autovacuum"]),
        max_archive_backlog=dict(type="int"),
        required_holds=dict(type="list", elements="str", default=defaults["required_holds"],
                            choices=["replication_lag", "vacuum", "archive_backlog"]),
        hold_poll_s=dict(type="float", default=defaults["hold_poll_s"]),
        max_hold_s=dict(type="float", default=defaults["max_hold_s"]),
        progress_file=dict(type="path"),
        metrics_file=dict(type="path"),
        progress_interval_s=dict(type="float", default=defaults["progress_interval_s"]),
        run_id=dict(type="int"),
        controller_pid=dict(type="int"),
        controller_pid_start=dict(type="str"),
        controller_host=dict(type="str"),
        progress_token=dict(type="str", no_log=False),
        restart=dict(type="bool", default=defaults["restart"]),
        check_count_limit=dict(type="int", default=defaults["check_count_limit"]),
        schema_ready=dict(type="bool", default=False),
    )
    return spec


def validate_numbers(module, p: dict) -> None:
    for name in ("batch_size", "min_batch_size", "max_batch_size", "target_batch_ms", "workers"):
        if p[name] < 1:
            module.fail_json(msg=f"{name} must be at least 1, got {p[name]}")
    for name in ("pause_ms", "max_retries", "max_foreground_p99_ms", "max_pause_ms"):
        if p[name] < 0:
            module.fail_json(msg=f"{name} must not be negative, got {p[name]}")
    if not 0 <= p["nice"] <= 19:
        module.fail_json(msg=f"nice must be 0-19 (the transform threads' niceness), got {p['nice']}")
    if p["max_workers"] is not None and p["max_workers"] < p["workers"]:
        module.fail_json(msg=f"max_workers ({p['max_workers']}) must be at least workers ({p['workers']}): "
                             "the foreground budget starts at workers and raises up to max_workers")
    if p["set"] is not None:
        bad = [c for c, e in p["set"].items() if not isinstance(e, str) or not e.strip()]
        if bad:
            module.fail_json(msg=f"set: the expression of {', '.join(bad)} must be a non-empty SQL string")
    if p["where"] is not None and not p["where"].strip():
        module.fail_json(msg="where: give a SQL filter or leave it out")


def validate_sql(module, p: dict) -> None:
    """Each set expression and the where filter: exactly one expression, before any connection."""
    if not HAS_PGLAST:
        module.fail_json(msg=missing_required_lib("pglast"), exception=PGLAST_IMP_ERR)
    errors = check_errors(backfill_fragments({"set": p["set"], "where": p["where"]}, ""))
    if errors:
        module.fail_json(msg=f"backfill {p['name']}: " + "; ".join(errors), errors=errors)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=[("set", "python")], required_one_of=[("set", "python")],
                           required_by={"python": ("columns",)})
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMP_ERR)
    p = module.params
    validate_numbers(module, p)
    validate_sql(module, p)
    spec = Spec(**{k: p[k] for k in SPEC_OPTIONS})
    spec.set = {str(k): str(v) for k, v in p["set"].items()} if p["set"] else None
    spec.incremental = dict(p["incremental"]) if p["incremental"] else None
    if spec.controller_pid is None:
        spec.controller_pid = find_owner_pid()
        spec.controller_pid_start = process_start(spec.controller_pid) if spec.controller_pid else None
        spec.controller_host = hostname()
    # The run's sessions carry its id: the migration lock is not stale while one of them is connected.
    app = (f"{RUN_APP_PREFIX}{spec.run_id} backfill {spec.name}" if spec.run_id is not None
           else f"pgmigrate-ops:pg_batch_update:{spec.name}")[:63]
    # The pace's probe runs as a process of its own with the same connection (its keywords go to it on stdin).
    engine = Backfill(spec, lambda: connect(module, application_name=app),
                      probe_conn=dict(connection_kwargs(module.params), application_name=app))
    try:
        try:
            engine.prepare()
        except BackfillError as exc:
            if module.check_mode and exc.facts.get("missing") and not p["schema_ready"]:
                warn(module, engine)
                module.warn(f"{exc.msg} (check mode: the schema phase may create it; the backfill is not previewed)")
                module.exit_json(changed=True, would_update=None, checkpoint=None,
                                 msg=f"backfill {spec.name} cannot be previewed before the schema phase")
            raise
        result = engine.preview() if module.check_mode else engine.run()
    except BackfillError as exc:
        warn(module, engine)
        facts = dict(exc.facts)
        facts.pop("missing", None)
        if "checkpoint" not in facts:
            facts["checkpoint"] = current_checkpoint(engine, spec)
        facts.pop("msg", None)
        facts["changed"] = bool(facts.get("rows_updated"))
        module.fail_json(msg=exc.msg, **facts)
    except Exception as exc:  # never a traceback for the operator; keep it for -vvv
        module.fail_json(msg=f"pg_batch_update {spec.name} failed: {type(exc).__name__}: {exc}",
                         exception=traceback.format_exc(), checkpoint=current_checkpoint(engine, spec))
    finally:
        engine.close()
    warn(module, engine)
    module.exit_json(**result)


def warn(module, engine: Backfill) -> None:
    """What the backfill could not check (blind holds), on success and on failure alike."""
    for warning in engine.warnings:
        module.warn(warning)


def current_checkpoint(engine: Backfill, spec: Spec):
    try:
        engine.conn.rollback()
        with engine.conn.cursor() as cur:
            return summarise_checkpoints(read_checkpoints(cur, spec.ops_schema, spec.name))
    except Exception:
        return None


if __name__ == "__main__":
    main()
