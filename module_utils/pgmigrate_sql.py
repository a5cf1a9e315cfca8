# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SQL fragments of a plan, checked with PostgreSQL's own grammar before any use.

A plan carries operator-owned SQL: backfill ``set`` expressions and ``where`` filters,
check ``where`` filters and ``predicate``s (expressions), and ``custom_sql`` checks
(queries).  They are composed into larger statements, and psycopg2 sends a statement
as one simple-protocol string: a fragment holding ``; COMMIT; ...`` would end the
READ ONLY transaction and run the rest read-write.  So every fragment is parsed here
with libpg_query (PostgreSQL's parser, through ``pglast``) and its syntax tree is
checked for shape:

* an expression is exactly one expression: it is parsed as ``SELECT (<text>)`` and the
  tree must be one SELECT with one unnamed target and nothing else (no FROM, no second
  target, no UNION, ...), so parentheses in the text cannot escape the wrapping;
* a query is exactly one SELECT;
* neither may contain a data-modifying statement (INSERT, UPDATE, DELETE, MERGE, also
  in a WITH), SELECT ... INTO (creates a table) or FOR UPDATE/SHARE (locks rows).

The read-only transactions stay as the second line of defence.  Function calls are
not judged here: what a function does is the database's business (and its privileges').
"""
from __future__ import annotations

import json
from typing import Any

try:
    from pglast.parser import ParseError, parse_sql_json, scan
    HAS_PGLAST = True
    PGLAST_IMP_ERR = None
except ImportError:  # pragma: no cover - exercised where pglast is not installed
    import traceback
    HAS_PGLAST = False
    PGLAST_IMP_ERR = traceback.format_exc()

PGLAST_MISSING = ("the Python library pglast (PostgreSQL's parser, used to check a plan's SQL before it runs) "
                  "is not installed for the Python that runs the module: pip install pglast "
                  "(requirements.txt pins it)")

# Where a plan carries SQL, and of which kind.  Paths as validate_plan names them.
EXPRESSION, QUERY = "expression", "query"
_WRAP = "SELECT (\n"
_DML = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}


class PlanSqlError(ValueError):
    """A plan SQL fragment that is not what its field allows; the message names field and fix."""


def _show(text: str, limit: int = 160) -> str:
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _refuse(field: str, text: str, kind: str, why: str) -> PlanSqlError:
    want = ("one SQL expression (a value or condition over the row, no ';', no statement)" if kind == EXPRESSION
            else "one SELECT query (no ';', no INSERT/UPDATE/DELETE/MERGE, no SELECT INTO, no FOR UPDATE/SHARE)")
    return PlanSqlError(f"{field}: {why}; the fragment {_show(text)} is refused. Write {want} and load the "
                        "plan again; nothing was run")


def _parse(text: Any, field: str, kind: str, prefix: str = "", suffix: str = "") -> list[dict]:
    if not HAS_PGLAST:
        raise PlanSqlError(f"{field}: cannot check the SQL: {PGLAST_MISSING}")
    if not isinstance(text, str) or not text.strip():
        raise _refuse(field, str(text), kind, "it is empty or not text")
    try:
        return json.loads(parse_sql_json(prefix + text + suffix))["stmts"]
    except ParseError as exc:
        message, index = (exc.args + (None, None))[:2]
        at = ""
        if isinstance(index, int):
            offset = max(0, min(len(text), index - len(prefix)))
            at = f" (at character {offset + 1} of the fragment)"
        raise _refuse(field, text, kind, f"it is not valid SQL: {message}{at}") from None


def _walk(node: Any, field: str, text: str, kind: str) -> None:
    """Refuse any part of the tree that writes, creates or locks, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _DML:
                raise _refuse(field, text, kind, f"it contains a data-modifying statement ({_DML[key]})")
            if key == "intoClause":
                raise _refuse(field, text, kind, "it contains SELECT ... INTO, which creates a table")
            if key == "lockingClause":
                raise _refuse(field, text, kind, "it contains FOR UPDATE/FOR SHARE, which locks rows")
            _walk(value, field, text, kind)
    elif isinstance(node, list):
        for item in node:
            _walk(item, field, text, kind)


def _statement_count_refusal(stmts: list[dict], field: str, text: str, kind: str) -> None:
    if len(stmts) != 1:
        raise _refuse(field, text, kind, f"it holds {len(stmts)} statements ';'-separated where one is allowed"
                      if stmts else "it holds no statement")


def _refuse_statements(text: str, field: str) -> None:
    """Say why plainly when the text is a ';'-separated script rather than a bad expression."""
    try:
        separators = sum(1 for token in scan(text) if token.name == "ASCII_59")
    except ParseError:
        return
    if separators:
        raise _refuse(field, text, EXPRESSION, f"it holds {separators} ';' (statement separator"
                      f"{'s' if separators > 1 else ''}) where one expression is allowed")


def parse_expression(text: Any, field: str) -> None:
    """Raise PlanSqlError unless ``text`` is exactly one SQL expression."""
    # The newline before the closing parenthesis ends a trailing '--' comment in the text.
    try:
        stmts = _parse(text, field, EXPRESSION, _WRAP, "\n)")
    except PlanSqlError:
        _refuse_statements(text, field)
        raise
    _statement_count_refusal(stmts, field, text, EXPRESSION)
    stmt = stmts[0]["stmt"]
    select = stmt.get("SelectStmt")
    extra = sorted(set(select or {}) - {"targetList", "limitOption", "op"}) if select is not None else None
    targets = (select or {}).get("targetList") or []
    target = targets[0].get("ResTarget", {}) if len(targets) == 1 else {}
    if (select is None or extra or select.get("op") != "SETOP_NONE"
            or select.get("limitOption") != "LIMIT_OPTION_DEFAULT" or len(targets) != 1
            or set(target) - {"val", "location"} or "val" not in target):
        raise _refuse(field, text, EXPRESSION, "it is not one expression (its parentheses close the expression and "
                      "add to the statement around it)")
    _walk(target["val"], field, text, EXPRESSION)


def parse_select(text: Any, field: str) -> None:
    """Raise PlanSqlError unless ``text`` is exactly one read-only SELECT."""
    stmts = _parse(text, field, QUERY)
    _statement_count_refusal(stmts, field, text, QUERY)
    stmt = stmts[0]["stmt"]
    if set(stmt) != {"SelectStmt"}:
        name = next(iter(stmt), "?")
        name = name[:-4] if name.endswith("Stmt") else name
        raise _refuse(field, text, QUERY, f"it is not a SELECT but a statement of kind {name}")
    _walk(stmt, field, text, QUERY)


def check_errors(pairs: list[tuple[str, Any, str]]) -> list[str]:
    """Every refusal among (field path, text, kind) pairs, as messages."""
    errors = []
    for field, text, kind in pairs:
        try:
            (parse_expression if kind == EXPRESSION else parse_select)(text, field)
        except PlanSqlError as exc:
            errors.append(str(exc))
    return errors


def backfill_fragments(backfill: dict, path: str) -> list[tuple[str, Any, str]]:
    """(field, text, kind) of the SQL a backfill carries: its set expressions and where filter."""
    at = f"{path}." if path else ""
    pairs = [(f"{at}set.{column}", expr, EXPRESSION) for column, expr in (backfill.get("set") or {}).items()]
    if backfill.get("where") is not None:
        pairs.append((f"{at}where", backfill["where"], EXPRESSION))
    return pairs


def check_fragments(check: dict, path: str) -> list[tuple[str, Any, str]]:
    """(field, text, kind) of the SQL a validation check carries."""
    at = f"{path}." if path else ""
    pairs = []
    for name in ("where", "predicate"):
        if check.get(name) is not None:
            pairs.append((f"{at}{name}", check[name], EXPRESSION))
    if check.get("sql") is not None:
        pairs.append((f"{at}sql", check["sql"], QUERY))
    return pairs


def plan_fragments(plan: dict) -> list[tuple[str, Any, str]]:
    """Every SQL fragment of a plan, with its field path and kind."""
    pairs = []
    for i, backfill in enumerate(plan.get("backfills") or []):
        if isinstance(backfill, dict):
            pairs.extend(backfill_fragments(backfill, f"backfills[{i}]"))
    for i, check in enumerate(((plan.get("validation") or {}).get("checks")) or []):
        if isinstance(check, dict):
            pairs.extend(check_fragments(check, f"validation.checks[{i}]"))
    return pairs


def plan_sql_errors(plan: dict) -> list[str]:
    """Every SQL fragment of the plan that is refused, each message naming its field."""
    return check_errors(plan_fragments(plan))


def wrap(text: str) -> str:
    """A checked expression as it goes into a statement: parenthesised, and with a newline
    before the closing parenthesis so that a trailing '--' comment cannot swallow it."""
    return "(" + text + "\n)"
