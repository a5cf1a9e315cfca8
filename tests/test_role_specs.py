"""Every role's meta/argument_specs.yml agrees with its defaults/main.yml, and its README lists every variable.

Cheap (no database, no playbook): it reads the files, so a default changed in one place and not the other fails
here instead of surprising a user of the role on its own.
"""
from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "defaults" / "main.yml").exists())


def load(path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_argument_spec_defaults_equal_defaults_main(role):
    defaults = load(ROOT / "roles" / role / "defaults" / "main.yml")
    specs = load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]
    problems = []
    for entry, spec in specs.items():
        for name, option in (spec.get("options") or {}).items():
            if name not in defaults:
                if "default" in option:
                    problems.append(f"{entry}.{name}: has a default in argument_specs but none in defaults/main.yml")
                continue
            if "default" not in option:
                problems.append(f"{entry}.{name}: no default in argument_specs (defaults/main.yml: {defaults[name]!r})")
            elif option["default"] != defaults[name]:
                problems.append(f"{entry}.{name}: argument_specs default {option['default']!r} != defaults/main.yml "
                                f"{defaults[name]!r}")
    main_options = set(specs.get("main", {}).get("options") or {})
    every_option = set().union(*((s.get("options") or {}).keys() for s in specs.values()))
    for name in sorted(set(defaults) - every_option):
        problems.append(f"{name}: in defaults/main.yml but in no entry point of argument_specs")
    assert not problems, "\n".join(problems)
    assert main_options or role == "blue_green"


@pytest.mark.parametrize("role", ROLES)
def test_readme_lists_every_variable(role):
    readme = ROOT / "roles" / role / "README.md"
    assert readme.exists(), f"roles/{role} has no README.md"
    text = readme.read_text()
    missing = [name for name in load(ROOT / "roles" / role / "defaults" / "main.yml") if f"`{name}`" not in text]
    assert not missing, f"roles/{role}/README.md does not list {missing}"


def shared_variables() -> set[str]:
    """The play-level variables a role may need from its caller: the inventory's and the connection's, the
    plan and the run (set by the plan role in migrate.yml; to be given when a role is used on its own)."""
    names = {"pgmigrate_plan", "pgmigrate_run_id"}
    for path in [ROOT / "playbooks" / "vars" / "connection.yml", *(ROOT / "inventories" / "local").rglob("*.yml")]:
        names |= {k for k in load(path) if str(k).startswith("pgmigrate_")}
    return names


@pytest.mark.parametrize("role", ROLES)
def test_readme_lists_what_the_role_needs_when_used_alone(role):
    files = [p for p in (ROOT / "roles" / role).rglob("*") if p.suffix in (".yml", ".j2")]
    used = {name for name in shared_variables() if any(name in p.read_text() for p in files)}
    readme = ROOT / "roles" / role / "README.md"
    text = readme.read_text() if readme.exists() else ""
    missing = sorted(name for name in used if f"`{name}`" not in text)
    assert not missing, f"roles/{role}/README.md does not say that the role needs {missing}"
