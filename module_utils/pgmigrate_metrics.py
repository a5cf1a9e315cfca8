# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small Prometheus text-format (0.0.4) writer.

    metrics = [
        {"name": "pgmigrate_backfill_rows_done", "help": "Rows the backfill has processed.", "type": "gauge",
         "samples": [({"backfill": "predictions_accuracy", "table": "predictions"}, 12345)]},
    ]
    text = render(metrics)
    write_textfile("/var/lib/node_exporter/textfile/pgmigrate_backfill.prom", metrics)

``write_textfile`` writes a temporary file in the same directory and renames it over
the target, so the node_exporter textfile collector never reads half a file.
No third-party library: modules must run with only Ansible and psycopg2.
"""
from __future__ import annotations

import fcntl
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping

METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TYPES = ("gauge", "counter", "untyped", "summary", "histogram")


def escape_label_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int | bool | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def format_labels(labels: Mapping[str, object] | None) -> str:
    if not labels:
        return ""
    parts = []
    for name, value in labels.items():
        if not LABEL_NAME_RE.match(name):
            raise ValueError(f"invalid Prometheus label name {name!r}")
        parts.append(f'{name}="{escape_label_value(value)}"')
    return "{" + ",".join(parts) + "}"


def render(metrics: Iterable[Mapping]) -> str:
    """Text exposition of ``metrics``: each a mapping with name, help, type and samples
    (a list of (labels dict, value) pairs, or a single number)."""
    lines: list[str] = []
    for metric in metrics:
        name = metric["name"]
        if not METRIC_NAME_RE.match(name):
            raise ValueError(f"invalid Prometheus metric name {name!r}")
        kind = metric.get("type", "gauge")
        if kind not in TYPES:
            raise ValueError(f"metric {name}: type {kind!r} is not one of {TYPES}")
        if metric.get("help"):
            lines.append(f"# HELP {name} {escape_help(metric['help'])}")
        lines.append(f"# TYPE {name} {kind}")
        samples = metric.get("samples", ())
        if not isinstance(samples, (list, tuple)):
            samples = [({}, samples)]
        for labels, value in samples:
            lines.append(f"{name}{format_labels(labels)} {format_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def write_textfile(path: str, metrics: Iterable[Mapping], mode: int = 0o644) -> None:
    """Write ``render(metrics)`` to ``path`` atomically (temporary file + rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    text = render(metrics)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".prom", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}


def parse_samples(text: str) -> list[tuple[str, dict, str]]:
    """(name, labels, value text) of every sample line of a text exposition (comments skipped)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        labels = {k: re.sub(r'\\[\\n"]', lambda m: _UNESCAPE[m.group(0)], v)
                  for k, v in _LABEL_RE.findall(match.group(2) or "")}
        samples.append((match.group(1), labels, match.group(3)))
    return samples


def merge_textfile(path: str, metrics: list[dict], owner: Mapping[str, object], mode: int = 0o644) -> None:
    """Replace, in the textfile at ``path``, the samples of ``metrics`` whose labels match ``owner``
    (for example one backfill of one database) and keep every other series, so that several
    writers (the backfills of a plan, the databases of a fleet) share one file.  Writers are
    serialised with a lock file beside it; the file itself is replaced atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "." + os.path.basename(path) + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as fh:
                existing = parse_samples(fh.read())
        except OSError:
            existing = []
        mine = {str(k): str(v) for k, v in owner.items()}
        merged = []
        for metric in metrics:
            kept = [(labels, float(value)) for name, labels, value in existing
                    if name == metric["name"] and any(labels.get(k) != v for k, v in mine.items())]
            merged.append(dict(metric, samples=kept + list(metric["samples"])))
        write_textfile(path, merged, mode)
