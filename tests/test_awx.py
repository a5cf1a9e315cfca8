"""The AWX definitions (awx/assets.yml, the `awx import` format) against the playbooks they launch.

The extra vars a playbook reads are derived from the playbook itself: every file it reaches
(imported playbooks, vars files, included task files, the roles it runs and their defaults and
templates) is parsed, and a variable counts as an extra var when a Jinja expression reads it and
nothing in the project defines it (role defaults and vars, set_fact, register, vars:, group_vars,
argument specs, Ansible's magic variables).  So the check follows rollback.yml and migrate.yml as
they grow; nothing here lists what they read.
"""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import jinja2.meta
import pytest
import yaml
from conftest import ROOT

ASSETS = ROOT / "awx" / "assets.yml"
# Variables AWX sets on every job (https://docs.ansible.com/automation-controller: "Ansible facts and
# variables set by the controller"): read by the plan role for the ledger, never asked in a survey.
AWX_SET = re.compile(r"^(awx|tower)_")
# Extra vars the playbooks read that are deliberately not survey questions, with the reason.
NOT_ASKED = {
    "operator": "under AWX the ledger records the AWX user who launched the job (awx_user_name)",
    "backup": "restore.yml only (a file path on the execution node), not an AWX template",
    "terminate_sessions": "restore.yml only, not an AWX template",
}
MAGIC = {
    "hostvars", "groups", "group_names", "inventory_hostname", "inventory_hostname_short", "inventory_dir",
    "inventory_file", "playbook_dir", "role_path", "role_name", "item", "omit", "play_hosts", "environment",
    "lookup", "query", "q", "now", "range", "dict", "lipsum", "zip", "undef", "namespace", "cycler", "joiner",
    "true", "false", "none", "True", "False", "None", "loop", "ansible_loop", "role_names", "vars",
}


class AnyName(dict):
    """Filters and tests of Ansible and its collections: only their names matter to the analysis."""

    def __contains__(self, key) -> bool:
        return True

    def __missing__(self, key):
        return lambda *a, **k: None

    def get(self, key, default=None):
        return self[key]


# group_vars that are not the project's: the inventories' own (under AWX the job's inventory), tests, Molecule.
NOT_PROJECT_VARS = {".venv", ".tools", "molecule", "tests", "inventories"}
JINJA = jinja2.Environment()
JINJA.filters = AnyName(JINJA.filters)
JINJA.tests = AnyName(JINJA.tests)
BARE_KEYS = {"when", "that", "changed_when", "failed_when", "until"}
INCLUDE_TASKS = {"ansible.builtin.include_tasks", "ansible.builtin.import_tasks", "include_tasks", "import_tasks"}
INCLUDE_ROLE = {"ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role"}
IMPORT_PLAYBOOK = {"ansible.builtin.import_playbook", "import_playbook"}


def load_assets() -> dict:
    return yaml.safe_load(ASSETS.read_text())


def expressions(node, key: str | None = None):
    """Every Jinja template (and bare conditional) in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from expressions(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from expressions(v, key)
    elif isinstance(node, str):
        if key in BARE_KEYS and "{{" not in node:
            yield "{{ " + node + " }}"
        elif "{{" in node or "{%" in node:
            yield node


def read_names(template: str) -> set[str]:
    try:
        return jinja2.meta.find_undeclared_variables(JINJA.parse(template))
    except jinja2.TemplateSyntaxError as exc:
        raise AssertionError(f"unparsable template {template!r}: {exc}") from exc


def defined_names(node) -> set[str]:
    """Names a task tree defines: set_fact keys, register, vars:, loop_var."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("ansible.builtin.set_fact", "set_fact") and isinstance(v, dict):
                out |= set(v)
            elif k == "register" and isinstance(v, str):
                out.add(v)
            elif k in ("vars", "module_defaults") and isinstance(v, dict) and k == "vars":
                out |= set(v)
            elif k == "loop_control" and isinstance(v, dict) and "loop_var" in v:
                out.add(v["loop_var"])
            out |= defined_names(v)
    elif isinstance(node, list):
        for v in node:
            out |= defined_names(v)
    return out


class Reach:
    """The files a playbook reaches: its plays, vars files, task files and the roles' entry points."""

    def __init__(self, playbook: Path):
        self.files: set[Path] = set()
        self.roles: set[str] = set()
        self._playbook(playbook)

    def _playbook(self, path: Path) -> None:
        self.files.add(path)
        for play in yaml.safe_load(path.read_text()) or []:
            for key in IMPORT_PLAYBOOK:
                if key in play:
                    self._playbook((path.parent / play[key]).resolve())
            for vf in play.get("vars_files", []):
                self.files.add((path.parent / vf).resolve())
            for role in play.get("roles", []):
                self._role(role if isinstance(role, str) else role.get("role") or role["name"], "main")
            for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                self._tasks(play.get(section) or [], path.parent)

    def _role(self, name: str, entry: str) -> None:
        role = ROOT / "roles" / name
        assert role.is_dir(), f"role {name} not found"
        if name not in self.roles:
            self.roles.add(name)
            self.files |= set((role / "templates").rglob("*.j2"))
            for handlers in (role / "handlers").glob("*.yml"):
                self._tasks_file(handlers)
        self._tasks_file(role / "tasks" / f"{entry}.yml")

    def _tasks_file(self, path: Path) -> None:
        if path in self.files or not path.is_file():
            return
        self.files.add(path)
        self._tasks(yaml.safe_load(path.read_text()) or [], path.parent)

    def _tasks(self, tasks: list, base: Path) -> None:
        for task in tasks:
            if not isinstance(task, dict):
                continue
            for key in ("block", "rescue", "always"):
                self._tasks(task.get(key) or [], base)
            for key in INCLUDE_TASKS:
                if key in task and "{{" not in str(task[key]):
                    self._tasks_file((base / task[key]).resolve())
            entries = [(task[key]["name"], task[key].get("tasks_from", "main")) for key in INCLUDE_ROLE if key in task]
            # Roles chosen by a variable (phase.yml's pgmigrate_phase_role) are given in the include's vars.
            entries += [(v, "main") for k, v in (task.get("vars") or {}).items()
                        if k.endswith("_role") and isinstance(v, str)]
            for name, entry in entries:
                if "{{" not in name:
                    self._role(name, entry)


def names_in(node) -> set[str]:
    read: set[str] = set()
    for template in expressions(node):
        read |= read_names(template)
    return read


@functools.cache
def lazy_definitions() -> dict[str, set[str]]:
    """Variables defined by a lazily templated value (role defaults and vars, group_vars, vars files), each
    with the names its value reads: a value counts only when something the playbook reaches reads it."""
    out: dict[str, set[str]] = {}
    paths = list((ROOT / "roles").glob("*/defaults/main.yml")) + list((ROOT / "roles").glob("*/vars/main.yml")) \
        + list((ROOT / "playbooks" / "vars").glob("*.yml")) \
        + [p for p in ROOT.glob("**/group_vars/**/*.yml") if not NOT_PROJECT_VARS & set(p.parts)]
    for path in paths:
        for name, value in (yaml.safe_load(path.read_text()) or {}).items():
            out.setdefault(name, set()).update(names_in(value))
    return out


@functools.cache
def project_definitions() -> frozenset[str]:
    """Every variable the project itself defines somewhere (so it is not an extra var a user gives)."""
    names = set(lazy_definitions())
    for path in (ROOT / "roles").glob("*/meta/argument_specs.yml"):
        for spec in (yaml.safe_load(path.read_text())["argument_specs"] or {}).values():
            names |= set(spec.get("options") or {})
    for path in list((ROOT / "roles").glob("*/tasks/*.yml")) + list((ROOT / "playbooks").rglob("*.yml")) \
            + [ROOT / "migrate.yml", ROOT / "rollback.yml"]:
        names |= defined_names(yaml.safe_load(path.read_text()))
    return frozenset(names)


def is_user_var(name: str) -> bool:
    # _x / __x are internal by the house style; pgmigrate_* are the inventory's settings (under AWX the
    # inventory's or a group's variables), not per-launch answers.
    return not (name in project_definitions() or name in MAGIC or name.startswith(("ansible_", "_", "pgmigrate_")))


@functools.cache
def extra_vars_read(playbook: str) -> frozenset[str]:
    """The extra vars a playbook really reads: the names read by what it reaches, following the
    definitions of the variables they read, that no part of the project defines."""
    pending: set[str] = set()
    for path in Reach(ROOT / playbook).files:
        text = path.read_text()
        pending |= read_names(text) if path.suffix == ".j2" else names_in(yaml.safe_load(text))
    lazy = lazy_definitions()
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending |= lazy.get(name, set()) - seen
    return frozenset(n for n in seen if is_user_var(n))


def job_templates() -> list[dict]:
    return load_assets()["job_templates"]


def survey_vars(template: dict) -> dict[str, dict]:
    return {q["variable"]: q for q in template["related"]["survey_spec"]["spec"]}


@functools.cache
def role_options_read(playbook: str) -> frozenset[str]:
    """Role variables a user may set with -e on this playbook (e.g. rollback_strategy): the defaults
    and argument-spec options of the roles it reaches that some file it reaches reads."""
    reach = Reach(ROOT / playbook)
    options: set[str] = set()
    for name in reach.roles:
        role = ROOT / "roles" / name
        defaults = role / "defaults" / "main.yml"
        if defaults.is_file():
            options |= set(yaml.safe_load(defaults.read_text()) or {})
        specs = role / "meta" / "argument_specs.yml"
        if specs.is_file():
            for spec in (yaml.safe_load(specs.read_text())["argument_specs"] or {}).values():
                options |= set(spec.get("options") or {})
    read: set[str] = set()
    for path in reach.files:
        text = path.read_text()
        read |= read_names(text) if path.suffix == ".j2" else names_in(yaml.safe_load(text))
    return frozenset(options & read)


def test_the_analysis_sees_the_extra_vars_of_migrate_yml():
    """The derivation itself: the command line's -e version, -e rehearse, -e break_lock are found,
    and variables the project defines (pgmigrate_*, role defaults, facts) are not."""
    read = extra_vars_read("migrate.yml")
    assert {"version", "rehearse", "break_lock", "batch_size"} <= read
    assert not {n for n in read if n.startswith(("pgmigrate_", "__", "plan_", "backup_"))}


@pytest.mark.parametrize("template", job_templates(), ids=lambda t: t["name"])
def test_every_template_names_a_playbook_that_exists(template):
    assert (ROOT / template["playbook"]).is_file(), f"{template['name']}: {template['playbook']} does not exist"
    assert template["project"]["name"] == load_assets()["projects"][0]["name"]


@pytest.mark.parametrize("template", job_templates(), ids=lambda t: t["name"])
def test_every_survey_variable_is_read_by_the_playbook(template):
    read = extra_vars_read(template["playbook"]) | role_options_read(template["playbook"])
    unread = set(survey_vars(template)) - read
    assert not unread, (f"{template['name']}: survey variables {sorted(unread)} are not read by "
                        f"{template['playbook']} (it reads {sorted(read)})")


@pytest.mark.parametrize("template", job_templates(), ids=lambda t: t["name"])
def test_every_extra_var_the_playbook_reads_has_a_survey_question(template):
    read = extra_vars_read(template["playbook"])
    # A value the template fixes in its own extra_vars (fleet.yml's auto_rollback) is given, not asked.
    fixed = set(yaml.safe_load(template.get("extra_vars") or "") or {})
    missing = {n for n in read - set(survey_vars(template)) - fixed if not AWX_SET.match(n) and n not in NOT_ASKED}
    assert not missing, (f"{template['name']}: {template['playbook']} reads the extra vars {sorted(missing)} "
                         "but the survey asks none of them")


def test_the_version_question_carries_the_plan_pattern_and_a_plan_that_exists():
    VERSION_RE = re.search(r'^VERSION_RE = r"(.+)"$', (ROOT / "module_utils/pgmigrate_plan.py").read_text(),
                           re.M).group(1)
    for template in job_templates():
        q = survey_vars(template)["version"]
        assert q["required"] is True and q["type"] == "text"
        assert VERSION_RE in q["question_description"], template["name"]
        assert re.match(VERSION_RE, q["default"])
        assert (ROOT / "migrations" / f"{q['default']}.yml").is_file()


def test_survey_questions_are_well_formed():
    for template in job_templates() + load_assets()["workflow_job_templates"]:
        assert template["survey_enabled"] is True
        spec = template["related"]["survey_spec"]["spec"]
        variables = [q["variable"] for q in spec]
        assert len(variables) == len(set(variables)), template["name"]
        for q in spec:
            assert q["type"] in ("text", "textarea", "password", "integer", "float", "multiplechoice",
                                 "multiselect"), q
            if q["type"] == "multiplechoice":
                assert q.get("default", q["choices"][0]) in q["choices"], q
                if set(q["choices"]) == {"true", "false"}:
                    assert q["default"] == "false", f"{q['variable']}: a dangerous switch defaults to off"
            if q["type"] == "integer" and "default" in q:
                assert q["min"] <= q["default"] <= q["max"], q
    # Dry run = check mode: the templates that change things prompt for the Job Type (run / check).
    for template in job_templates():
        assert template["ask_job_type_on_launch"] is True, template["name"]


def runs(node: dict) -> str | None:
    return (node.get("unified_job_template") or {}).get("name")


def test_workflows_roll_back_on_failure_and_production_waits_for_an_approval():
    assets = load_assets()
    names = {t["name"] for t in assets["job_templates"]}
    for wf in assets["workflow_job_templates"]:
        nodes = {n["identifier"]: n for n in wf["related"]["workflow_nodes"]}
        for node in nodes.values():
            jt = node.get("unified_job_template")
            assert jt is None or jt["name"] in names, f"{wf['name']}: {node['identifier']} runs an unknown template"
            assert (jt is None) == ("create_approval_template" in node.get("related", {})), node["identifier"]
            for link in ("success_nodes", "failure_nodes", "always_nodes"):
                for target in node[link]:
                    assert target["workflow_job_template"]["name"] == wf["name"]
                    assert target["identifier"] in nodes, f"{wf['name']}: {target['identifier']} is not a node"
        migrate = [n for n in nodes.values() if runs(n) == "pgmigrate migrate"]
        assert len(migrate) == 1
        rollback = [nodes[t["identifier"]] for t in migrate[0]["failure_nodes"]]
        assert [n["unified_job_template"]["name"] for n in rollback] == ["pgmigrate rollback"]
        # The workflow itself rolls back: the job must not also roll back on its own.
        assert migrate[0]["extra_data"].get("auto_rollback") == "false"
    prod = next(w for w in assets["workflow_job_templates"] if "production" in w["name"])
    nodes = {n["identifier"]: n for n in prod["related"]["workflow_nodes"]}
    approvals = [i for i, n in nodes.items() if n.get("unified_job_template") is None]
    assert len(approvals) == 1
    migrate_id = next(i for i, n in nodes.items() if runs(n) == "pgmigrate migrate")
    # The approval comes before the run that switches traffic, never after it.
    assert migrate_id in {t["identifier"] for t in nodes[approvals[0]]["success_nodes"]}


def test_the_credential_type_injects_the_password_as_an_extra_var_and_no_secret_is_stored():
    assets = load_assets()
    ctype = assets["credential_types"][0]
    secret = [f["id"] for f in ctype["inputs"]["fields"] if f.get("secret")]
    assert secret == ["password"]
    assert ctype["injectors"] == {"extra_vars": {"pgmigrate_db_user": "{{ username }}",
                                                 "pgmigrate_db_password": "{{ password }}"}}
    assert "env" not in ctype["injectors"], "a task-level environment would put the password on a command line"
    for cred in assets["credentials"]:
        assert cred["inputs"].get("password", "") == ""


def awxkit_python() -> str | None:
    """A Python with awxkit (the project's venv, or the .tools venv of the AWX CLI next to it)."""
    for python in (sys.executable, str(ROOT / ".tools/bin/python")):
        if Path(python).exists() and subprocess.run([python, "-c", "import awxkit.yaml_file"],
                                                    capture_output=True, check=False).returncode == 0:
            return python
    return None


def test_the_awx_import_reads_the_file():
    """awxkit's own loader (the one `awx -f yaml import` uses), and only resources that it imports."""
    python = awxkit_python()
    if python is None:
        pytest.skip("awxkit is not installed (pip install awxkit, in .venv or .tools)")
    probe = ("import json, sys, yaml\n"
             "from awxkit import yaml_file\n"
             "from awxkit.api.pages.api import EXPORTABLE_RESOURCES\n"
             "data = yaml.load(open(sys.argv[1]), Loader=yaml_file.Loader)\n"
             "print(json.dumps({'data': data, 'resources': EXPORTABLE_RESOURCES}))\n")
    out = subprocess.run([python, "-c", probe, str(ASSETS)], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert loaded["data"] == load_assets()
    assert set(loaded["data"]) <= set(loaded["resources"])
    for resource, items in loaded["data"].items():
        for item in items:
            assert item["natural_key"]["type"], (resource, item["name"])
