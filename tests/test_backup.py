"""pg_backup, pg_backup_verify and pg_backup_restore against a real PostgreSQL, through real
ansible-playbook runs: a backup whose manifest matches the source, proofs that fail on every
kind of damage, the preflight refusals, retention, and passwords kept out of argv and output."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import conn_args, run_module
from proc_watch import CmdlineWatcher

VERSION = "2.0.0"
RUN_ID = 4242
PIN = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
       "SET extra_float_digits = 3; SET bytea_output = 'hex'")


def query(pg, db, stmt, params=()):
    conn = pg.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(stmt, params or None)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def source_tables(pg, db) -> dict:
    """Exact counts and checksums of the source, computed here independently of the modules."""
    conn = pg.connect(db)
    out = {}
    try:
        with conn.cursor() as cur:
            cur.execute(PIN)
            cur.execute("SELECT table_schema, table_name FROM information_schema.tables "
                        "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN "
                        "('pg_catalog', 'information_schema', 'migration_ops')")
            for schema, table in cur.fetchall():
                cur.execute(f'SELECT count(*), coalesce(sum(hashtextextended(ROW(r.*)::text, 0)), 0)::text '
                            f'FROM "{schema}"."{table}" AS r')
                rows, checksum = cur.fetchone()
                out[f"{schema}.{table}"] = {"rows": rows, "checksum": checksum}
    finally:
        conn.close()
    return out


def scratch_databases(pg, prefix="pgmigrate_verify") -> list[str]:
    conn = pg.admin_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",))
        names = [r[0] for r in cur.fetchall()]
    conn.close()
    return names


@pytest.fixture(scope="module")
def backed_up(pg, reference_template, tmp_path_factory):
    """One backup of a copy of the reference database (not yet verified) and a pristine manifest copy."""
    db = pg.create_database(template=reference_template)
    work = tmp_path_factory.mktemp("backup")
    backup_dir = work / "backups"
    res = run_module("pg_backup", {**conn_args(pg, db), "backup_dir": str(backup_dir), "version": VERSION,
                                   "run_id": RUN_ID}, work)
    assert res.get("failed") is not True, res.get("msg")
    pristine = work / "pristine.manifest.json"
    shutil.copy(res["manifest_path"], pristine)
    yield {"db": db, "dir": backup_dir, "res": res, "pristine": pristine, "work": work}
    pg.drop_database(db)


def copy_backup(backed_up, dest: Path) -> tuple[Path, Path]:
    """A copy of the unverified backup and its manifest in dest (the manifest points at the copy)."""
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(backed_up["res"]["backup_path"])
    target = dest / src.name
    shutil.copy(src, target)
    manifest = json.loads(backed_up["pristine"].read_text())
    manifest["backup_path"] = str(target)
    mpath = Path(str(target) + ".manifest.json")
    mpath.write_text(json.dumps(manifest))
    return target, mpath


def test_backup_is_private_named_and_matches_the_source(pg, backed_up):
    res = backed_up["res"]
    path = Path(res["backup_path"])
    assert res["changed"] is True and res["reused"] is False
    assert re.fullmatch(rf"{backed_up['db']}-{re.escape(VERSION)}-run{RUN_ID}-\d{{8}}T\d{{6}}Z\.dump", path.name)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Path(res["manifest_path"]).stat().st_mode & 0o777 == 0o600
    assert backed_up["dir"].stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in backed_up["dir"].iterdir()) == sorted([path.name, path.name + ".manifest.json"])
    manifest = json.loads(Path(res["manifest_path"]).read_text())
    assert manifest["database"] == backed_up["db"] and manifest["run_id"] == RUN_ID
    assert manifest["server"]["major"] == 15 and manifest["pg_dump"]["major"] >= 15
    assert manifest["alembic_revision"] == "v1_0_0"
    assert manifest["size_bytes"] == path.stat().st_size
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["verified"] is False
    source = source_tables(pg, backed_up["db"])
    assert set(source) == {"public.teams", "public.matches", "public.predictions", "public.alembic_version"}
    for table, want in source.items():
        assert manifest["tables"][table] == want, table
    assert manifest["tables"]["public.predictions"]["rows"] == 3000


def test_verify_proves_the_backup_and_drops_the_scratch_database(pg, backed_up, tmp_path):
    path, _ = copy_backup(backed_up, tmp_path / "ok")
    args = {**conn_args(pg, backed_up["db"]), "backup_path": str(path), "run_id": RUN_ID}
    res = run_module("pg_backup_verify", args, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert res["verified"] is True and res["changed"] is True
    assert [s["step"] for s in res["steps"]] == ["files", "toc", "restore", "tables"]
    assert all(t["match"] for t in res["tables"].values()) and len(res["tables"]) == 4
    assert res["scratch_dropped"] is True and res["scratch_db"].startswith(f"pgmigrate_verify_r{RUN_ID}_")
    assert scratch_databases(pg) == []
    manifest = json.loads(Path(str(path) + ".manifest.json").read_text())
    assert manifest["verified"] is True and manifest["verification"]["ok"] is True
    again = run_module("pg_backup_verify", args, tmp_path)
    assert again["verified"] is True and again["changed"] is False and "not restored again" in again["msg"]
    # The gate wants this run's backup, not another run's.
    other = run_module("pg_backup_verify", {**args, "run_id": RUN_ID + 1}, tmp_path)
    assert other.get("failed") is True and f"belongs to run #{RUN_ID}" in other["msg"]


def damage(kind: str, path: Path, mpath: Path) -> None:
    if kind == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif kind == "flip_byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "zero":
        os.truncate(path, 0)
    elif kind == "missing":
        path.unlink()
    elif kind == "manifest_counts":
        manifest = json.loads(mpath.read_text())
        manifest["tables"]["public.predictions"]["rows"] += 1
        mpath.write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind,expected", [
    ("truncate", "the file is truncated"),
    ("flip_byte", "sha256 of backup"),
    ("zero", "is empty (0 bytes)"),
    ("manifest_counts", "table public.predictions: the manifest says 3001 rows, the restore has 3000"),
    ("missing", "is missing"),
])
def test_damaged_backup_fails_verification_naming_the_problem(pg, backed_up, tmp_path, kind, expected):
    path, mpath = copy_backup(backed_up, tmp_path / kind)
    damage(kind, path, mpath)
    res = run_module("pg_backup_verify", {**conn_args(pg, backed_up["db"]), "backup_path": str(path)}, tmp_path)
    assert res.get("failed") is True and res["verified"] is False
    assert expected in res["msg"], res["msg"]
    assert scratch_databases(pg) == []
    manifest = json.loads(mpath.read_text())
    assert manifest["verified"] is False and expected in manifest["verification"]["error"]


def test_restore_proof_catches_content_the_sha256_cannot(pg, backed_up, reference_template, tmp_path):
    """A different dump sealed with a matching sha256: only the restore and the checksums can tell."""
    changed_db = pg.create_database(template=reference_template)
    try:
        query(pg, changed_db, "UPDATE predictions SET confidence = confidence / 2 WHERE id = 17")
        other = run_module("pg_backup", {**conn_args(pg, changed_db), "backup_dir": str(tmp_path / "other"),
                                         "version": VERSION}, tmp_path)
        assert other["changed"] is True
        path, mpath = copy_backup(backed_up, tmp_path / "resealed")
        shutil.copy(other["backup_path"], path)
        manifest = json.loads(mpath.read_text())
        manifest.update(sha256=other["manifest"]["sha256"], size_bytes=other["manifest"]["size_bytes"],
                        files={path.name: other["manifest"]["sha256"]})
        mpath.write_text(json.dumps(manifest))
        res = run_module("pg_backup_verify", {**conn_args(pg, backed_up["db"]), "backup_path": str(path)}, tmp_path)
        assert res.get("failed") is True
        assert "table public.predictions: 3000 rows as expected but the content checksum differs" in res["msg"]
        assert [s["step"] for s in res["steps"]] == ["files", "toc", "restore", "failed"]
        assert res["scratch_dropped"] is True and scratch_databases(pg) == []
    finally:
        pg.drop_database(changed_db)


def test_check_mode_dumps_nothing(pg, backed_up, tmp_path):
    target = tmp_path / "never"
    res = run_module("pg_backup", {**conn_args(pg, backed_up["db"]), "backup_dir": str(target),
                                   "version": VERSION, "run_id": 7}, tmp_path, check=True)
    assert res["changed"] is True and res["msg"].startswith(f"would dump {backed_up['db']}")
    assert "-run7-" in res["backup_path"] and not target.exists()


def test_unreachable_server_is_refused_before_anything_is_written(pg, backed_up, tmp_path):
    target = tmp_path / "unreachable"
    res = run_module("pg_backup", {**conn_args(pg, backed_up["db"]), "login_port": 1, "backup_dir": str(target)},
                     tmp_path)
    assert res.get("failed") is True and "unable to connect to database" in res["msg"]
    assert "login_host/login_port" in res["msg"] and not target.exists()


def test_pg_dump_older_than_the_server_is_refused(pg, backed_up, tmp_path):
    fake = tmp_path / "pg_dump13"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 13.9'\n")
    fake.chmod(0o755)
    target = tmp_path / "old"
    res = run_module("pg_backup", {**conn_args(pg, backed_up["db"]), "backup_dir": str(target),
                                   "pg_dump_path": str(fake)}, tmp_path)
    assert res.get("failed") is True
    assert "is version 13.9 but the server is 15" in res["msg"] and "postgresql-client-15" in res["msg"]
    assert not target.exists()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs-{size}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point)], check=True)
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=False)


def test_not_enough_disk_is_refused_before_dumping(pg, backed_up, tmp_path, tiny_tmpfs):
    point = tiny_tmpfs("1m")
    target = point / "backups"
    # A small tmpfs stands for a small disk: accepted as intended (a tmpfs is refused by default).
    res = run_module("pg_backup", {**conn_args(pg, backed_up["db"]), "backup_dir": str(target),
                                   "allow_ephemeral_dir": True}, tmp_path)
    assert res.get("failed") is True
    assert "not enough free space for the backup" in res["msg"] and "Nothing was written" in res["msg"]
    assert res["preflight"]["free_bytes"] < res["preflight"]["needed_bytes"]
    assert list(point.iterdir()) == []


def test_disk_full_during_the_dump_leaves_no_partial_file(pg, backed_up, tmp_path, tiny_tmpfs):
    point = tiny_tmpfs("32k")
    res = run_module("pg_backup", {**conn_args(pg, backed_up["db"]), "backup_dir": str(point),
                                   "disk_margin": 0.001, "allow_ephemeral_dir": True}, tmp_path)
    assert res.get("failed") is True
    assert "pg_dump failed" in res["msg"] and "Nothing was left" in res["msg"]
    assert list(point.iterdir()) == []


def test_password_never_in_argv_or_output(pg, backed_up, tmp_path):
    """Wrappers record the argv and environment pg_dump/pg_restore get; a /proc watcher looks at
    every process's command line while the modules run."""
    log = tmp_path / "argv.log"
    wrappers = {}
    for tool in ("pg_dump", "pg_restore"):
        w = tmp_path / f"wrap-{tool}"
        w.write_text(f'#!/bin/sh\nprintf "%s\\n" "{tool} $*" "PGPASSWORD set: ${{PGPASSWORD:+yes}}" >> {log}\n'
                     f'exec {shutil.which(tool)} "$@"\n')
        w.chmod(0o755)
        wrappers[tool] = str(w)
    with CmdlineWatcher() as seen:
        args = conn_args(pg, backed_up["db"])
        dumped = run_module("pg_backup", {**args, "backup_dir": str(tmp_path / "pw"),
                                          "pg_dump_path": wrappers["pg_dump"]}, tmp_path)
        proved = run_module("pg_backup_verify", {**args, "backup_path": dumped["backup_path"],
                                                 "pg_restore_path": wrappers["pg_restore"]}, tmp_path)
    assert dumped["changed"] is True and proved["verified"] is True
    logged = log.read_text()
    assert "pg_dump --version" in logged and "pg_dump --no-password --format=custom" in logged
    assert "pg_restore --no-password --exit-on-error" in logged
    assert "PGPASSWORD set: yes" in logged  # the password travelled, through the environment
    assert pg.password not in logged
    assert seen.saw("pg_dump") or seen.saw("ansible-playbook")
    assert seen.containing(pg.password) == []
    for res in (dumped, proved):
        assert pg.password not in res["_output"] and pg.password not in json.dumps(res["commands"])


def test_retention_keeps_newest_verified_and_never_a_running_run(pg, tmp_path):
    db = pg.create_database()
    lock = run_module("migration_lock", {**conn_args(pg, db), "version": VERSION}, tmp_path)
    assert lock["run_id"] == 1
    query(pg, db, "DELETE FROM migration_ops.lock")
    query(pg, db, "UPDATE migration_ops.runs SET status = 'succeeded' WHERE id = 1")
    for run_id in range(2, 9):
        query(pg, db, "INSERT INTO migration_ops.runs (id, version, operator, status) VALUES (%s, %s, 'ci', %s)",
              (run_id, VERSION, "running" if run_id == 2 else "succeeded"))
    backups = tmp_path / "retention"
    backups.mkdir()
    for run_id in range(1, 9):
        path = backups / f"{db}-{VERSION}-run{run_id}-2026010{run_id}T000000Z.dump"
        path.write_bytes(b"x")
        manifest = {"database": db, "run_id": run_id, "backup_path": str(path), "format": "custom",
                    "created_at": f"2026-01-0{run_id}T00:00:00+00:00", "verified": run_id != 3,
                    "tables": {}, "sha256": "", "size_bytes": 1}
        Path(str(path) + ".manifest.json").write_text(json.dumps(manifest))
    foreign = backups / "otherdb-2.0.0-run1-20250101T000000Z.dump"
    foreign.write_bytes(b"x")
    Path(str(foreign) + ".manifest.json").write_text(json.dumps(
        {"database": "otherdb", "run_id": 1, "backup_path": str(foreign), "format": "custom",
         "created_at": "2025-01-01T00:00:00+00:00", "verified": True, "tables": {}, "sha256": "", "size_bytes": 1}))
    args = {**conn_args(pg, db), "state": "pruned", "backup_dir": str(backups), "retain": 5}
    preview = run_module("pg_backup", args, tmp_path, check=True)
    assert preview["changed"] is True and len(list(backups.glob("*.dump"))) == 9

    def run_of(paths):
        return sorted(int(re.search(r"-run(\d+)-", p).group(1)) for p in paths)

    res = run_module("pg_backup", args, tmp_path)
    assert run_of(res["deleted"]) == [1, 3]  # the oldest verified one and the unverified one
    assert run_of(res["kept"]) == [2, 4, 5, 6, 7, 8]  # five newest verified + the running run's
    assert res["protected_running"] and "-run2-" in res["protected_running"][0]
    assert run_of(str(p) for p in backups.glob(f"{db}-*.dump")) == [2, 4, 5, 6, 7, 8]
    assert not list(backups.glob(f"{db}-*run1-*")) and foreign.exists()
    again = run_module("pg_backup", args, tmp_path)
    assert again["changed"] is False and again["deleted"] == []
    pg.drop_database(db)


def test_restore_refuses_unverified_or_damaged_backups(pg, backed_up, tmp_path):
    before = source_tables(pg, backed_up["db"])
    args = conn_args(pg, backed_up["db"])
    path, mpath = copy_backup(backed_up, tmp_path / "unverified")
    refused = run_module("pg_backup_restore", {**args, "backup_path": str(path)}, tmp_path)
    assert refused.get("failed") is True and "was never proven to restore" in refused["msg"]
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps(dict(manifest, verified=True)))
    damage("flip_byte", path, mpath)
    damaged = run_module("pg_backup_restore", {**args, "backup_path": str(path)}, tmp_path)
    assert damaged.get("failed") is True and "sha256 of backup" in damaged["msg"]
    assert source_tables(pg, backed_up["db"]) == before
    conn = pg.admin_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s", (backed_up["db"] + "_%",))
        assert cur.fetchone()[0] == 0
    conn.close()


def test_directory_format_with_parallel_jobs_is_private_and_proven(pg, backed_up, tmp_path):
    args = conn_args(pg, backed_up["db"])
    res = run_module("pg_backup", {**args, "backup_dir": str(tmp_path / "dir"), "format": "directory", "jobs": 2,
                                   "run_id": 9}, tmp_path)
    assert res["changed"] is True
    path = Path(res["backup_path"])
    assert path.is_dir() and path.name.endswith(".dir") and path.stat().st_mode & 0o777 == 0o700
    files = list(path.iterdir())
    assert "toc.dat" in {f.name for f in files} and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert set(res["manifest"]["files"]) == {f.name for f in files}
    assert res["manifest"]["tables"] == backed_up["res"]["manifest"]["tables"]
    proved = run_module("pg_backup_verify", {**args, "backup_path": str(path), "run_id": 9}, tmp_path)
    assert proved["verified"] is True, proved.get("msg")
    largest = max(files, key=lambda f: f.stat().st_size)
    damage("flip_byte", largest, Path(res["manifest_path"]))
    broken = run_module("pg_backup_verify", {**args, "backup_path": str(path), "run_id": 9}, tmp_path)
    assert broken.get("failed") is True and f"differs in {largest.name}" in broken["msg"]


# --- the streamed proof (pg_backup prove=true) ---------------------------------------------
def stream_backup(pg, db, work, **extra):
    return run_module("pg_backup", {**conn_args(pg, db), "backup_dir": str(work / "backups"), "version": VERSION,
                                    "run_id": RUN_ID, "prove": True, **extra}, work)


def test_streamed_proof_proves_while_dumping_and_verify_trusts_it(pg, backed_up, tmp_path):
    db = backed_up["db"]
    res = stream_backup(pg, db, tmp_path)
    assert res.get("failed") is not True, res.get("msg")
    assert res["verified"] is True and "proven while dumping" in res["msg"], res["msg"]
    assert [s["step"] for s in res["proof_steps"]] == ["files", "toc", "restore", "tables"]
    assert res["scratch_kept"] is False and res["scratch_dropped"] is True and scratch_databases(pg) == []
    manifest = json.loads(Path(res["manifest_path"]).read_text())
    assert manifest["verified"] is True and manifest["verification"]["how"] == "streamed while dumping"
    assert manifest["tables"] == source_tables(pg, db)
    assert Path(res["backup_path"]).stat().st_mode & 0o777 == 0o600
    # The file is an ordinary custom-format archive: its table of contents has the data offsets, so a
    # parallel restore of it works (what a rollback runs).
    assert any("pg_restore" in c[0] and "--dbname=pgmigrate_verify_" in " ".join(c) for c in res["commands"])
    args = {**conn_args(pg, db), "backup_path": res["backup_path"], "run_id": RUN_ID}
    trusted = run_module("pg_backup_verify", args, tmp_path)
    assert trusted["verified"] is True and trusted["changed"] is False, trusted.get("msg")
    assert "(proven streamed while dumping, at " in trusted["msg"] and "not restored again" in trusted["msg"]
    assert "4 tables, 4041 rows, counts and checksums equal the manifest; its sha256 and tables still match" \
        in trusted["msg"], trusted["msg"]
    redo = run_module("pg_backup_verify", {**args, "force": True}, tmp_path)
    assert redo["verified"] is True and [s["step"] for s in redo["steps"]] == ["files", "toc", "restore", "tables"]


def test_streamed_proof_keeps_its_copy_for_the_rehearsal(pg, backed_up, tmp_path):
    db = backed_up["db"]
    res = stream_backup(pg, db, tmp_path, keep_scratch=True)
    assert res["verified"] is True and res["scratch_kept"] is True, res.get("msg")
    kept = res["scratch_db"]
    try:
        assert scratch_databases(pg) == [kept]
        assert source_tables(pg, kept) == source_tables(pg, db)
        adopted = run_module("pg_backup_verify", {**conn_args(pg, db), "backup_path": res["backup_path"],
                                                  "keep_scratch": True}, tmp_path)
        assert adopted["verified"] is True and adopted["changed"] is False, adopted.get("msg")
        assert adopted["scratch_db"] == kept and adopted["scratch_kept"] is True
        assert f"its restored copy {kept} is kept for the rehearsal" in adopted["msg"]
        assert scratch_databases(pg) == [kept]  # no second restore
    finally:
        pg.drop_database(kept)


def test_manifest_edited_after_a_streamed_proof_is_proven_again(pg, backed_up, tmp_path):
    """A proof is bound to the manifest it proved: counts edited afterwards are caught by a new restore,
    and the copy the first proof kept is dropped."""
    db = backed_up["db"]
    res = stream_backup(pg, db, tmp_path, keep_scratch=True)
    assert res["verified"] is True
    mpath = Path(res["manifest_path"])
    damage("manifest_counts", Path(res["backup_path"]), mpath)
    again = run_module("pg_backup_verify", {**conn_args(pg, db), "backup_path": res["backup_path"],
                                            "keep_scratch": True}, tmp_path)
    assert again.get("failed") is True and again["verified"] is False
    assert "table public.predictions: the manifest says 3001 rows, the restore has 3000" in again["msg"]
    assert [s["step"] for s in again["steps"]] == ["files", "binding", "toc", "restore", "failed"]
    assert scratch_databases(pg) == []
    assert json.loads(mpath.read_text())["verified"] is False


def test_streamed_proof_that_fails_keeps_the_backup_unproven(pg, backed_up, tmp_path):
    """pg_restore fails while the dump streams into it (a real pg_restore, given an argument it refuses):
    the backup and its manifest are kept, unproven, with the reason; pg_backup_verify then proves it."""
    real = shutil.which("pg_restore")
    wrapper = tmp_path / "pg_restore"
    wrapper.write_text(f'#!/bin/sh\ncase "$1" in --version) exec {real} "$@";; esac\n'
                       f'exec {real} "$@" --section=no-such-section\n')
    wrapper.chmod(0o700)
    db = backed_up["db"]
    res = stream_backup(pg, db, tmp_path, pg_restore_path=str(wrapper))
    assert res.get("failed") is not True, res.get("msg")
    assert res["verified"] is False and "pg_restore into the scratch database failed" in res["proof_error"]
    assert "unrecognized section name" in res["proof_error"], res["proof_error"]
    assert "the streamed proof failed" in res["msg"] and scratch_databases(pg) == []
    manifest = json.loads(Path(res["manifest_path"]).read_text())
    assert manifest["verified"] is False and manifest["tables"] == source_tables(pg, db)
    proven = run_module("pg_backup_verify", {**conn_args(pg, db), "backup_path": res["backup_path"]}, tmp_path)
    assert proven["verified"] is True and proven["changed"] is True, proven.get("msg")


def test_streamed_proof_catches_an_index_that_does_not_restore(pg, reference_template, tmp_path):
    """A dump that pg_dump writes without error but whose post-data section cannot be restored: an index on a
    function that calls another one unqualified (pg_restore runs with an empty search_path, so the inner function
    is not found when the index is built). The proof restores the post-data section after the dump, in parallel
    with reading the tables: it must fail there, say so, and keep the backup unproven; the restore after the dump
    (pg_backup_verify) rejects it too."""
    db = pg.create_database(template=reference_template)
    try:
        conn = pg.connect(db)
        with conn.cursor() as cur:
            cur.execute("CREATE FUNCTION public.inner_score(integer) RETURNS integer LANGUAGE sql IMMUTABLE "
                        "AS 'SELECT $1 + 1'")
            cur.execute("CREATE FUNCTION public.outer_score(integer) RETURNS integer LANGUAGE sql IMMUTABLE "
                        "AS 'SELECT inner_score($1)'")
            cur.execute("CREATE INDEX predictions_outer_score ON public.predictions (public.outer_score(id::integer))")
        conn.close()
        res = stream_backup(pg, db, tmp_path)
        assert res.get("failed") is not True, res.get("msg")
        assert res["verified"] is False, res["msg"]
        assert "post-data section" in res["proof_error"] and "inner_score" in res["proof_error"], res["proof_error"]
        assert "the streamed proof failed" in res["msg"] and scratch_databases(pg) == []
        manifest = json.loads(Path(res["manifest_path"]).read_text())
        assert manifest["verified"] is False and manifest["tables"] == source_tables(pg, db)
        verified = run_module("pg_backup_verify", {**conn_args(pg, db), "backup_path": res["backup_path"]}, tmp_path)
        assert verified.get("failed") is True and "inner_score" in verified["msg"], verified.get("msg")
        assert scratch_databases(pg) == []
    finally:
        pg.drop_database(db)
