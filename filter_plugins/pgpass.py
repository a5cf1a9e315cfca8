# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A libpq password file line, so tasks pass a password by a 0600 PGPASSFILE, never a command line."""
from __future__ import annotations


def _field(value) -> str:
    # .pgpass syntax: a backslash or a colon inside a field is escaped with a backslash.
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


def pgpass_entry(password, user, host="*", port="*", dbname="*") -> str:
    """``'s3:cret' | pgmigrate_pgpass_entry('football')`` -> ``*:*:*:football:s3\\:cret`` plus a newline."""
    fields = [f if f == "*" else _field(f) for f in (str(host), str(port), str(dbname))]
    return ":".join(fields + [_field(user), _field(password)]) + "\n"


class FilterModule:
    def filters(self):
        return {"pgmigrate_pgpass_entry": pgpass_entry}
