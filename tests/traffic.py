"""A bounded request loop through nginx: N client threads, M requests in all, every answer kept.

    with Traffic(url, paths, threads=4, requests=2000) as loop:
        ... switch ...
    loop.failures  -> the non-2xx answers and connection errors
    loop.version_changes() -> the served versions in order, duplicates collapsed
    loop.flaps_back(old, new) -> answers of `old` to requests sent after any client got `new`

The loop stops after M requests, or once the block has ended and each client has sent `tail`
more requests (and `min_requests` were sent in all): bounded in requests, not timed.

Each client waits `pace` seconds between its requests (default 20 ms: 50 requests/s per client,
so a switch of a few seconds still meets hundreds of requests, while the cores stay with the deploy
under test instead of the loop); the switch benchmark sets pace=0 to load nginx as hard as it can.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


@dataclass
class Answer:
    seq: int
    client: int
    started: float
    elapsed: float
    status: int | None
    version: str | None
    colour: str | None
    error: str | None = None


@dataclass
class Traffic:
    base_url: str
    paths: list[str]
    threads: int = 4
    requests: int = 2000
    timeout: float = 10.0
    min_requests: int = 0
    tail: int = 20
    pace: float = 0.02
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _one(self, seq: int, client: int) -> Answer:
        url = self.base_url.rstrip("/") + self.paths[seq % len(self.paths)]
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = resp.read()
                status = resp.status
                version, colour = resp.headers.get("X-App-Version"), resp.headers.get("X-App-Colour")
                if version is None:
                    data = json.loads(body or b"{}")
                    version, colour = data.get("version"), data.get("colour")
                return Answer(seq, client, started, time.monotonic() - started, status, version, colour)
        except urllib.error.HTTPError as exc:
            return Answer(seq, client, started, time.monotonic() - started, exc.code, exc.headers.get("X-App-Version"),
                          exc.headers.get("X-App-Colour"), f"HTTP {exc.code}")
        except OSError as exc:
            return Answer(seq, client, started, time.monotonic() - started, None, None, None,
                          f"{type(exc).__name__}: {exc}")

    def _run(self, client: int) -> None:
        after_stop = 0
        while True:
            seq = next(self._counter)
            if self._stop.is_set():
                after_stop += 1
            if seq >= self.requests or (after_stop > self.tail and seq >= self.min_requests):
                return
            answer = self._one(seq, client)
            with self._lock:
                self.answers.append(answer)
            if self.pace:
                time.sleep(self.pace)

    def __enter__(self) -> Traffic:
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.timeout * 3)

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.error or a.status is None or not 200 <= a.status < 300]

    def ordered(self) -> list[Answer]:
        return sorted(self.answers, key=lambda a: a.started)

    def version_changes(self, client: int | None = None) -> list[str]:
        """The served versions in the order the requests started (of one client, or all),
        consecutive repeats collapsed."""
        out: list[str] = []
        for answer in self.ordered():
            if client is not None and answer.client != client:
                continue
            if answer.version and (not out or out[-1] != answer.version):
                out.append(answer.version)
        return out

    def flaps_back(self, old: str, new: str) -> list[Answer]:
        """The answers of the `old` version to requests started after some client had already received an
        answer of the `new` one: a switch that never flaps back has none (whichever client sent them)."""
        firsts = [a.started + a.elapsed for a in self.answers if a.version == new]
        if not firsts:
            return []
        first_new = min(firsts)
        return [a for a in self.answers if a.version == old and a.started > first_new]

    def latencies_ms(self) -> list[float]:
        return sorted(a.elapsed * 1000 for a in self.answers)
