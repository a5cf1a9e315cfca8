#!/usr/bin/env python3
"""Fill the Football Prediction System database with realistic demo data, fast.

    python examples/football_prediction/seed.py --predictions 1000000 [--teams 40] [--seed 42] [--if-empty]

The connection comes from the standard libpq environment (PGHOST, PGPORT, PGUSER,
PGPASSWORD or ~/.pgpass, PGDATABASE, PGSSLMODE).  Rows are streamed with COPY in
chunks, so memory stays flat however many predictions are asked for, and the whole
seed is one transaction: it either lands completely or not at all.

The data (1.0.0 columns only, so it works on the 1.0.0 and the 2.0.0 schema):

* ``teams``: clubs with a country and a founding year (reused when the table has rows).
* ``matches``: one per three predictions, ids in kickoff order over the last year;
  ~80 % finished (scores set), a few postponed or live, the rest scheduled within
  the next two weeks.
* ``predictions``: one per model version per match (v1.3.0, v1.4.0, v1.4.1), made
  1 to 72 hours before kickoff; probabilities rounded to 4 decimals and summing to
  exactly 1, ``predicted_result`` their argmax, ``confidence`` the largest one,
  ``actual_result`` (and ``updated_at``) set from the score on finished matches only.
  ``created_at`` spans the last 365 days, with a share in the last 24 hours.

Output is deterministic for a given ``--seed`` and ``--anchor`` (the "now" every
timestamp is relative to; default: the current time, truncated to the second).
"""
from __future__ import annotations

import argparse
import io
import math
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg2
import psycopg2.errors

UTC = timezone.utc

MODEL_VERSIONS = ("v1.3.0", "v1.4.0", "v1.4.1")
MATCHES_PER_CHUNK = 20_000
SPAN_DAYS = 365
PAST_SHARE = 0.815  # past kickoffs; minus postponed and live this leaves ~80 % finished
POSTPONED_SHARE = 0.015
LIVE_WINDOW_S = 2 * 3600
FUTURE_HORIZON_S = 14 * 86400
NULL = "\\N"
COPY_READ_SIZE = 1 << 20

CITIES = (
    ("London", "England"), ("Manchester", "England"), ("Liverpool", "England"), ("Leeds", "England"),
    ("Bristol", "England"), ("Newcastle", "England"), ("Glasgow", "Scotland"), ("Edinburgh", "Scotland"),
    ("Madrid", "Spain"), ("Sevilla", "Spain"), ("Valencia", "Spain"), ("Bilbao", "Spain"),
    ("Milano", "Italy"), ("Torino", "Italy"), ("Roma", "Italy"), ("Napoli", "Italy"),
    ("Munich", "Germany"), ("Dortmund", "Germany"), ("Hamburg", "Germany"), ("Bremen", "Germany"),
    ("Lyon", "France"), ("Marseille", "France"), ("Bordeaux", "France"), ("Lille", "France"),
    ("Porto", "Portugal"), ("Lisboa", "Portugal"), ("Amsterdam", "Netherlands"), ("Rotterdam", "Netherlands"),
    ("Brugge", "Belgium"), ("Anderlecht", "Belgium"), ("Istanbul", "Turkey"), ("Athens", "Greece"),
)
SUFFIXES = ("United", "City", "Athletic", "Rovers", "Wanderers", "FC", "Albion", "Town", "Sporting", "Olympic")


@dataclass(frozen=True)
class Plan:
    predictions: int
    teams: int
    seed: int
    anchor: datetime

    @property
    def matches(self) -> int:
        return math.ceil(self.predictions / len(MODEL_VERSIONS))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Seed the Football Prediction System database (libpq env vars).")
    parser.add_argument("--predictions", type=int, required=True, help="number of predictions to insert")
    parser.add_argument("--teams", type=int, default=40, help="teams to create when the table is empty (default 40)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--anchor", type=datetime.fromisoformat, default=None,
                        help="ISO timestamp all data is relative to (default: now)")
    parser.add_argument("--if-empty", action="store_true", help="do nothing when predictions already has rows")
    args = parser.parse_args(argv)
    if args.predictions < 0:
        parser.error("--predictions must be >= 0")
    if args.teams < 2:
        parser.error("--teams must be >= 2")
    anchor = args.anchor or datetime.now(UTC).replace(microsecond=0)
    args.anchor = anchor if anchor.tzinfo else anchor.replace(tzinfo=UTC)
    return args


# --- generation -------------------------------------------------------------------------
def team_rows(count: int, rng: random.Random) -> list[tuple[str, str, int]]:
    names = [(f"{city} {suffix}", country) for suffix in SUFFIXES for city, country in CITIES]
    rng.shuffle(names)
    rows = []
    for i in range(count):
        name, country = names[i % len(names)]
        if i >= len(names):
            name = f"{name} {i // len(names) + 1}"
        rows.append((name, country, rng.randint(1860, 1995)))
    return rows


def kickoff_offset(index: int, plan: Plan, rng: random.Random) -> float:
    """Seconds relative to the anchor; ids follow kickoff order (with a little jitter)."""
    past = max(1, round(plan.matches * PAST_SHARE))
    if index < past:
        start = -SPAN_DAYS * 86400 + 72 * 3600  # leaves room for predictions made 72 h before
        offset = start + (index + rng.random()) / past * -start
        return min(offset, -60.0)
    future = max(1, plan.matches - past)
    return 3600 + (index - past + rng.random()) / future * (FUTURE_HORIZON_S - 3600)


def softmax(logits: tuple[float, float, float]) -> tuple[float, float, float]:
    exps = [math.exp(x) for x in logits]
    total = sum(exps)
    return exps[0] / total, exps[1] / total, exps[2] / total


def ten_thousandths(home: float, draw: float) -> tuple[int, int, int]:
    """Probabilities in 1/10,000 (each at least 0.01) that add up to exactly 10,000."""
    h = min(max(round(home * 10_000), 100), 9_800)
    d = min(max(round(draw * 10_000), 100), 9_900 - h)
    return h, d, 10_000 - h - d


# "0.4523" for 4523: exact decimal text for COPY, no float formatting in the hot loop.
PROBABILITY_TEXT = tuple(f"{i // 10_000}.{i % 10_000:04d}" for i in range(10_001))


def argmax_result(home: int, draw: int, away: int) -> str:
    best = max(home, draw, away)
    return "H" if home == best else ("D" if draw == best else "A")


def draw_score(result: str, rng: random.Random) -> tuple[int, int]:
    low = rng.choices((0, 1, 2, 3), weights=(40, 38, 17, 5))[0]
    if result == "D":
        return low, low
    high = low + rng.choices((1, 2, 3, 4), weights=(55, 28, 12, 5))[0]
    return (high, low) if result == "H" else (low, high)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Match:
    line: str  # COPY text
    kickoff: float  # epoch seconds
    logits: tuple[float, float, float]  # the "true" strengths predictions are noisy views of
    actual: str | None  # result, on finished matches only
    result_recorded: str  # updated_at text for its predictions


def generate_match(index: int, match_id: int, team_ids: list[int], plan: Plan, rng: random.Random) -> Match:
    home_team, away_team = rng.sample(team_ids, 2)
    anchor_ts = plan.anchor.timestamp()
    offset = kickoff_offset(index, plan, rng)
    kickoff = anchor_ts + offset
    strength = rng.gauss(0.0, 0.8)
    logits = (0.25 + strength, -abs(strength) * 0.3, -strength)
    home_score = away_score = actual = None
    if offset > 0:
        status = "scheduled"
    elif offset > -LIVE_WINDOW_S:
        status = "live"
        home_score, away_score = rng.randint(0, 2), rng.randint(0, 2)
    elif rng.random() < POSTPONED_SHARE:
        status = "postponed"
    else:
        status = "finished"
        true_home, true_draw, _ = softmax(logits)
        u = rng.random()
        actual = "H" if u < true_home else ("D" if u < true_home + true_draw else "A")
        home_score, away_score = draw_score(actual, rng)
    fixture_created = max(min(kickoff - rng.uniform(7, 60) * 86400, anchor_ts - 3600),
                          anchor_ts - (SPAN_DAYS + 60) * 86400)
    line = (f"{match_id}\t{home_team}\t{away_team}\t{iso(kickoff)}\t"
            f"{NULL if home_score is None else home_score}\t{NULL if away_score is None else away_score}\t"
            f"{status}\t{iso(fixture_created)}\n")
    recorded = NULL if actual is None else iso(kickoff + rng.uniform(6300, 7200))
    return Match(line, kickoff, logits, actual, recorded)


def generate_chunk(first: int, last: int, first_id: int, team_ids: list[int], plan: Plan,
                   rng: random.Random) -> tuple[str, str, int]:
    """COPY text for matches [first, last) and their predictions; returns (matches, predictions, count)."""
    anchor_ts = plan.anchor.timestamp()
    oldest = anchor_ts - SPAN_DAYS * 86400 + 1
    text = PROBABILITY_TEXT
    noise = rng.random
    exp = math.exp
    match_lines: list[str] = []
    prediction_lines: list[str] = []
    per_match = len(MODEL_VERSIONS)
    for index in range(first, last):
        match = generate_match(index, first_id + index, team_ids, plan, rng)
        match_lines.append(match.line)
        prefix = f"{first_id + index}\t"
        suffix = f"\t{match.actual or NULL}\t"
        lh, ld, la = match.logits
        for model_version in MODEL_VERSIONS[:min(per_match, plan.predictions - index * per_match)]:
            # Each model sees the true strengths through its own (uniform) noise.
            eh, ed, ea = exp(lh + noise() - 0.5), exp(ld + noise() - 0.5), exp(la + noise() - 0.5)
            total = eh + ed + ea
            h, d, a = ten_thousandths(eh / total, ed / total)
            if match.kickoff > anchor_ts:
                created = anchor_ts - rng.uniform(0, 7 * 86400)
            else:
                created = max(match.kickoff - rng.uniform(3600, 72 * 3600), oldest)
            prediction_lines.append(
                f"{prefix}{model_version}\t{text[h]}\t{text[d]}\t{text[a]}\t{argmax_result(h, d, a)}"
                f"{suffix}{text[max(h, d, a)]}\t{iso(created)}\t{match.result_recorded}\n"
            )
    return "".join(match_lines), "".join(prediction_lines), len(prediction_lines)


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for first in range(0, total, size):
        yield first, min(first + size, total)


# --- database ---------------------------------------------------------------------------
def ensure_teams(cur, plan: Plan, rng: random.Random) -> tuple[list[int], int]:
    cur.execute("SELECT id FROM teams ORDER BY id")
    existing = [row[0] for row in cur.fetchall()]
    if len(existing) >= 2:
        return existing, 0
    created = (plan.anchor - timedelta(days=SPAN_DAYS + 60)).isoformat()
    buffer = io.StringIO("".join(f"{name}\t{country}\t{founded}\t{created}\n" for name, country, founded
                                 in team_rows(plan.teams, rng)))
    cur.copy_expert("COPY teams (name, country, founded, created_at) FROM STDIN", buffer)
    cur.execute("SELECT id FROM teams ORDER BY id")
    return [row[0] for row in cur.fetchall()], plan.teams


def generated_chunks(plan: Plan, first_id: int, team_ids: list[int], rng: random.Random) -> Iterator[tuple]:
    """Generate chunks in a background thread so Python builds the next chunk while the server loads this one."""
    ready: queue.Queue = queue.Queue(maxsize=2)  # bounds memory to a few chunks
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for first, last in chunks(plan.matches, MATCHES_PER_CHUNK):
                if not offer((last - first, *generate_chunk(first, last, first_id, team_ids, plan, rng))):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer(exc)

    producer = threading.Thread(target=produce, name="seed-generator", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join(timeout=5)


def seed(conn, plan: Plan, progress) -> dict[str, int]:
    rng = random.Random(plan.seed)
    counts = {"teams": 0, "matches": 0, "predictions": 0}
    with conn.cursor() as cur:
        # One seeder at a time; readers are not blocked.
        cur.execute("LOCK TABLE teams, matches, predictions IN SHARE ROW EXCLUSIVE MODE")
        team_ids, counts["teams"] = ensure_teams(cur, plan, rng)
        cur.execute("SELECT coalesce(max(id), 0) + 1 FROM matches")
        first_id = cur.fetchone()[0]
        for match_count, matches, predictions, inserted in generated_chunks(plan, first_id, team_ids, rng):
            cur.copy_expert("COPY matches (id, home_team_id, away_team_id, kickoff_at, home_score, away_score,"
                            " status, created_at) FROM STDIN", io.StringIO(matches), size=COPY_READ_SIZE)
            cur.copy_expert("COPY predictions (match_id, model_version, home_win_prob, draw_prob, away_win_prob,"
                            " predicted_result, actual_result, confidence, created_at, updated_at) FROM STDIN",
                            io.StringIO(predictions), size=COPY_READ_SIZE)
            counts["matches"] += match_count
            counts["predictions"] += inserted
            progress(counts)
        # Explicit ids bypassed the sequence: move it past them.
        cur.execute("SELECT setval(pg_get_serial_sequence('matches', 'id'),"
                    " greatest(coalesce(max(id), 0), 1), max(id) IS NOT NULL) FROM matches")
    return counts


def predictions_exist(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM predictions)")
        return bool(cur.fetchone()[0])


def analyze(conn) -> None:
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ANALYZE teams, matches, predictions")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def report(counts: dict[str, int], seconds: float, plan: Plan) -> str:
    total = sum(counts.values())
    seconds = max(seconds, 1e-6)
    return (f"inserted {counts['teams']:,} teams, {counts['matches']:,} matches, {counts['predictions']:,} predictions"
            f" ({total:,} rows) in {seconds:.1f}s: {counts['predictions'] / seconds:,.0f} predictions/s,"
            f" {total / seconds:,.0f} rows/s (anchor {plan.anchor.isoformat()}, seed {plan.seed})")


def run(conn, plan: Plan, if_empty: bool) -> int:
    try:
        if if_empty and predictions_exist(conn):
            conn.rollback()
            print("predictions already has rows; --if-empty given, nothing inserted (0 rows)")
            return 0
        started = time.monotonic()

        def progress(counts: dict[str, int]) -> None:
            if plan.predictions >= 500_000:
                rate = counts["predictions"] / max(time.monotonic() - started, 1e-6)
                print(f"  {counts['predictions']:,} predictions ({rate:,.0f}/s)", file=sys.stderr, flush=True)

        counts = seed(conn, plan, progress)
        conn.commit()
    except psycopg2.Error as exc:
        if not conn.closed:
            conn.rollback()
        hint = ""
        if isinstance(exc, psycopg2.errors.UndefinedTable):
            hint = " (create the schema first: alembic -c examples/football_prediction/alembic.ini upgrade v1_0_0)"
        print(f"seed: failed, nothing inserted: {first_line(exc)}{hint}", file=sys.stderr)
        return 1
    loaded = time.monotonic() - started
    print(report(counts, loaded, plan), flush=True)
    try:
        analyze(conn)
    except psycopg2.Error as exc:
        print(f"seed: rows committed, but ANALYZE failed: {first_line(exc)}", file=sys.stderr)
        return 1
    print(f"analyzed teams, matches, predictions in {time.monotonic() - started - loaded:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(predictions=args.predictions, teams=args.teams, seed=args.seed, anchor=args.anchor)
    try:
        conn = psycopg2.connect("")
    except psycopg2.OperationalError as exc:
        print(f"seed: unable to connect to database (check PGHOST, PGPORT, PGUSER, PGDATABASE): {first_line(exc)}",
              file=sys.stderr)
        return 2
    try:
        return run(conn, plan, args.if_empty)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
