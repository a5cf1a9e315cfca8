"""Install the collections of requirements.yml from the `ansible` package's wheel, without Galaxy.

Used by the execution environment built where Galaxy is unreachable (tools/build_ee.py adds it to
the galaxy stage of a derived definition): the `ansible` package on PyPI bundles every collection of
requirements.yml; each one's MANIFEST.json must carry the version requirements.yml pins.

    python collections_from_wheel.py ansible-X-py3-none-any.whl requirements.yml /usr/share/ansible/collections
"""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import yaml


def main(wheel: str, requirements: str, dest: str) -> int:
    wanted = yaml.safe_load(Path(requirements).read_text())["collections"]
    with zipfile.ZipFile(wheel) as bundle:
        names = bundle.namelist()
        for entry in wanted:
            namespace, name = entry["name"].split(".")
            prefix = f"ansible_collections/{namespace}/{name}/"
            members = [n for n in names if n.startswith(prefix) and "/__pycache__/" not in n]
            if not members:
                print(f"{entry['name']} is not bundled in {Path(wheel).name}", file=sys.stderr)
                return 1
            version = json.loads(bundle.read(prefix + "MANIFEST.json"))["collection_info"]["version"]
            pinned = str(entry.get("version", version))
            if version != pinned:
                print(f"{entry['name']}: {Path(wheel).name} bundles {version}, requirements.yml pins {pinned}",
                      file=sys.stderr)
                return 1
            for member in members:
                bundle.extract(member, dest)
            print(f"{entry['name']} {version} ({len(members)} files) from {Path(wheel).name}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
