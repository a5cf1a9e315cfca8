# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of the migration_plan module: run it, and keep a successful result (the
whole plan, kept for the later tasks) out of the -v output, the way Ansible's own
gather_facts keeps the facts out of it.  A failure is shown in full, as always."""
from __future__ import annotations

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="migration_plan", task_vars=task_vars))
        if not result.get("failed"):
            result["_ansible_verbose_override"] = True
        return result
