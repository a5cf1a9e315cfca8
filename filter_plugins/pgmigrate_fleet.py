# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of fleet.yml: the waves Ansible's ``serial`` makes of the fleet's databases, and what two of them
share by mistake."""
from __future__ import annotations


def _count(value, total: int) -> int:
    # As ansible.utils.helpers.pct_to_int: "25%" of the fleet, at least one database; a number as it is.
    if isinstance(value, str) and value.strip().endswith("%"):
        return int(int(value.strip()[:-1]) / 100.0 * total) or 1
    return int(value)


def fleet_serial(value) -> list:
    """pgmigrate_fleet_serial as serial takes it: a list, or its items comma-separated ("1,25%,100%")."""
    if isinstance(value, str):
        return [int(v) if v.isdigit() else v for v in (p.strip() for p in value.split(",")) if v]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def fleet_waves(hosts: list, serial) -> list[list]:
    """The batches of ``hosts`` that a play with ``serial: <serial>`` runs, in order (the same arithmetic as
    PlaybookExecutor._get_serialized_batches: the last size repeats until every host has a wave)."""
    sizes = serial if isinstance(serial, (list, tuple)) else [serial]
    if not sizes:
        sizes = [0]
    left, waves, i = list(hosts), [], 0
    while left:
        size = _count(sizes[i], len(hosts))
        if size <= 0:
            waves.append(left)
            break
        waves.append(left[:size])
        left = left[size:]
        i = min(i + 1, len(sizes) - 1)
    return waves


def fleet_shared(values: dict) -> list[dict]:
    """{host: value} -> [{value, hosts}] for each value that more than one host holds, in host order."""
    holders: dict[str, list] = {}
    for host, value in values.items():
        holders.setdefault(str(value), []).append(host)
    return [{"value": value, "hosts": hosts} for value, hosts in holders.items() if len(hosts) > 1]


class FilterModule:
    def filters(self) -> dict:
        return {"pgmigrate_fleet_serial": fleet_serial, "pgmigrate_fleet_waves": fleet_waves,
                "pgmigrate_fleet_shared": fleet_shared}
