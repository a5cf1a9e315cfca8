"""A watcher of every process's command line, for tests that prove a secret never reaches argv.

``ps``, ``/proc/<pid>/cmdline`` and Ansible's ``-vvv`` output show a process's arguments to anyone
on the machine; a password must travel through a process's own environment or a 0600 file instead.
The watcher polls ``/proc/*/cmdline`` from a thread while the code under test runs.
"""
from __future__ import annotations

import threading
from pathlib import Path


class CmdlineWatcher:
    """``with CmdlineWatcher() as seen: ...`` then ``seen.containing(secret)`` lists the offending
    command lines; ``seen.commands`` holds every distinct command line seen."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.commands: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CmdlineWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    raw = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if raw:
                    self.commands.add(raw.replace(b"\0", b" ").decode(errors="replace"))
            self._stop.wait(self.interval)

    def containing(self, text: str) -> list[str]:
        return sorted(cmd for cmd in self.commands if text in cmd)

    def saw(self, text: str) -> bool:
        """Whether some command line contained ``text`` (proof that the watcher saw the processes)."""
        return bool(self.containing(text))
