# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a directory outlives the job that writes into it, and whether it has room for a backup.

Backups must survive the run: AWX and ansible-runner delete a job's private data
directory (project/, inventory/, env/, artifacts/) when the job ends, and a tmpfs is
gone at the next reboot.  ephemeral_reason() says why a path will not survive, or None.
free_space() is the one free-space check: the backup's own preflight and the plan's estimate use it.
"""
from __future__ import annotations

import os
import shutil

from ansible.module_utils.pgmigrate import pretty_bytes as pretty

# Free space a backup needs, as a multiple of the database size (pg_backup's disk_margin, pg_preflight's
# disk_margin; the roles' backup_disk_margin and plan_disk_margin).
DEFAULT_DISK_MARGIN = 1.2
# Filesystems whose content does not survive a reboot.
VOLATILE_FS = frozenset({"tmpfs", "ramfs"})
# A private data directory as ansible-runner and AWX lay it out: env/ holding one of runner's input
# files (so a Python virtualenv named env is not one) beside one of the other directories.
RUNNER_MARKERS = ("project", "inventory", "artifacts")
RUNNER_ENV_FILES = ("extravars", "settings", "envvars", "passwords", "cmdline", "ssh_key")


def existing_ancestor(path: str) -> str:
    """The path itself or its nearest ancestor that exists (a directory not created yet)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return os.path.realpath(probe)


def _unescape_mount(field: str) -> str:
    # /proc/self/mounts escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: str, mounts_file: str = "/proc/self/mounts") -> str | None:
    """Type of the filesystem holding path (the longest mount point that contains it)."""
    target = existing_ancestor(path)
    best, fstype = "", None
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = _unescape_mount(fields[1])
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, fields[2]
    except OSError:
        return None
    return fstype


def is_private_data_dir(path: str) -> bool:
    env = os.path.join(path, "env")
    return (os.path.isdir(env) and any(os.path.exists(os.path.join(env, f)) for f in RUNNER_ENV_FILES)
            and any(os.path.isdir(os.path.join(path, m)) for m in RUNNER_MARKERS))


def runner_private_data_dir(path: str, environ: dict | None = None) -> str | None:
    """The ansible-runner / AWX private data directory that contains path, if any."""
    environ = os.environ if environ is None else environ
    target = os.path.realpath(os.path.abspath(path))
    candidates = []
    # ansible-runner exports its artifact directory <private_data_dir>/artifacts/<ident>.
    artifacts = environ.get("AWX_ISOLATED_DATA_DIR")
    if artifacts:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(artifacts))))
    probe = target
    while True:
        candidates.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for cand in candidates:
        if cand in ("", "/"):
            continue
        inside = target == cand or target.startswith(cand + "/")
        if inside and is_private_data_dir(cand):
            return cand
    return None


def ephemeral_reason(path: str, environ: dict | None = None) -> str | None:
    """Why files written under path will not outlive the job, or None when they will."""
    pdd = runner_private_data_dir(path, environ)
    if pdd:
        return (f"{path} is inside the job's private data directory {pdd} (AWX and ansible-runner delete it "
                "when the job ends)")
    fstype = filesystem_type(path)
    if fstype in VOLATILE_FS:
        return f"{path} is on a {fstype} filesystem (its content is lost at the next reboot)"
    return None


def free_space(path: str, size: int, margin: float = DEFAULT_DISK_MARGIN,
               variable: str = "backup_disk_margin") -> dict:
    """Whether the filesystem of ``path`` (or of its nearest existing ancestor) has ``size`` x ``margin`` bytes
    free for an unprivileged writer.

    {'backup_dir', 'measured_at', 'free_bytes', 'free', 'needed_bytes', 'disk_margin', 'enough', 'problem'}:
    ``problem`` (None when enough) names the path, the bytes free and needed, the margin and ``variable``, the
    setting to change."""
    if margin <= 0:
        raise ValueError(f"the disk margin must be > 0 (got {margin}); set {variable}")
    measured_at = existing_ancestor(path)
    free = shutil.disk_usage(measured_at).free
    needed = int(size * margin)
    facts = {"backup_dir": path, "measured_at": measured_at, "free_bytes": free, "free": pretty(free),
             "needed_bytes": needed, "disk_margin": margin, "enough": free >= needed, "problem": None}
    if free < needed:
        facts["problem"] = (f"{path} (on {measured_at}) has {pretty(free)} ({free} bytes) free, the backup needs "
                            f"{pretty(needed)} ({needed} bytes: {pretty(size)} x {margin}); free space there, "
                            f"point pgmigrate_backup_dir at a larger disk, or change {variable} (now {margin})")
    return facts
