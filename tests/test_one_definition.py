"""One definition of each thing: what two places used to define differently is read from one (no database).

The modules and module_utils are imported as Ansible would (module_utils on ansible.module_utils' path).
"""
from __future__ import annotations

import ast
import importlib.util

import ansible.module_utils
import yaml
from conftest import ROOT

if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"pgmigrate_test_{name}", ROOT / "library" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_options(name: str) -> dict:
    tree = ast.parse((ROOT / "library" / f"{name}.py").read_text())
    doc = next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
               and getattr(n.targets[0], "id", "") == "DOCUMENTATION")
    return yaml.safe_load(doc)["options"]


def test_pg_batch_update_defaults_have_one_definition():
    """The module's argument spec, its DOCUMENTATION and the engine's Spec (used by the plan's preflight) agree;
    hold_poll_s was 5.0 in the module and 1.0 in the engine."""
    from ansible.module_utils.pgmigrate_batch import spec_defaults

    engine = spec_defaults()
    argspec = load_module("pg_batch_update").argument_spec()
    docs = documented_options("pg_batch_update")
    problems = []
    for name, default in engine.items():
        if name in argspec and argspec[name].get("default") != default:
            problems.append(f"{name}: argument spec {argspec[name].get('default')!r} != engine {default!r}")
        if name in docs and docs[name].get("default") != default:
            problems.append(f"{name}: DOCUMENTATION {docs[name].get('default')!r} != engine {default!r}")
    assert not problems, "\n".join(problems)
    assert engine["hold_poll_s"] == 5.0


def test_one_duration_grammar_for_plans_and_modules():
    """The plan's lock/statement timeouts and alembic_migrate's read durations alike ('0' was refused by the plan
    and taken by the module)."""
    import re

    from ansible.module_utils.pgmigrate import parse_duration_ms
    from ansible.module_utils.pgmigrate_plan import BACKFILL_SPEC, PLAN_SPEC

    patterns = {BACKFILL_SPEC["fields"]["lock_timeout"]["pattern"],
                PLAN_SPEC["fields"]["schema"]["fields"]["statement_timeout"]["pattern"]}
    for sample, ms in (("0", 0), ("500ms", 500), ("2s", 2000), ("5min", 300_000), ("1h", 3_600_000), ("250", 250)):
        assert parse_duration_ms(sample) == ms
        assert all(re.match(p, sample) for p in patterns), sample
    for bad in ("2 sec", "-1s", "1.5s", "s", ""):
        assert not any(re.match(p, bad) for p in patterns), bad
        try:
            parse_duration_ms(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} parsed")


def defined_in(function: str) -> list[str]:
    """Files of library/ and module_utils/ that define ``function``."""
    return sorted(str(p.relative_to(ROOT)) for folder in ("library", "module_utils")
                  for p in (ROOT / folder).glob("*.py") if f"\ndef {function}(" in p.read_text())


def test_drop_database_has_one_definition_that_ends_sessions(pg):
    """pg_backup_restore and pg_backup_verify each had their own; the one left drops a database a session is
    still connected to."""
    from ansible.module_utils.pgmigrate_backup import drop_database

    assert defined_in("drop_database") == ["module_utils/pgmigrate_backup.py"]
    name = pg.create_database()
    session = pg.connect(name)
    admin = pg.admin_connect()
    try:
        with admin.cursor() as cur:
            drop_database(cur, name)
            drop_database(cur, name)  # already gone: nothing to do, no error
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            assert cur.fetchone() == (0,)
    finally:
        admin.close()
        session.close()
