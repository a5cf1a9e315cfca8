#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: migration_metrics
short_description: Write the run-level Prometheus metrics of a migration (and push them to a Pushgateway)
description:
  - Reads the run from the run ledger (read-only) and writes its run-level metrics in the Prometheus text format to
    O(metrics_file), atomically, for the node_exporter textfile collector (runbook 6).
  - "Metrics: C(pgmigrate_run_info), C(pgmigrate_run_status) (0 running, 1 succeeded, 2 failed, 3 rolled back,
    4 rollback failed), C(pgmigrate_run_failed), C(pgmigrate_run_errors_total), C(pgmigrate_run_current_phase),
    C(pgmigrate_phase_duration_seconds), C(pgmigrate_run_started_timestamp_seconds),
    C(pgmigrate_run_last_update_timestamp_seconds) and, given O(validation), C(pgmigrate_validation_checks); labels
    C(version), C(environment) and C(database) (O(database_label))."
  - With O(pushgateway_url), also pushes them to that Pushgateway, in the group C(job=<pushgateway_job>),
    C(database=<database_label>), so that the databases of a fleet never replace each other's metrics. A Pushgateway
    that does not answer is a warning, never a failure.
version_added: "1.0.0"
author: pgmigrate-ops contributors
extends_documentation_fragment:
  - pgmigrate
attributes:
  check_mode:
    support: full
    details: Renders the metrics and returns them; writes and pushes nothing.
  diff_mode:
    support: none
options:
  run_id:
    description: The run whose ledger record the metrics describe. Unset (check mode) describes O(version) only.
    type: int
  version:
    description: Version of the run, when the ledger cannot be read (no run, or a failure before the run opened).
    type: str
  status:
    description: Status of the run to publish.
    type: str
    choices: [running, succeeded, failed, rolled_back, rollback_failed]
    required: true
  phase:
    description: The phase the run is in (or failed in). Unset means the last phase in the ledger.
    type: str
  environment:
    description: Value of the C(environment) label (the inventory's environment).
    type: str
    default: default
  database_label:
    description:
      - Value of the C(database) label and of the Pushgateway group's C(database) key, unique per database of a fleet
        (the report role passes the inventory host, the name the fleet report uses).
      - Unset means C(<login_host>:<login_port>/<login_db>), which tells apart databases of one name on two clusters.
    type: str
  validation:
    description: The validation result (M(pg_validate)'s return); adds C(pgmigrate_validation_checks).
    type: dict
  metrics_file:
    description: File the metrics are written to (in the node_exporter textfile collector's directory).
    type: path
    required: true
  pushgateway_url:
    description: Base URL of a Prometheus Pushgateway. Unset or empty means no push.
    type: str
  pushgateway_job:
    description: Job name of the pushed group (its other key is C(database), O(database_label)).
    type: str
    default: pgmigrate
  timeout:
    description: Seconds to wait for the ledger and the Pushgateway.
    type: float
    default: 5
'''

EXAMPLES = r'''
- name: Publish that the run succeeded
  migration_metrics:
    run_id: "{{ pgmigrate_run_id }}"
    status: succeeded
    phase: report
    environment: "{{ pgmigrate_environment }}"
    database_label: "{{ inventory_hostname }}"
    metrics_file: "{{ pgmigrate_log_dir }}/metrics/pgmigrate_run.prom"
    pushgateway_url: "{{ report_pushgateway_url }}"
'''

RETURN = r'''
metrics_file:
  description: Path of the metrics file written.
  returned: always
  type: str
text:
  description: The metrics in the Prometheus text format.
  returned: always
  type: str
pushed:
  description: Whether the Pushgateway accepted the metrics (null when none is configured or in check mode).
  returned: always
  type: bool
run:
  description: The run's status, phase and phase durations as published.
  returned: always
  type: dict
database:
  description: Value of the C(database) label (and Pushgateway group key) published.
  returned: always
  type: str
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate_report import push_to_gateway, run_metrics

from ansible.module_utils.pgmigrate import (
    HAS_PSYCOPG2,
    connection_argument_spec,
    connection_kwargs,
    ops_schema_exists,
    psycopg2,
    read_run,
)
from ansible.module_utils.pgmigrate_metrics import render, write_textfile


def ledger_run(module, run_id: int | None) -> tuple[dict, str | None]:
    """The run's ledger row, or {} and the reason it could not be read (never fails the module:
    the failure path calls this module when the database itself may be the problem)."""
    if not run_id:
        return {}, None
    if not HAS_PSYCOPG2:
        return {}, "psycopg2 is missing"
    kw = connection_kwargs(module.params)
    kw["connect_timeout"] = max(1, int(module.params["timeout"]))
    try:
        conn = psycopg2.connect(**kw, application_name="pgmigrate-ops:migration_metrics")
    except psycopg2.Error as exc:
        return {}, f"could not read the run ledger: {str(exc).strip()}"
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            schema = module.params["ops_schema"]
            if not ops_schema_exists(cur, schema):
                return {}, f"no run ledger in schema {schema}"
            run = read_run(cur, schema, run_id)
    except psycopg2.Error as exc:
        return {}, f"could not read the run ledger: {str(exc).strip()}"
    finally:
        conn.rollback()
        conn.close()
    if run is None:
        return {}, f"run #{run_id} is not in the ledger"
    return run, None


def database_id(params: dict) -> str:
    """<host>:<port>/<database> of the connection (libpq's environment where an option is unset)."""
    host = params.get("login_host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("login_port") or os.environ.get("PGPORT") or 5432
    name = params.get("login_db") or os.environ.get("PGDATABASE") or "postgres"
    return f"{host}:{port}/{name}"


def main() -> None:
    argument_spec = connection_argument_spec()
    argument_spec.update(
        run_id=dict(type="int"),
        version=dict(type="str"),
        status=dict(type="str", required=True,
                    choices=["running", "succeeded", "failed", "rolled_back", "rollback_failed"]),
        phase=dict(type="str"),
        environment=dict(type="str", default="default"),
        database_label=dict(type="str"),
        validation=dict(type="dict"),
        metrics_file=dict(type="path", required=True),
        pushgateway_url=dict(type="str"),
        pushgateway_job=dict(type="str", default="pgmigrate"),
        timeout=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    run, problem = ledger_run(module, p["run_id"])
    if problem:
        module.warn(f"metrics without the ledger's phase timings: {problem}")
    if not run:
        run = {"id": p["run_id"], "version": p["version"], "phases": {}}
    if p["version"] and not run.get("version"):
        run["version"] = p["version"]
    database = p["database_label"] or database_id(p)
    try:
        metrics = run_metrics(run, p["status"], p["phase"], p["environment"], time.time(), p["validation"], database)
        text = render(metrics)
    except ValueError as exc:
        module.fail_json(msg=f"cannot render the metrics: {exc}")
    result = {"changed": True, "metrics_file": p["metrics_file"], "text": text, "pushed": None, "database": database,
              "run": {"id": run.get("id"), "status": p["status"], "phase": p["phase"],
                      "phases": {k: v.get("duration_s") for k, v in run["phases"].items() if isinstance(v, dict)}}}
    if module.check_mode:
        module.exit_json(**result)
    try:
        write_textfile(p["metrics_file"], metrics)
    except OSError as exc:
        module.fail_json(msg=f"cannot write {p['metrics_file']}: {exc}; check pgmigrate_log_dir (or "
                             "report_metrics_file) and its permissions")
    if p["pushgateway_url"]:
        grouping = {"database": database}
        error = push_to_gateway(p["pushgateway_url"], p["pushgateway_job"], grouping, text, p["timeout"])
        result["pushed"] = error is None
        if error:
            module.warn(f"the Pushgateway did not take the metrics ({error}); the metrics file is written")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
