#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: migration_plan
short_description: Load and check a migration plan file
description:
  - Loads C(<plan_dir>/<version>.yml), the runbook's Migration Plan Template in machine-readable form, and checks
    it against the plan schema (C(module_utils/pgmigrate_plan.py)).
  - Fails before anything touches a database, with every problem named by its field path
    (for example C(backfills[0].batch_size) with what it expects).
  - An unknown version fails with the list of versions that have a plan.
  - Every SQL fragment of the plan (backfill C(set) expressions and C(where) filters, check C(where) filters and
    C(predicate)s, C(custom_sql) checks) is parsed with PostgreSQL's own grammar (pglast) at load. An expression must
    be exactly one expression, a query exactly one SELECT with no data-modifying statement (none in a WITH either),
    no C(SELECT INTO) and no C(FOR UPDATE/SHARE). Anything else fails the load, naming the field and the fragment.
  - A plan file larger than O(max_bytes), or one whose YAML aliases expand it beyond O(max_bytes), is refused before
    (or while) it is parsed.
  - Under C(-v) the loaded plan is not echoed when the task succeeds (the action plugin of the same name marks the
    result like C(gather_facts) does); failures are always shown in full.
  - Reads files only; changes nothing.
version_added: "1.0.0"
author: pgmigrate-ops contributors
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  version:
    description: Version to migrate to; the plan file is C(<plan_dir>/<version>.yml).
    type: str
    required: true
  plan_dir:
    description: Directory holding the plan files.
    type: path
    required: true
  max_bytes:
    description:
      - Largest plan accepted, in bytes, for the file and for the plan as loaded (YAML aliases expanded, measured as
        JSON). A plan describes a migration and carries no data; 1 MiB is far above any real one.
    type: int
    default: 1048576
requirements:
  - PyYAML
  - pglast (PostgreSQL's parser, for the plan's SQL)
'''

EXAMPLES = r'''
- name: Load the plan for this version
  migration_plan:
    version: "{{ version }}"
    plan_dir: "{{ pgmigrate_plan_dir }}"
    max_bytes: 1048576
  delegate_to: localhost
  register: __plan_loaded
'''

RETURN = r'''
plan:
  description: The plan, as loaded and checked (kept for the later tasks; not printed under C(-v)).
  returned: success
  type: dict
size_bytes:
  description: Size of the plan file.
  returned: when the file exists
  type: int
  sample: 4512
path:
  description: The plan file that was loaded.
  returned: always
  type: str
  sample: /srv/pgmigrate-ops/migrations/2.0.0.yml
available_versions:
  description: Versions that have a plan file in O(plan_dir).
  returned: always
  type: list
  elements: str
'''

import json
import os
import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible.module_utils.pgmigrate_plan import VERSION_RE, validate_plan
from ansible.module_utils.pgmigrate_sql import HAS_PGLAST, PGLAST_IMP_ERR

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover
    HAS_YAML = False


def available_versions(plan_dir: str) -> list[str]:
    try:
        names = os.listdir(plan_dir)
    except OSError:
        return []
    versions = [n[:-4] for n in names if n.endswith(".yml") and re.match(VERSION_RE, n[:-4])]
    return sorted(versions, key=lambda v: [int(x) if x.isdigit() else x for x in re.split(r"[.+-]", v)])


class TooLarge(Exception):
    pass


def loaded_size(value, limit: int) -> int:
    """Size of ``value`` as JSON, counting every reference to a shared (aliased) node again, as
    the serialised result will; stops as soon as it passes ``limit`` (a YAML alias bomb of a few
    hundred bytes would otherwise expand to gigabytes)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            total += 2 + 2 * len(item)
            for key, sub in item.items():
                total += len(json.dumps(str(key)))
                stack.append(sub)
        elif isinstance(item, list):
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += len(json.dumps(item, default=str))
        if total > limit:
            raise TooLarge(total)
    return total


def read_limited(path: str, limit: int) -> tuple[int, str | None]:
    """The file's size, and its text unless it is over ``limit`` (read no further than that)."""
    size = os.stat(path).st_size
    if size > limit:
        return size, None
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:  # grew since stat, or not a regular file
        return max(size, len(data)), None
    return len(data), data.decode("utf-8")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(version=dict(type="str", required=True), plan_dir=dict(type="path", required=True),
                           max_bytes=dict(type="int", default=1048576)),
        supports_check_mode=True,
    )
    if not HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"))
    if not HAS_PGLAST:
        module.fail_json(msg=missing_required_lib("pglast"), exception=PGLAST_IMP_ERR)
    version, plan_dir, limit = module.params["version"], module.params["plan_dir"], module.params["max_bytes"]
    if limit < 1:
        module.fail_json(msg=f"max_bytes must be a positive number of bytes, got {limit} (default 1048576 = 1 MiB)")
    versions = available_versions(plan_dir)
    result = {"changed": False, "available_versions": versions}
    if not re.match(VERSION_RE, version or ""):
        module.fail_json(msg=f"version {version!r} is not a version number like 2.0.0; pass -e version=X.Y.Z "
                             f"(plans exist for: {', '.join(versions) or 'none'})", **result)
    path = os.path.join(plan_dir, f"{version}.yml")
    result["path"] = path
    if not os.path.isfile(path):
        module.fail_json(msg=f"no migration plan for version {version}: {path} does not exist. "
                             f"Plans exist for: {', '.join(versions) or 'none'}. Write {version}.yml from "
                             "migrations/TEMPLATE.yml or pick one of those versions.", **result)
    too_big = ("a plan describes a migration and carries no data: shorten it, or if it really must be this big "
               "raise the limit (-e plan_max_bytes=N, module option max_bytes); nothing was parsed or run")
    try:
        size, text = read_limited(path, limit)
        result["size_bytes"] = size
        if text is None:
            module.fail_json(msg=f"plan {path} is {size:,} bytes, over the limit of {limit:,} bytes; {too_big}",
                             **result)
        plan = yaml.safe_load(text)
        loaded_size(plan, limit)
    except TooLarge as exc:
        module.fail_json(msg=f"plan {path} expands to more than {limit:,} bytes when loaded (its YAML aliases "
                             f"repeat content: {exc.args[0]:,} bytes counted before stopping); {too_big}", **result)
    except UnicodeDecodeError as exc:
        module.fail_json(msg=f"plan {path} is not UTF-8 text: {exc}", **result)
    except yaml.YAMLError as exc:
        module.fail_json(msg=f"plan {path} is not valid YAML: {exc}", **result)
    except OSError as exc:
        module.fail_json(msg=f"cannot read plan {path}: {exc}", **result)
    errors = validate_plan(plan, version)
    if errors:
        module.fail_json(msg=f"plan {path} is malformed ({len(errors)} problem{'s' if len(errors) > 1 else ''}): "
                             + "; ".join(errors), errors=errors, **result)
    module.exit_json(plan=plan, **result)


if __name__ == "__main__":
    main()
