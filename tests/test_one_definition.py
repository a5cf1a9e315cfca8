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
