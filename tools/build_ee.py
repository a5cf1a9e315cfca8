"""Build the execution environment (execution-environment.yml) on a docker daemon, without a registry.

    eval "$(scripts/dockerd.sh env)"; .venv/bin/python tools/build_ee.py      # prints the image tag

1. The base image (ee/Dockerfile.base): the docker runtime's Debian bookworm rootfs from debootstrap
   (roles/blue_green/files/docker-base-rootfs.sh, cached), a CPython 3.12 copied from this machine
   (PGMIGRATE_EE_PYTHON, else pyenv's 3.12.x: a build for Debian 12, as the base is), ee/ee-pkgmgr
   and this machine's CA bundle (PGMIGRATE_EE_CA_BUNDLE, else SSL_CERT_FILE).
2. The EE with `ansible-builder build` (docker CLI, DOCKER_HOST, legacy builder, host network for
   PyPI and deb.debian.org) from a definition derived from execution-environment.yml: Galaxy is
   unreachable here, so `dependencies.galaxy` is replaced by the same collections taken from the
   `ansible` package pinned in requirements.txt (ee/collections_from_wheel.py checks each version
   against requirements.yml). Everything else is the shipped definition.
3. The image is saved (docker save) under the cache (PGMIGRATE_CACHE_DIR or ~/.cache/pgmigrate-ops)
   by a hash of every input, so a later daemon loads it instead of rebuilding.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EE_DIR = ROOT / "ee"
DEFINITION = ROOT / "execution-environment.yml"
ROOTFS_SCRIPT = ROOT / "roles/blue_green/files/docker-base-rootfs.sh"
BASE_REPO = "localhost/pgmigrate-ops-ee-base"
EE_REPO = "localhost/pgmigrate-ops-ee"
# What the base image does not need from the Python tree (tests, IDLE, Tk, the static library, and
# site-packages: pip comes from ensurepip, everything else from the EE's own pip installs).
PY_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "site-packages", "__pycache__", "lib2to3"}


class BuildError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("PGMIGRATE_CACHE_DIR") or Path.home() / ".cache/pgmigrate-ops")


def python_prefix() -> Path:
    """The CPython 3.12 copied into the base image."""
    explicit = os.environ.get("PGMIGRATE_EE_PYTHON")
    candidates = [Path(explicit)] if explicit else [
        Path(p) for p in sorted(glob.glob(os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
                                          + "/versions/3.12.*"), reverse=True)]
    for prefix in candidates:
        if (prefix / "bin/python3.12").exists() and (prefix / "lib/libpython3.12.so.1.0").exists():
            return prefix
    raise BuildError("no CPython 3.12 (shared library build) to put in the base image: set PGMIGRATE_EE_PYTHON "
                     "to its prefix, or `pyenv install 3.12` (bookworm's own Python is 3.11, ansible-core 2.21 "
                     "needs >= 3.12)")


def python_members(prefix: Path) -> list[tuple[Path, str]]:
    """(file, name in python.tar) for the interpreter, its shared library and standard library."""
    members = [(prefix / "bin/python3.12", "bin/python3.12")]
    members += [(p, f"lib/{p.name}") for p in sorted((prefix / "lib").glob("libpython3*.so*"))]
    stdlib = prefix / "lib/python3.12"
    for path in sorted(stdlib.rglob("*")):
        rel = path.relative_to(stdlib)
        if PY_SKIP & set(rel.parts) or path.is_dir() or path.suffix == ".a" or path.name.startswith("_test"):
            continue
        members.append((path, f"lib/python3.12/{rel}"))
    return members


def python_signature(prefix: Path) -> str:
    lines = [f"{name} {path.lstat().st_size} {int(path.lstat().st_mtime)}" for path, name in python_members(prefix)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def requirement_pin(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.strip()
    raise BuildError(f"{name} is not pinned in requirements.txt")


def sha(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def rootfs_recipe() -> str:
    return hashlib.sha256(ROOTFS_SCRIPT.read_bytes()).hexdigest()[:16]


def ca_bundle() -> Path:
    """The CA bundle the base image trusts: the build machine's."""
    for candidate in (os.environ.get("PGMIGRATE_EE_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise BuildError("no CA bundle: set PGMIGRATE_EE_CA_BUNDLE (pip in the build must reach PyPI over TLS)")


def base_hash(prefix: Path) -> str:
    return sha(rootfs_recipe(), (EE_DIR / "Dockerfile.base").read_bytes(), (EE_DIR / "ee-pkgmgr").read_bytes(),
               ca_bundle().read_bytes(), python_signature(prefix))


def builder_version() -> str:
    from importlib.metadata import version
    return version("ansible-builder")


def ee_hash(base: str) -> str:
    return sha(base, DEFINITION.read_bytes(), (ROOT / "requirements.yml").read_bytes(),
               (EE_DIR / "collections_from_wheel.py").read_bytes(), Path(__file__).read_bytes(),
               requirement_pin("ansible"), builder_version())


def derive_definition(work: Path) -> Path:
    """execution-environment.yml with the galaxy stage fed from the `ansible` wheel instead of Galaxy."""
    definition = yaml.safe_load(DEFINITION.read_text())
    if definition["dependencies"].get("galaxy") != "requirements.yml":
        raise BuildError("execution-environment.yml: dependencies.galaxy is no longer requirements.yml")
    # An empty list keeps the galaxy stage (ansible-builder drops it, and append_galaxy with it, when
    # there is no galaxy dependency): ansible-galaxy skips it without contacting Galaxy, then
    # append_galaxy installs requirements.yml's collections from the wheel.
    definition["dependencies"]["galaxy"] = {"collections": []}
    definition["additional_build_files"] = [
        {"src": str(EE_DIR / "collections_from_wheel.py"), "dest": "collections"},
        {"src": str(ROOT / "requirements.yml"), "dest": "collections"},
    ]
    pin = requirement_pin("ansible")
    wheel = f"/tmp/ansible-wheel/{pin.replace('==', '-')}-py3-none-any.whl"
    steps = definition.setdefault("additional_build_steps", {})
    steps["append_galaxy"] = [
        "COPY _build/collections/ /tmp/collections/",
        f"RUN $PYCMD -m pip download --no-cache-dir --no-deps --only-binary=:all: --dest /tmp/ansible-wheel '{pin}'",
        f"RUN $PYCMD /tmp/collections/collections_from_wheel.py {wheel} /tmp/collections/requirements.yml "
        "/usr/share/ansible/collections && rm -rf /tmp/ansible-wheel /tmp/collections",
    ]
    path = work / "execution-environment.local.yml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def run(cmd: list[str], env: dict, log, timeout: int = 3600) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{cmd[0]} {cmd[1]} failed (exit {proc.returncode}); see {log.name}")


def image_present(tag: str, env: dict) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], env=env, capture_output=True,
                          check=False).returncode == 0


def build_base(prefix: Path, tag: str, env: dict, log) -> None:
    rootfs = subprocess.run([str(ROOTFS_SCRIPT), str(cache_dir()), rootfs_recipe()], capture_output=True,
                            text=True, check=False)
    log.write(rootfs.stdout + rootfs.stderr)
    if rootfs.returncode != 0:
        raise BuildError(f"the base rootfs (debootstrap) failed: {rootfs.stderr.strip()[-500:]}")
    rootfs_dir = Path(rootfs.stdout.split()[-1])
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        context = Path(tmp)
        os.link(rootfs_dir / "rootfs.tar", context / "rootfs.tar")
        with tarfile.open(context / "python.tar", "w") as tar:
            for path, name in python_members(prefix):
                tar.add(path, arcname=name, recursive=False)
        shutil.copy2(EE_DIR / "ee-pkgmgr", context / "ee-pkgmgr")
        shutil.copy2(EE_DIR / "Dockerfile.base", context / "Dockerfile")
        shutil.copyfile(ca_bundle(), context / "ca-certificates.crt")
        run(["docker", "build", "--network", "host", "-t", tag, str(context)], env, log)


def ensure_image(docker_host: str, log_path: Path) -> dict:
    """The EE image on the daemon at docker_host: present, loaded from the cache, or built (then cached)."""
    env = {**os.environ, "DOCKER_HOST": docker_host, "DOCKER_BUILDKIT": "0"}
    prefix = python_prefix()
    base = base_hash(prefix)
    digest = ee_hash(base)
    tag, base_tag = f"{EE_REPO}:{digest}", f"{BASE_REPO}:{base}"
    saved = cache_dir() / "ee" / digest / "image.tar"
    started = time.monotonic()
    with open(log_path, "a") as log:
        if image_present(tag, env):
            how = "present"
        else:
            with locked(cache_dir() / "ee" / ".lock"):
                if saved.exists():
                    run(["docker", "load", "-i", str(saved)], env, log)
                    how = "loaded"
                else:
                    if not image_present(base_tag, env):
                        build_base(prefix, base_tag, env, log)
                    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
                        definition = derive_definition(Path(tmp))
                        run([str(Path(sys.executable).parent / "ansible-builder"), "build", "-f", str(definition),
                             "-c", str(Path(tmp) / "context"), "-t", tag, "--container-runtime", "docker",
                             "--build-arg", f"EE_BASE_IMAGE={base_tag}",
                             "--extra-build-cli-args=--network host", "-v", "3"], env, log)
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    partial = saved.with_suffix(".partial")
                    run(["docker", "save", "-o", str(partial), tag], env, log)
                    partial.rename(saved)
                    how = "built"
    return {"tag": tag, "base": base_tag, "how": how, "seconds": round(time.monotonic() - started, 1),
            "python": str(prefix), "saved": str(saved)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST"),
                        help="the daemon (default: DOCKER_HOST; see scripts/dockerd.sh env)")
    parser.add_argument("--log", default="build-ee.log", help="the build's output (default: build-ee.log)")
    args = parser.parse_args()
    if not args.docker_host:
        parser.error("no daemon: pass --docker-host or export DOCKER_HOST (eval \"$(scripts/dockerd.sh env)\")")
    try:
        result = ensure_image(args.docker_host, Path(args.log))
    except BuildError as exc:
        print(f"build_ee: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
