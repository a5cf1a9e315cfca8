"""module_utils/pgmigrate_sql.py: the shape rules of plan SQL, over many fragments.

The modules that use it are tested against a real PostgreSQL through real ansible-playbook
runs (test_plan_modules, test_validate_module, test_batch_update, test_migrate_flow); this
file runs the parser itself (libpg_query through pglast, no stand-in) over the tricks an
outside tester would try, quickly and without a database.
"""
from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

_spec = importlib.util.spec_from_file_location("pgmigrate_sql", ROOT / "module_utils" / "pgmigrate_sql.py")
plan_sql = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan_sql)

REFUSED_EXPRESSIONS = {
    "1); COMMIT; DROP TABLE x; SELECT (1": "4 statements",
    "x; COMMIT": "statement separator",
    "x;": "statement separator",
    "1 -- \n; DROP TABLE x": "statement separator",
    "1 /* ; */ ; DROP TABLE x": "statement separator",
    "1)\n;\nCOMMIT;\nSELECT (1": "3 statements",
    "1) FROM pg_class WHERE (true": "not one expression",
    "1), (2": "not one expression",
    "1) AS y, (2": "not one expression",
    "1) UNION SELECT (2": "not one expression",
    "1) ORDER BY (1": "not one expression",
    "1) LIMIT (1": "not one expression",
    "1) INTO stolen FROM (SELECT 1) s WHERE (true": "not one expression",
    "1) FOR UPDATE OF x --": "not valid SQL",
    "(WITH d AS (DELETE FROM t RETURNING 1) SELECT 1)": "data-modifying statement (DELETE)",
    "x IN (WITH u AS (UPDATE t SET a = 1 RETURNING id) SELECT id FROM u)": "data-modifying statement (UPDATE)",
    "EXISTS (WITH i AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT 1)": "data-modifying statement (INSERT)",
    "(SELECT 1 FROM t FOR UPDATE)": "FOR UPDATE",
    "(SELECT 1 FROM t FOR SHARE SKIP LOCKED)": "FOR UPDATE",
    "1 + (draw_prob": "not valid SQL",
    "1 $$": "not valid SQL",
    "1 /* unterminated": "not valid SQL",
    "": "empty",
    "   ": "empty",
}
ALLOWED_EXPRESSIONS = [
    "CASE WHEN actual_result IS NULL THEN NULL ELSE 1 END",
    "a = 1 -- trailing comment",
    "x IN (SELECT id FROM t WHERE random() < 0.5)",
    "$$) ; COMMIT; SELECT ($$",          # one dollar-quoted string: harmless text
    "$q$ ; COMMIT $q$ || 'x;y'",
    "'it''s; fine'",
    "(1)",
    "(SELECT max(id) FROM t)",
    "jsonb_build_object('k', 1) /* ; DROP */",
]
REFUSED_QUERIES = {
    "SELECT 1; COMMIT; DROP TABLE t": "3 statements",
    "SELECT 1 -- \n; DROP TABLE t": "2 statements",
    "WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d": "data-modifying statement (DELETE)",
    "WITH m AS (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE RETURNING 1) SELECT 1":
        "data-modifying statement (MERGE)",
    "SELECT count(*) INTO stolen FROM t": "SELECT ... INTO",
    "SELECT 1 FROM t FOR UPDATE": "FOR UPDATE",
    "SELECT (SELECT 1 FROM t FOR NO KEY UPDATE)": "FOR UPDATE",
    "DELETE FROM t": "kind Delete",
    "EXPLAIN ANALYZE DELETE FROM t": "kind Explain",
    "CREATE TABLE x AS SELECT 1": "kind CreateTableAs",
    "COMMIT": "kind Transaction",
    "DO $$ BEGIN DELETE FROM t; END $$": "kind Do",
    "": "empty",
}
ALLOWED_QUERIES = [
    "SELECT count(*) FROM predictions WHERE actual_result IS NULL AND model_accuracy IS NOT NULL",
    "WITH x AS (SELECT 1 AS n) SELECT n FROM x",
    "SELECT $$;COMMIT;$$",
    "VALUES (1)",
    "SELECT 1;",
    "SELECT 1 UNION ALL SELECT 2",
]


@pytest.mark.parametrize(("text", "why"), REFUSED_EXPRESSIONS.items())
def test_refused_expressions_name_field_fragment_and_reason(text, why):
    with pytest.raises(plan_sql.PlanSqlError) as info:
        plan_sql.parse_expression(text, "backfills[0].where")
    message = str(info.value)
    assert message.startswith("backfills[0].where: ") and why in message and repr(text) in message, message
    assert "is refused" in message and "nothing was run" in message


@pytest.mark.parametrize("text", ALLOWED_EXPRESSIONS)
def test_one_expression_is_allowed(text):
    plan_sql.parse_expression(text, "backfills[0].set.x")


@pytest.mark.parametrize(("text", "why"), REFUSED_QUERIES.items())
def test_refused_queries(text, why):
    with pytest.raises(plan_sql.PlanSqlError) as info:
        plan_sql.parse_select(text, "validation.checks[5].sql")
    assert str(info.value).startswith("validation.checks[5].sql: ") and why in str(info.value), str(info.value)


@pytest.mark.parametrize("text", ALLOWED_QUERIES)
def test_one_select_is_allowed(text):
    plan_sql.parse_select(text, "validation.checks[5].sql")


def test_every_sql_field_of_a_plan_is_found():
    plan = {"backfills": [{"name": "b", "set": {"a": "1", "c": "2"}, "where": "true"}, {"name": "p", "python": "m:f"}],
            "validation": {"checks": [{"name": "w", "where": "true", "predicate": "false"}, {"name": "s", "sql": "x"}]}}
    assert [(f, k) for f, _, k in plan_sql.plan_fragments(plan)] == [
        ("backfills[0].set.a", "expression"), ("backfills[0].set.c", "expression"),
        ("backfills[0].where", "expression"),
        ("validation.checks[0].where", "expression"), ("validation.checks[0].predicate", "expression"),
        ("validation.checks[1].sql", "query")]
    assert plan_sql.plan_sql_errors(plan) == [
        "validation.checks[1].sql: it is not valid SQL: syntax error at or near \"x\" (at character 1 of the fragment);"
        " the fragment 'x' is refused. Write one SELECT query (no ';', no INSERT/UPDATE/DELETE/MERGE, no SELECT INTO, "
        "no FOR UPDATE/SHARE) and load the plan again; nothing was run"]


def test_wrapping_keeps_a_trailing_comment_inside():
    assert plan_sql.wrap("a = 1 -- note") == "(a = 1 -- note\n)"
