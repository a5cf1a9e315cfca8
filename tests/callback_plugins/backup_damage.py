# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TEST ONLY: damage this run's backup the moment pg_backup has written it.

Never part of the production roles: tests/test_backup_flow.py enables it from outside,
for one ansible-playbook run of the real migrate.yml, with

    ANSIBLE_CALLBACK_PLUGINS=tests/callback_plugins
    ANSIBLE_CALLBACKS_ENABLED=...,backup_damage
    PGMIGRATE_TEST_BACKUP_FAULT=truncate|flip_byte|zero|manifest_counts|missing

Callbacks run in the controller's main process, and the linear strategy waits for
every host's result of a task (and so for this callback) before it starts the next
task: the damage is done after the dump and before the verification, every time.
"""
from __future__ import annotations

import json
import os
import shutil

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r'''
name: backup_damage
type: aggregate
short_description: TEST ONLY - damage the backup pg_backup just wrote
description:
  - Reads the fault kind from the environment variable PGMIGRATE_TEST_BACKUP_FAULT and damages the
    backup (or its manifest) named by the first successful, non-reused pg_backup dump of the run.
requirements:
  - enabled in ANSIBLE_CALLBACKS_ENABLED by a test, never by a playbook or an inventory
'''

FAULTS = ("truncate", "flip_byte", "zero", "manifest_counts", "missing")


def largest_file(path: str) -> str:
    if not os.path.isdir(path):
        return path
    files = [os.path.join(root, name) for root, _dirs, names in os.walk(path) for name in names]
    return max(files, key=os.path.getsize)


def damage(kind: str, backup: str, manifest: str) -> str:
    """Damage the backup the way a bad disk, a full disk or a careless hand would; say where."""
    target = largest_file(backup)
    if kind == "truncate":
        os.truncate(target, os.path.getsize(target) // 2)
    elif kind == "flip_byte":
        with open(target, "r+b") as fh:
            fh.seek(os.path.getsize(target) // 2)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0xFF]))
    elif kind == "zero":
        os.truncate(target, 0)
    elif kind == "missing":
        if os.path.isdir(backup):
            shutil.rmtree(backup)
        else:
            os.unlink(backup)
        target = backup
    elif kind == "manifest_counts":
        with open(manifest, encoding="utf-8") as fh:
            data = json.load(fh)
        name = max(data["tables"], key=lambda t: data["tables"][t]["rows"])
        data["tables"][name]["rows"] += 1
        with open(manifest, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        target = manifest
    else:
        raise ValueError(f"PGMIGRATE_TEST_BACKUP_FAULT={kind!r} is not one of {FAULTS}")
    return target


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "backup_damage"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.kind = os.environ.get("PGMIGRATE_TEST_BACKUP_FAULT", "")
        self.done = False

    def v2_runner_on_ok(self, result) -> None:
        if not self.kind or self.done or result._task.action.split(".")[-1] != "pg_backup":
            return
        res = result._result
        # Only a real dump: not the preflight, not the retention, not check mode (no manifest), not a reuse.
        if res.get("reused") or not res.get("manifest") or not res.get("backup_path"):
            return
        target = damage(self.kind, res["backup_path"], res["manifest_path"])
        self.done = True
        self._display.display(f"TEST FAULT {self.kind} injected into {target}")
