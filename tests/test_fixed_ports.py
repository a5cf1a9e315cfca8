"""The project's fixed ports stay out of the kernel's ephemeral range (no database).

A server on a port of the ephemeral range (32768-60999 on Linux by default) can fail to start with
'Address already in use' whenever an outgoing connection made just before (libpq, nginx to an
upstream, curl) was given that port as its local port.  CI failed twice on it: a test's rolling
instance, then the Molecule backup scenario's cluster on 55544.  Every port the project fixes (the
demo's inventory and Makefile, the roles' defaults, the Molecule scenarios) is read here and must lie
in the project's own block below that range; the scenarios, which run side by side, must not share one.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import ROOT

from tools.pgcluster import PROJECT_PORTS, Cluster, ephemeral_port_range

URL_PORT = re.compile(r"://[^/:\s]+:(\d+)")
PORT_KEY = re.compile(r"(^|_)ports?($|_)")  # pgmigrate_db_port, blue_green_ports, port; not report_*
LINUX_DEFAULT_EPHEMERAL = range(32768, 61000)


def ports_in(node, key: str = "") -> set[int]:
    """The ports a YAML document fixes: values of keys naming a port, members of a ports mapping, URLs' ports."""
    found: set[int] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            found |= ports_in(v, str(k) if PORT_KEY.search(str(k)) else key)
    elif isinstance(node, list):
        for v in node:
            found |= ports_in(v, key)
    elif isinstance(node, bool):
        pass
    elif isinstance(node, int) and key and node > 0:
        found.add(node)
    elif isinstance(node, str):
        found |= {int(p) for p in URL_PORT.findall(node)}
        if key and node.isdigit():
            found.add(int(node))
    return found


def yaml_ports(path: Path) -> set[int]:
    ports: set[int] = set()
    for doc in yaml.safe_load_all(path.read_text()):
        ports |= ports_in(doc)
    return ports


def fixed_ports() -> dict[str, set[int]]:
    """Where each fixed port is set: file (relative to the checkout) -> ports."""
    files = [*ROOT.glob("molecule/*/inventory.yml"), *ROOT.glob("inventories/**/*.yml"),
             *ROOT.glob("roles/*/defaults/main.yml")]
    out = {str(f.relative_to(ROOT)): yaml_ports(f) for f in files}
    makefile = (ROOT / "Makefile").read_text()
    out["Makefile"] = {int(p) for p in re.findall(r"PG_PORT\s*\?=.*,(\d+)\)", makefile)}
    out["tools/pgcluster.py"] = {Cluster(ROOT / ".no-such-cluster").port}
    for text_file in ("molecule/blue_green/tests/test_default.py",):
        out[text_file] = {int(p) for p in URL_PORT.findall((ROOT / text_file).read_text())}
    return {k: v for k, v in out.items() if v}


def test_the_scan_finds_the_known_fixed_ports():
    """The scan is not vacuous: it finds the demo's cluster, nginx and colours, and every scenario's cluster."""
    ports = fixed_ports()
    everything = set().union(*ports.values())
    assert {18432, 18080, 18081, 18082, 18091} <= everything, sorted(everything)
    scenarios = {f for f in ports if f.startswith("molecule/") and f.endswith("inventory.yml")}
    assert len(scenarios) == len(list(ROOT.glob("molecule/*/inventory.yml"))) >= 10, scenarios
    assert ports["Makefile"] == {18432} and ports["tools/pgcluster.py"] == {18432}


def test_no_fixed_port_lies_in_the_ephemeral_range():
    low, high = ephemeral_port_range()
    ephemeral = set(range(low, high + 1)) | set(LINUX_DEFAULT_EPHEMERAL)
    bad = {f: sorted(p for p in ps if p in ephemeral) for f, ps in fixed_ports().items()}
    bad = {f: ps for f, ps in bad.items() if ps}
    assert not bad, (f"ports in the kernel's ephemeral range ({low}-{high}; Linux's default 32768-60999) can be "
                     f"taken by any outgoing connection before their server starts; move them into "
                     f"{PROJECT_PORTS.start}-{PROJECT_PORTS.stop - 1}: {bad}")


def test_fixed_ports_lie_in_the_project_block_that_free_port_never_hands_out():
    """The ports of the servers the project starts itself (the demo, the roles' defaults, Molecule); the staging,
    production and fleet inventories name servers that are already running (5432)."""
    started_here = {f: ps for f, ps in fixed_ports().items() if not f.startswith(
        ("inventories/staging/", "inventories/production/", "inventories/fleet/"))}
    outside = {f: sorted(p for p in ps if p not in PROJECT_PORTS) for f, ps in started_here.items()}
    outside = {f: ps for f, ps in outside.items() if ps}
    assert not outside, outside


def test_molecule_scenarios_run_side_by_side_on_ports_of_their_own():
    owners: dict[int, list[str]] = {}
    for f, ps in fixed_ports().items():
        if f.startswith("molecule/"):
            scenario = f.split("/")[1]
            for p in ps:
                owners.setdefault(p, []).append(scenario)
    shared = {p: sorted(set(s)) for p, s in owners.items() if len(set(s)) > 1}
    assert not shared, shared
