# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who is running this migration: the ansible-playbook process that owns a lock.

A module runs in a short-lived process, so the lock names the long-lived process
above it: the outermost ``ansible-playbook`` (or ``ansible-runner``) ancestor, with
its start time so that a recycled PID is not mistaken for the owner."""
from __future__ import annotations

import os
import socket

DRIVER_NAMES = ("ansible-playbook", "ansible-runner", "ansible")


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _parent(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def _is_driver(pid: int) -> bool:
    cmdline = _read(f"/proc/{pid}/cmdline") or ""
    args = [a for a in cmdline.split("\0") if a][:3]
    return any(os.path.basename(a) in DRIVER_NAMES for a in args)


def find_owner_pid() -> int | None:
    """The outermost ansible driver process above this one (None when not found)."""
    pid, owner = os.getpid(), None
    for _ in range(64):
        parent = _parent(pid)
        if not parent or parent <= 1:
            break
        if _is_driver(parent):
            owner = parent
        pid = parent
    return owner


def pid_alive(pid: int, started: str | None) -> bool:
    if not pid:
        return False
    current = process_start(pid)
    if current is None:
        return False
    return started is None or current == started


def hostname() -> str:
    return socket.gethostname()
