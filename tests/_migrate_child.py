"""Run migrate() and freeze at the Nth filesystem call, so the parent can kill -9 us there.

    python tests/_migrate_child.py STORE_PATH N
    python tests/_migrate_child.py STORE_PATH CALL:FIRST_ARG

Prints ``frozen <n> <call>`` (flushed) when call N begins (or the first call named CALL
whose first argument is FIRST_ARG, e.g. ``rename:sessions.json``, the backup rename) and
then blocks that thread for good; the other worker threads go on until the kill lands.
Prints ``finished <calls>`` if the migration ends before that call.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import anyio

from aiosessions import FileSystem, migrate

SYSCALLS = FileSystem.SYSCALLS


class FreezingFileSystem(FileSystem):
    def __init__(self, freeze_at: str) -> None:
        call, _, arg = freeze_at.partition(":")
        self.freeze_at = int(freeze_at) if not arg else -1
        self.freeze_on = (call, arg) if arg else None
        self.calls = 0
        self._lock = threading.Lock()

    def tick(self, name: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self.calls += 1
            n = self.calls
        if n == self.freeze_at or (name, str(args[0]) if args else None) == self.freeze_on:
            print(f"frozen {n} {name}", flush=True)
            time.sleep(3600)


def _make(name: str) -> Any:
    def method(self: FreezingFileSystem, *args: Any, **kwargs: Any) -> Any:
        self.tick(name, args)
        return getattr(FileSystem, name)(self, *args, **kwargs)

    return method


for _name in SYSCALLS:
    setattr(FreezingFileSystem, _name, _make(_name))


def main() -> None:
    path, freeze_at = sys.argv[1], sys.argv[2]
    fs = FreezingFileSystem(freeze_at)
    anyio.run(lambda: migrate(path, filesystem=fs))
    print(f"finished {fs.calls}", flush=True)


if __name__ == "__main__":
    main()
