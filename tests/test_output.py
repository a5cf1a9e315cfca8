"""What an operator reads: the timing recap of ansible.cfg (no database needed)."""
from __future__ import annotations

import json
import re

from conftest import ROOT, run_playbook


def test_timing_recap_lists_the_slowest_tasks_without_noise_for_skipped_ones(tmp_path):
    tasks = [{"name": f"Sleep {d} s", "ansible.builtin.command": {"argv": ["sleep", str(d)]}, "changed_when": False}
             for d in (0, 0.6, 0.3)]
    tasks += [{"name": f"Skipped task {i}", "ansible.builtin.debug": {"msg": "never"}, "when": False}
              for i in range(20)]
    play = tmp_path / "play.yml"
    play.write_text(json.dumps([{"name": "Timing", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    res = run_playbook(play, tmp_path, inventory=ROOT / "tests" / "inventory.yml")
    assert res.rc == 0, res.output[-2000:]
    before_recap, _, recap = res.stdout.partition("TASKS RECAP")
    # No timestamp line per task (it printed one for every skipped task).
    assert not re.search(r"\(\d+:\d\d:\d\d\.\d+\)\s+\d+:\d\d:\d\d\.\d+ \*+", before_recap)
    timed = re.findall(r"^(Sleep [\d.]+ s|Skipped task \d+) -+ ([\d.]+)s$", recap, re.MULTILINE)
    seconds = [float(t) for _, t in timed]
    assert seconds == sorted(seconds, reverse=True)  # the slowest first (sort_order descending)
    assert len(timed) == 15  # task_output_limit (23 tasks ran or were skipped)
