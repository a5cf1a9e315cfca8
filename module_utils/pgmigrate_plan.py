# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration plan file format (migrations/<version>.yml) and its validator.

The plan is the runbook's Migration Plan Template made machine-readable.  The schema
below is the single source of truth for its fields; ``validate_plan`` returns every
problem with the dotted path of the field and what is expected, so an operator can fix
the file without reading code.  No third-party schema library; the plan's SQL fragments
are parsed with PostgreSQL's own grammar (pglast, see pgmigrate_sql) once the structure
is right.
"""
from __future__ import annotations

import re
from typing import Any

from ansible.module_utils.pgmigrate import DURATION_PATTERN
from ansible.module_utils.pgmigrate_holds import HOLD_KINDS, required_holds_problems
from ansible.module_utils.pgmigrate_sql import plan_sql_errors

VERSION_RE = r"^\d+\.\d+\.\d+([-.+][0-9A-Za-z.-]+)?$"
DURATION_RE = DURATION_PATTERN  # the one duration grammar (module_utils/pgmigrate.py): '0' is no limit
NAME_RE = r"^[a-z][a-z0-9_]{0,62}$"

# Field spec keys: type (str|int|float|bool|number|dict|list|any), required, choices,
# pattern, min, fields (for dict), items (for list), keys/values (for free-form maps),
# default (documentation only), doc.
STR = {"type": "str"}

CHECK_SPEC = {
    "type": "dict",
    "fields": {
        "name": {"type": "str", "required": True, "pattern": NAME_RE},
        "kind": {"type": "str", "required": True,
                 "choices": ["row_count", "migrated_percentage", "invalid_rows", "schema", "custom_sql"]},
        "table": STR,
        "column": STR,
        "columns": {"type": "list", "items": STR},
        "where": STR,
        "predicate": STR,
        "sql": STR,
        "expect": {"type": "any"},
        "tolerance": {"type": "number", "min": 0},
        "threshold": {"type": "number", "min": 0},
        "max_invalid": {"type": "int", "min": 0},
        "severity": {"type": "str", "choices": ["error", "warning"]},
        "description": STR,
        "expect_schema": {"type": "dict"},
    },
}

BACKFILL_SPEC = {
    "type": "dict",
    "fields": {
        "name": {"type": "str", "required": True, "pattern": NAME_RE},
        "description": STR,
        "table": {"type": "str", "required": True},
        "key": {"type": "list", "items": STR},
        "set": {"type": "dict", "values": STR, "doc": "column -> SQL expression over the current row"},
        "python": {"type": "str", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
                   "doc": "module.path:function transform (instead of set)"},
        "python_path": {"type": "list", "items": STR,
                        "doc": "directories put on sys.path for the transform (relative: to the project directory)"},
        "columns": {"type": "list", "items": STR},
        "read_columns": {"type": "list", "items": STR, "doc": "columns the python transform reads (default all)"},
        "where": STR,
        "incremental": {"type": "dict", "fields": {
            "column": STR, "hours": {"type": "number", "min": 0}, "since_last_run": {"type": "bool"},
            "overlap_s": {"type": "number", "min": 0}}},
        "batch_size": {"type": "int", "min": 1},
        "min_batch_size": {"type": "int", "min": 1},
        "max_batch_size": {"type": "int", "min": 1},
        "target_batch_ms": {"type": "int", "min": 1},
        "pause_ms": {"type": "int", "min": 0},
        "lock_timeout": {"type": "str", "pattern": DURATION_RE},
        "statement_timeout": {"type": "str", "pattern": DURATION_RE},
        "max_retries": {"type": "int", "min": 0},
        "workers": {"type": "int", "min": 1},
        "max_workers": {"type": "int", "min": 1,
                        "doc": "the most workers the foreground budget may raise to (default: workers)"},
        "max_foreground_p99_ms": {"type": "number", "min": 0,
                                  "doc": "the application's p99 latency budget while the backfill runs (0: off)"},
        "max_pause_ms": {"type": "int", "min": 0, "doc": "the longest pause the foreground budget may set"},
        "nice": {"type": "int", "min": 0, "max": 19, "doc": "niceness of a python transform's threads (default 10)"},
        "max_replication_lag_s": {"type": "number", "min": 0},
        "hold_on_autovacuum": {"type": "bool"},
        "max_archive_backlog": {"type": "int", "min": 0},
        "hold_poll_s": {"type": "number", "min": 0, "doc": "seconds between health checks during a hold"},
        "max_hold_s": {"type": "number", "min": 0, "doc": "the backfill fails when one hold lasts longer"},
        "required_holds": {"type": "list", "items": {"type": "str", "choices": list(HOLD_KINDS)},
                           "doc": "holds that must see (privileges) or the backfill is refused before it starts"},
    },
}

PLAN_SPEC: dict[str, Any] = {
    "type": "dict",
    "fields": {
        "plan_format": {"type": "int", "required": True, "choices": [1]},
        "version": {"type": "str", "required": True, "pattern": VERSION_RE},
        "from_version": {"type": "str", "required": True, "pattern": VERSION_RE},
        "type": {"type": "str", "required": True, "choices": ["schema", "data", "both"]},
        "title": {"type": "str", "required": True},
        "description": STR,
        # A plan asks only for what it uses: downtime, contacts, affected_components, release and rollback are
        # read only by the phases that use them (report, deploy, rollback), and each has its default there.
        "downtime": {"type": "dict", "fields": {
            "expected": {"type": "str", "required": True, "choices": ["none", "read_only", "full"]},
            "window": STR,
            "max_minutes": {"type": "int", "min": 0},
        }},
        "affected_components": {"type": "list", "items": STR, "min": 1},
        "contacts": {"type": "list", "items": {"type": "dict", "fields": {
            "role": {"type": "str", "required": True}, "name": {"type": "str", "required": True},
            "email": STR, "phone": STR, "slack": STR}}},
        "database": {"type": "dict", "fields": {
            "name": STR,
            "tables": {"type": "list", "items": STR, "doc": "tables the migration touches (row-count baseline)"},
        }},
        "schema": {"type": "dict", "fields": {
            "tool": {"type": "str", "choices": ["alembic", "sql", "none"]},
            "alembic_dir": STR,
            "alembic_config": STR,
            "from_revision": STR,
            "revision": {"type": "str", "doc": "required with tool alembic"},
            "lock_timeout": {"type": "str", "pattern": DURATION_RE},
            "statement_timeout": {"type": "str", "pattern": DURATION_RE},
            "lock_retries": {"type": "int", "min": 0},
            "sql_files": {"type": "list", "items": STR},
            "expect": {"type": "dict"},
        }},
        "backup": {"type": "dict", "fields": {
            "enabled": {"type": "bool"},
            "format": {"type": "str", "choices": ["custom", "directory"]},
            "jobs": {"type": "int", "min": 1},
            "compress": {"type": "int", "min": 0, "max": 9,
                         "doc": "pg_dump gzip level, 0-9 (default 1: about 3x faster than pg_dump's 6)"},
            "verify": {"type": "bool"},
            "stream_proof": {"type": "bool", "doc": "prove a custom-format backup while it is dumped (default true)"},
            "retain": {"type": "int", "min": 1},
        }},
        "backfills": {"type": "list", "items": BACKFILL_SPEC},
        "validation": {"type": "dict", "fields": {
            "checks": {"type": "list", "items": CHECK_SPEC},
            "smoke": {"type": "dict"},
            "performance": {"type": "dict"},
            "test_command": STR,
        }},
        "release": {"type": "dict", "fields": {
            "version": {"type": "str", "required": True, "pattern": VERSION_RE},
            "strategy": {"type": "str", "required": True, "choices": ["blue_green", "rolling", "none"]},
            "health_path": STR,
            "config": {"type": "dict"},
            "artifact": STR,
            "instances": {"type": "int", "min": 1},
        }},
        "rollback": {"type": "dict", "fields": {
            "policy": {"type": "str", "required": True, "choices": ["automatic", "manual"]},
            "restore_backup": {"type": "str", "choices": ["never", "if_data_changed", "always"]},
            "max_minutes": {"type": "int", "min": 0},
            "discard_new_rows": {"type": "bool",
                                 "doc": "a rollback may discard rows written after the backup (default false)"},
            "terminate_sessions": {"type": "bool",
                                   "doc": "a restore may terminate the application's sessions for the swap "
                                          "(default false: they make it fail, named)"},
        }},
        "notify": {"type": "dict"},
        "monitoring": {"type": "dict"},
    },
}

_PY_TYPES = {"str": (str,), "int": (int,), "float": (float,), "number": (int, float), "bool": (bool,),
             "dict": (dict,), "list": (list,)}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind in ("int", "number", "float") and isinstance(value, bool):
        return False
    return isinstance(value, _PY_TYPES[kind])


def validate(value: Any, spec: dict, path: str = "") -> list[str]:
    """Every problem in ``value`` as 'path: what is wrong (what is expected)'."""
    where = path or "plan"
    kind = spec.get("type", "any")
    if not _type_ok(value, kind):
        return [f"{where}: expected {kind}, got {type(value).__name__} {value!r:.60}"]
    errors: list[str] = []
    if "choices" in spec and value not in spec["choices"]:
        errors.append(f"{where}: {value!r} is not one of {spec['choices']}")
    if "pattern" in spec and isinstance(value, str) and not re.match(spec["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {spec['pattern']}")
    if "min" in spec:
        size = len(value) if isinstance(value, (list, dict, str)) else value
        if size < spec["min"]:
            errors.append(f"{where}: must be at least {spec['min']}")
    if "max" in spec and not isinstance(value, (list, dict, str)) and value > spec["max"]:
        errors.append(f"{where}: must be at most {spec['max']}")
    if kind == "dict":
        fields = spec.get("fields")
        if fields is not None:
            for name, sub in fields.items():
                if sub.get("required") and name not in value:
                    errors.append(f"{path + '.' if path else ''}{name}: required field is missing")
            for name, item in value.items():
                sub_path = f"{path}.{name}" if path else str(name)
                if name not in fields:
                    close = [f for f in fields if f.startswith(str(name)[:3])]
                    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(fields))})"
                    errors.append(f"{sub_path}: unknown field{hint}")
                    continue
                errors.extend(validate(item, fields[name], sub_path))
        elif "values" in spec:
            for name, item in value.items():
                errors.extend(validate(item, spec["values"], f"{path}.{name}"))
    if kind == "list" and "items" in spec:
        for i, item in enumerate(value):
            errors.extend(validate(item, spec["items"], f"{where}[{i}]"))
    return errors


def validate_plan(plan: Any, expected_version: str | None = None) -> list[str]:
    errors = validate(plan, PLAN_SPEC)
    if errors:
        return errors
    if expected_version and plan["version"] != expected_version:
        errors.append(f"version: the file says {plan['version']!r} but it was loaded for {expected_version!r}")
    names = [b["name"] for b in plan.get("backfills", [])]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"backfills: name {dup!r} is used twice")
    for i, backfill in enumerate(plan.get("backfills", [])):
        if bool(backfill.get("set")) == bool(backfill.get("python")):
            errors.append(f"backfills[{i}] ({backfill['name']}): give exactly one of 'set' (SQL expressions) "
                          "or 'python' (module:function)")
        errors.extend(required_holds_problems(backfill, f"backfills[{i}] ({backfill['name']})"))
        where = f"backfills[{i}] ({backfill['name']})"
        for low, high in (("min_batch_size", "max_batch_size"), ("workers", "max_workers")):
            if low in backfill and high in backfill and backfill[low] > backfill[high]:
                errors.append(f"{where}: {low} ({backfill[low]}) is larger than {high} ({backfill[high]}); "
                              f"give a {high} of at least {backfill[low]}")
    checks = [c["name"] for c in plan.get("validation", {}).get("checks", [])]
    for dup in sorted({n for n in checks if checks.count(n) > 1}):
        errors.append(f"validation.checks: name {dup!r} is used twice")
    if plan["type"] in ("schema", "both") and "schema" not in plan:
        errors.append(f"schema: required field is missing (the plan's type is {plan['type']}; a plan without a "
                      "schema change says type: data)")
    schema = plan.get("schema")
    if schema is not None and schema.get("tool", "alembic") == "alembic":
        if not schema.get("alembic_dir"):
            errors.append("schema.alembic_dir: required when schema.tool is alembic (the directory of alembic.ini)")
        if not schema.get("revision"):
            errors.append("schema.revision: required when schema.tool is alembic (the revision to migrate to)")
    errors.extend(plan_sql_errors(plan))
    return errors
