# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared backup logic of pg_backup, pg_backup_verify and pg_backup_restore.

- Table fingerprints: an exact row count and a content checksum per table, computed the
  same way on the source (inside the transaction whose snapshot pg_dump uses) and on a
  restored copy.  The checksum is the sum of a 64-bit hash of each row's text, which is
  order independent (no sort, one sequential scan) and changes when any row changes.
  Row text depends on output settings, so every fingerprinting session pins them.
- The manifest: JSON beside the backup, written 0600 and replaced atomically.
- File checksums (sha256) of a custom-format file or of every file of a directory dump.
- The streamed proof (StreamedProof): the proof's restore fed from the dump file while pg_dump
  writes it, so the backup is proven in about the time of the dump alone.
- pg_dump / pg_restore discovery and version parsing; argv never carries a password
  (libpq_env passes it as PGPASSWORD).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone

from ansible.module_utils.pgmigrate import primary_key_columns, resolve_table, sql

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
CHECKSUM_METHOD = "sum(hashtextextended(row::text, 0)) with TimeZone=UTC, DateStyle=ISO/YMD, " \
                  "IntervalStyle=postgres, extra_float_digits=3, bytea_output=hex"
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")

# Pinned output settings: the text of a row (timestamps, floats, bytea) must not depend on
# the session that reads it.  Constant statements, nothing interpolated.
_PIN_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
)


class BackupError(Exception):
    """A problem with a backup, its manifest or a tool; the message says what to do."""


# ---------------------------------------------------------------------------------
# Tables and fingerprints
# ---------------------------------------------------------------------------------
def pin_output_settings(cur) -> None:
    for stmt in _PIN_SETTINGS:
        cur.execute(stmt)


def list_tables(cur, exclude_schemas: list[str]) -> list[tuple[str, str]]:
    """Ordinary tables whose data pg_dump dumps: (schema, table), sorted.

    Leaves out system schemas, temp/toast schemas, the excluded schemas (the tool's own
    ledger) and tables that belong to an extension."""
    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND NOT (n.nspname = ANY(%s)) AND n.nspname NOT LIKE 'pg\\_toast%%' "
        "AND n.nspname NOT LIKE 'pg\\_temp\\_%%' "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
        "AND d.deptype = 'e') ORDER BY n.nspname, c.relname",
        (list(SYSTEM_SCHEMAS) + list(exclude_schemas),))
    return [(r[0], r[1]) for r in cur.fetchall()]


def table_fingerprint(cur, schema: str, table: str) -> dict:
    cur.execute(sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(ROW(r.*)::text, 0)), 0)::text "
                        "FROM {} AS r").format(sql.Identifier(schema, table)))
    rows, checksum = cur.fetchone()
    return {"rows": int(rows), "checksum": checksum}


def fingerprint_tables(cur, tables: list[tuple[str, str]]) -> dict:
    """{'schema.table': {'rows': N, 'checksum': '...'}} in the cursor's current transaction."""
    pin_output_settings(cur)
    return {f"{s}.{t}": table_fingerprint(cur, s, t) for s, t in tables}


def database_fingerprints(conn, manifest: dict, table_by_table: bool = False) -> dict:
    """fingerprint_tables of every table a restored copy holds (the manifest's excluded schemas left out), read in
    one read-only transaction of ``conn``; with ``table_by_table``, each table in its own short one, for a copy
    nobody writes to whose indexes and constraints are being built meanwhile (an ALTER TABLE ... ADD PRIMARY KEY
    then waits for one table's read, not for all of them)."""
    conn.set_session(readonly=True)
    with conn.cursor() as cur:
        tables = list_tables(cur, manifest.get("excluded_schemas", []))
        if not table_by_table:
            found = fingerprint_tables(cur, tables)
    conn.rollback()
    if table_by_table:
        found = {}
        for schema, table in tables:
            with conn.cursor() as cur:
                found.update(fingerprint_tables(cur, [(schema, table)]))
            conn.rollback()
    return found


def create_database_like(cur, name: str, manifest: dict) -> None:
    """CREATE DATABASE name from template0 with the backed-up database's encoding and collation (when its manifest
    records them); on an autocommit connection."""
    settings = manifest.get("database_settings") or {}
    stmt = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    params: list = []
    if settings.get("encoding"):
        stmt += sql.SQL(" ENCODING %s LC_COLLATE %s LC_CTYPE %s")
        params = [settings["encoding"], settings["collate"], settings["ctype"]]
    cur.execute(stmt, params)


# Columns whose value says when a row was written: rows newer than the backup's snapshot are
# rows a restore would discard (pgmigrate_rollback.py).  Only these names, never guessed from types.
WRITE_TIME_COLUMNS = ("created_at", "updated_at", "modified_at", "inserted_at", "last_modified", "changed_at")


def table_watermarks(cur, tables: list[tuple[str, str]]) -> dict:
    """What the backup's snapshot held, per table, to find rows written after it:
    {'schema.table': {'columns': [...], 'key': 'id' | None, 'max_key': N | None,
    'write_time_columns': [...]}}.  ``key`` is a single-column integer primary key."""
    out = {}
    for schema, table in tables:
        oid = resolve_table(cur, table, schema=schema)["oid"]
        cur.execute("SELECT a.attname, a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) "
                    "FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
                    "ORDER BY a.attnum", (oid,))
        integer = dict(cur.fetchall())
        columns = list(integer)
        primary_key = primary_key_columns(cur, oid)
        key = primary_key[0] if len(primary_key) == 1 and integer[primary_key[0]] else None
        max_key = None
        if key:
            cur.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(key), sql.Identifier(schema, table)))
            max_key = cur.fetchone()[0]
        cur.execute("SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 "
                    "AND NOT a.attisdropped AND a.attname = ANY(%s) "
                    "AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype) ORDER BY a.attnum",
                    (oid, list(WRITE_TIME_COLUMNS)))
        out[f"{schema}.{table}"] = {"columns": columns, "key": key,
                                    "max_key": int(max_key) if max_key is not None else None,
                                    "write_time_columns": [r[0] for r in cur.fetchall()]}
    return out


def snapshot_time(cur) -> str:
    """The transaction's start (its snapshot, in REPEATABLE READ) as ISO 8601 UTC."""
    cur.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')")
    return cur.fetchone()[0]


def compare_fingerprints(expected: dict, actual: dict, only_counts: bool = False) -> list[str]:
    """Differences between the manifest's tables and a database's, first table first."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if got is None:
            problems.append(f"table {name}: in the manifest ({want['rows']} rows) but missing after restore")
        elif want is None:
            problems.append(f"table {name}: present after restore ({got['rows']} rows) but not in the manifest")
        elif want["rows"] != got["rows"]:
            problems.append(f"table {name}: the manifest says {want['rows']} rows, the restore has {got['rows']}")
        elif not only_counts and str(want["checksum"]) != str(got["checksum"]):
            problems.append(f"table {name}: {got['rows']} rows as expected but the content checksum differs "
                            f"(manifest {want['checksum']}, restore {got['checksum']})")
    return problems


def restore_problem(expected: dict, actual: dict) -> str | None:
    """The first difference between the manifest's tables and a restored copy's, with how many more; None when
    every table's count and checksum match."""
    problems = compare_fingerprints(expected, actual)
    if not problems:
        return None
    return problems[0] + (f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else "")


def server_version(cur) -> dict:
    cur.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int")
    text, num = cur.fetchone()
    return {"version": text.split()[0], "version_num": num, "major": num // 10000 if num >= 100000 else num // 100}


# ---------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def tool_version(path: str) -> dict:
    """{'path', 'version', 'major'} of pg_dump / pg_restore, or BackupError."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        raise BackupError(f"cannot run {path}: {exc}; install the PostgreSQL client tools "
                          "(e.g. apt-get install postgresql-client-15) or set the tool's path") from exc
    match = _VERSION_RE.search(out.stdout)
    if out.returncode != 0 or not match:
        raise BackupError(f"{path} --version did not report a PostgreSQL version "
                          f"(rc={out.returncode}, output {out.stdout.strip()!r})")
    version = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return {"path": path, "version": version, "major": int(match.group(1))}


def find_tool(module, name: str, explicit: str | None) -> str:
    if explicit:
        if os.path.sep in explicit:
            if not os.access(explicit, os.X_OK):
                module.fail_json(msg=f"{name} path {explicit} is not an executable file; fix the path or leave "
                                     "it unset to use the one on PATH")
            return explicit
        found = shutil.which(explicit)
        if found:
            return found
    found = shutil.which(name)
    if not found:
        module.fail_json(msg=f"{name} was not found on PATH; install the PostgreSQL client tools "
                             "(apt-get install postgresql-client) or give its path")
    return found


def run_tool(argv: list[str], env: dict, timeout: int | None = None) -> subprocess.CompletedProcess:
    """Run a client tool; its password comes from env (PGPASSWORD), never argv."""
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=timeout)


def tail(text: str, lines: int = 8) -> str:
    return " | ".join(line for line in (text or "").strip().splitlines()[-lines:] if line)


# ---------------------------------------------------------------------------------
# Files, names and the manifest
# ---------------------------------------------------------------------------------
def utc_stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


_SAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_part(text: str) -> str:
    return _SAFE_RE.sub("_", str(text)) or "_"


def backup_name(database: str, version: str, run_id: int | None, stamp: str, fmt: str) -> str:
    run = f"run{run_id}" if run_id is not None else "norun"
    ext = "dump" if fmt == "custom" else "dir"
    return f"{safe_part(database)}-{safe_part(version)}-{run}-{stamp}.{ext}"


def manifest_path(backup_path: str) -> str:
    return backup_path.rstrip(os.sep) + MANIFEST_SUFFIX


def ensure_private_dir(path: str) -> bool:
    """Create the backup directory 0700 (parents too); tighten it when it exists. Returns True if changed."""
    changed = False
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        changed = True
    if os.stat(path).st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
        changed = True
    return changed


def drop_database(cur, name: str) -> None:
    """DROP DATABASE IF EXISTS, ending its sessions (WITH (FORCE)); servers before 13 have no FORCE.  On an
    autocommit connection (DROP DATABASE needs one); raises when the database cannot be dropped."""
    try:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except Exception:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(path: str) -> dict:
    """{'size_bytes', 'sha256', 'files': {relative path: sha256}} of a dump file or directory."""
    if os.path.isdir(path):
        files = {}
        size = 0
        for root, _dirs, names in os.walk(path):
            for name in names:
                full = os.path.join(root, name)
                files[os.path.relpath(full, path)] = _sha256_file(full)
                size += os.path.getsize(full)
        overall = hashlib.sha256("".join(f"{k}:{files[k]}\n" for k in sorted(files)).encode()).hexdigest()
        return {"size_bytes": size, "sha256": overall, "files": dict(sorted(files.items()))}
    digest = _sha256_file(path)
    return {"size_bytes": os.path.getsize(path), "sha256": digest, "files": {os.path.basename(path): digest}}


def set_private_modes(path: str) -> None:
    if os.path.isdir(path):
        os.chmod(path, 0o700)
        for root, dirs, names in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
            for n in names:
                os.chmod(os.path.join(root, n), 0o600)
    else:
        os.chmod(path, 0o600)


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def write_manifest(path: str, manifest: dict) -> None:
    """Write the manifest 0600, atomically (a reader never sees half a manifest)."""
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def read_manifest(path: str) -> dict:
    if not os.path.exists(path):
        raise BackupError(f"manifest {path} does not exist; a backup without its manifest cannot be verified "
                          "or restored (take a new backup)")
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise BackupError(f"manifest {path} is not readable JSON ({exc}); take a new backup") from exc
    missing = [k for k in ("database", "tables", "sha256", "size_bytes", "format") if k not in manifest]
    if not isinstance(manifest, dict) or missing:
        raise BackupError(f"manifest {path} lacks {', '.join(missing)}; it was not written by pg_backup")
    return manifest


def check_files(backup_path: str, manifest: dict) -> dict:
    """The file(s) exist, are not empty, and match the manifest's size and sha256; else BackupError."""
    if not os.path.lexists(backup_path):
        raise BackupError(f"backup file {backup_path} is missing; it was moved or deleted after the dump "
                          "(take a new backup)")
    if manifest["format"] == "directory" and not os.path.isdir(backup_path):
        raise BackupError(f"backup {backup_path} should be a directory-format dump but is not a directory")
    if manifest["format"] == "custom" and not os.path.isfile(backup_path):
        raise BackupError(f"backup {backup_path} should be a custom-format file but is not a regular file")
    digests = file_digests(backup_path)
    if digests["size_bytes"] == 0:
        raise BackupError(f"backup file {backup_path} is empty (0 bytes); the manifest says "
                          f"{manifest['size_bytes']} bytes: the dump was lost or overwritten (take a new backup)")
    if digests["size_bytes"] != manifest["size_bytes"]:
        raise BackupError(f"backup file {backup_path} is {digests['size_bytes']} bytes but the manifest says "
                          f"{manifest['size_bytes']}: the file is truncated or was changed (take a new backup)")
    if digests["sha256"] != manifest["sha256"]:
        changed = [k for k, v in digests["files"].items() if manifest.get("files", {}).get(k) != v]
        raise BackupError(f"sha256 of backup {backup_path} is {digests['sha256']} but the manifest says "
                          f"{manifest['sha256']}: the content is corrupted (differs in {', '.join(changed)}); "
                          "take a new backup")
    return digests


def toc_table_data(listing: str) -> set[str]:
    """'schema.table' of every TABLE DATA entry of a `pg_restore --list` output."""
    found = set()
    for line in listing.splitlines():
        if line.startswith(";") or " TABLE DATA " not in line:
            continue
        rest = line.split(" TABLE DATA ", 1)[1].split()
        if len(rest) >= 2:
            found.add(f"{rest[0]}.{rest[1]}")
    return found


def scratch_name(prefix: str, run_id: int | None) -> str:
    """A database name that cannot clash: prefix, run id, random; within 63 bytes."""
    run = f"r{run_id}" if run_id is not None else "rx"
    return f"{safe_part(prefix)[:40]}_{run}_{secrets.token_hex(5)}"[:63].lower()


def find_run_backups(backup_dir: str, database: str) -> list[dict]:
    """Manifests in backup_dir that belong to ``database``: [{'manifest_path', 'manifest'}], newest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(backup_dir), "*" + MANIFEST_SUFFIX)):
        try:
            manifest = read_manifest(path)
        except BackupError:
            continue
        if manifest.get("database") == database:
            found.append({"manifest_path": path, "manifest": manifest})
    found.sort(key=lambda m: (m["manifest"].get("created_at") or "", m["manifest_path"]), reverse=True)
    return found


def timed(durations: dict, key: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), its seconds recorded as durations[key] (rounded to ms) also when it raises."""
    start = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        durations[key] = round(time.monotonic() - start, 3)


# ---------------------------------------------------------------------------------
# The proof: its binding to a manifest, the table of contents, the streamed restore
# ---------------------------------------------------------------------------------
def proof_binding(manifest: dict) -> str:
    """What a proof proved: the backup's sha256 and size and the manifest's tables (counts, checksums).
    A manifest edited after its proof no longer matches, and the next verification proves it again."""
    body = {"sha256": manifest.get("sha256"), "size_bytes": manifest.get("size_bytes"),
            "tables": manifest.get("tables"), "format": manifest.get("format")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def toc_problem(pg_restore: str, backup_path: str, tables: dict, env: dict) -> tuple[str | None, int]:
    """`pg_restore --list` of the backup: (the problem, or None when every table of the manifest has its data in the
    table of contents; the number of entries)."""
    proc = run_tool([pg_restore, "--list", backup_path], env)
    if proc.returncode != 0:
        return (f"pg_restore --list cannot read the table of contents of {backup_path}: {tail(proc.stderr)}", 0)
    missing = sorted(set(tables) - toc_table_data(proc.stdout))
    if missing:
        return (f"the table of contents of {backup_path} has no data for table {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), 0)
    return None, len(proc.stdout.splitlines())


class StreamedProof:
    """The proof's restore fed from a custom-format dump while pg_dump writes it.

    pg_dump writes its file as usual (with the data offsets it adds at the end).  A thread reads
    the file as it grows and pipes it to a ``pg_restore --section=pre-data --section=data`` into a
    new scratch database; the table of contents at the head of the file was written before any
    data, without offsets, so pg_restore reads the stream in order, as from a pipe.  When pg_dump
    has exited, the rest of the file goes to that pg_restore.  Then, side by side: the post-data
    section (indexes, constraints, triggers) is restored from the complete file with ``--jobs``
    parallel workers, and every table's count and checksum is read from the scratch database (a
    table at a time, so an index build never waits long for the read).  Both pg_restore exit
    statuses, then the tables against the manifest's (taken in the dump's snapshot), are the proof."""

    CHUNK = 1 << 20

    def __init__(self, admin, pg_restore: str, env_for, scratch: str, settings: dict, jobs: int = 2) -> None:
        self.admin = admin  # an autocommit connection to create and drop the scratch database
        self.pg_restore = pg_restore
        self.env_for = env_for  # dbname -> libpq environment
        self.scratch = scratch
        self.settings = settings
        self.jobs = max(1, jobs)
        self.path: str | None = None
        self.proc: subprocess.Popen | None = None
        self.post: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None
        self.dump_done = threading.Event()
        self.feed_error: str | None = None
        self.fed_bytes = 0
        self.created = False
        self.started = 0.0
        self.data_s: float | None = None  # pre-data and data restored (from the start)
        self.restore_s: float | None = None  # the whole restore, post-data included (from the start)
        self.tables_s: float | None = None  # reading every table's count and checksum
        self.restored: dict | None = None  # the scratch database's tables: {'schema.table': {rows, checksum}}
        self.stderr = None
        self.argv: list[str] = []
        self.post_argv: list[str] = []

    def _restore_argv(self, *extra: str) -> list[str]:
        return [self.pg_restore, "--no-password", "--exit-on-error", "--no-owner", "--no-privileges", *extra,
                f"--dbname={self.scratch}"]

    def begin(self, path: str) -> None:
        """Create the scratch database and start pg_restore and the feeding thread (pg_dump starts writing path)."""
        with self.admin.cursor() as cur:
            try:
                create_database_like(cur, self.scratch, {"database_settings": self.settings})
            except Exception as exc:
                raise BackupError(f"cannot create the scratch database {self.scratch}: {str(exc).strip()}; the "
                                  "login role needs CREATEDB (ALTER ROLE ... CREATEDB)") from exc
        self.created = True
        self.path = path
        self.argv = self._restore_argv("--section=pre-data", "--section=data")
        self.post_argv = self._restore_argv("--section=post-data", f"--jobs={self.jobs}") + [path]
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 -- closed in finish() or kill()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, env=self.env_for(self.scratch))
        self.thread = threading.Thread(target=self._feed, name="streamed-proof", daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        try:
            fh = None
            while fh is None:
                try:
                    fh = open(self.path, "rb")  # noqa: SIM115 -- closed below
                except FileNotFoundError:
                    if self.dump_done.is_set():
                        self.feed_error = f"pg_dump never created {self.path}"
                        return
                    time.sleep(0.01)
            with fh:
                ended = False
                while True:
                    chunk = fh.read(self.CHUNK)
                    if chunk:
                        self.proc.stdin.write(chunk)
                        self.fed_bytes += len(chunk)
                        continue
                    if ended:
                        break
                    if self.dump_done.is_set():
                        ended = True  # one more read: the bytes written before pg_dump exited
                        continue
                    time.sleep(0.005)
        except OSError as exc:  # pg_restore stopped reading (it failed): its exit status says why
            self.feed_error = f"feeding pg_restore stopped: {exc}"
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _errors(self) -> str:
        self.stderr.seek(0)
        errors = self.stderr.read()
        self.stderr.seek(0)
        self.stderr.truncate()
        return errors

    def _wait(self, proc: subprocess.Popen, timeout: float | None) -> int | None:
        """proc's exit status, or None (everything killed) when it did not end within timeout."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def finish(self, dump_ok: bool, read_tables=None, timeout: float | None = None) -> str | None:
        """After pg_dump has exited: the rest of the file to pg_restore, wait for it; then the post-data section
        restored while ``read_tables()`` (-> the scratch database's fingerprints) runs; the problem, or None."""
        self.dump_done.set()
        if not dump_ok:
            self.kill()
            return "pg_dump failed"
        self.thread.join(timeout)
        rc = self._wait(self.proc, timeout)
        if rc is None:
            return f"pg_restore into the scratch database did not finish within {timeout} s"
        self.data_s = round(time.monotonic() - self.started, 3)
        if rc != 0:
            problem = f"pg_restore into the scratch database failed (rc={rc}): {tail(self._errors())}"
            self.kill()
            return problem
        if self.feed_error:
            self.kill()
            return self.feed_error
        # The file is complete (pg_dump has exited): the post-data section in parallel, from the file.
        self.post = subprocess.Popen(self.post_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, env=self.env_for(self.scratch))
        read_problem = None
        if read_tables is not None:
            t0 = time.monotonic()
            try:
                self.restored = read_tables()
            except Exception as exc:  # the post-data restore is still waited for below
                read_problem = f"reading the restored tables failed: {str(exc).strip()}"
            self.tables_s = round(time.monotonic() - t0, 3)
        post_rc = self._wait(self.post, timeout)
        if post_rc is None:
            return f"pg_restore of the post-data section did not finish within {timeout} s"
        self.restore_s = round(time.monotonic() - self.started, 3)
        errors = self._errors()
        self.stderr.close()
        if post_rc != 0:
            return (f"pg_restore of the post-data section (indexes, constraints, triggers) into the scratch database "
                    f"failed (rc={post_rc}): {tail(errors)}")
        return read_problem

    def kill(self) -> None:
        self.dump_done.set()
        for proc in (self.proc, self.post):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.thread is not None:
            self.thread.join(10)
        if self.stderr is not None and not self.stderr.closed:
            self.stderr.close()

    def drop(self) -> bool:
        """Drop the scratch database (False, never an exception, when it cannot be)."""
        if not self.created:
            return True
        try:
            with self.admin.cursor() as cur:
                drop_database(cur, self.scratch)
        except Exception:
            return False
        self.created = False
        return True

