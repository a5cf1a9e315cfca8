#!/usr/bin/env python3
"""Build the reference API's release wheel with its version stamped (scripts/build-release.sh).

    python tools/build_release.py VERSION [OUTDIR]   ->  OUTDIR/football_prediction_api-VERSION-py3-none-any.whl

The wheel is reproducible (fixed timestamps, sorted entries) and immutable: when the file
already exists with other bytes the build refuses to replace it (a released version never
changes; build a new version instead).  Only the standard library is needed.
"""
from __future__ import annotations

import base64
import hashlib
import re
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "examples" / "football_prediction" / "football_prediction_api"
NAME = "football_prediction_api"
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
EPOCH = (2020, 1, 1, 0, 0, 0)


def record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def wheel_entries(version: str) -> list[tuple[str, bytes]]:
    entries = []
    for path in sorted(SOURCE.glob("*.py")):
        data = path.read_bytes()
        if path.name == "_version.py":
            data = f'# Stamped by scripts/build-release.sh.\n__version__ = "{version}"\n'.encode()
        entries.append((f"{NAME}/{path.name}", data))
    info = f"{NAME}-{version}.dist-info"
    metadata = (f"Metadata-Version: 2.1\nName: football-prediction-api\nVersion: {version}\n"
                "Summary: Football Prediction System API (reference application of pgmigrate-ops)\n"
                "Requires-Python: >=3.9\nRequires-Dist: psycopg2\n")
    wheel = "Wheel-Version: 1.0\nGenerator: pgmigrate-ops build_release\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries += [(f"{info}/METADATA", metadata.encode()), (f"{info}/WHEEL", wheel.encode()),
                (f"{info}/top_level.txt", f"{NAME}\n".encode())]
    record = "\n".join(record_line(p, d) for p, d in entries) + f"\n{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))
    return entries


def build(version: str, outdir: Path) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / f"{NAME}-{version}-py3-none-any.whl"
    with tempfile.NamedTemporaryFile(dir=outdir, prefix=".build-", suffix=".whl", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        with zipfile.ZipFile(tmp_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, data in wheel_entries(version):
                info = zipfile.ZipInfo(path, EPOCH)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        if target.exists():
            if target.read_bytes() != tmp_path.read_bytes():
                raise SystemExit(f"build-release: {target} already exists with other contents; a release is "
                                 f"immutable: build a new version (or remove the old file on purpose)")
            print(f"build-release: {target} is already built (identical)")
            return target
        tmp_path.chmod(0o444)
        tmp_path.rename(target)
        print(f"build-release: built {target}")
        return target
    finally:
        tmp_path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2 or not VERSION_RE.match(argv[0]):
        print("usage: build-release.sh VERSION [OUTDIR]   (VERSION as X.Y.Z, OUTDIR default .state/releases)",
              file=sys.stderr)
        return 2
    outdir = Path(argv[1]) if len(argv) == 2 else ROOT / ".state" / "releases"
    build(argv[0], outdir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
