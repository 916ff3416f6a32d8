"""Run migrate() and freeze at the Nth filesystem call, so the parent can kill -9 us there.

    python tests/_migrate_child.py STORE_PATH N

Prints ``frozen <n> <call>`` (flushed) when call N begins and then blocks that
thread for good; the other worker threads go on until the kill lands. Prints
``finished <calls>`` if the migration ends before call N.
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
    def __init__(self, freeze_at: int) -> None:
        self.freeze_at = freeze_at
        self.calls = 0
        self._lock = threading.Lock()

    def tick(self, name: str) -> None:
        with self._lock:
            self.calls += 1
            n = self.calls
        if n == self.freeze_at:
            print(f"frozen {n} {name}", flush=True)
            time.sleep(3600)


def _make(name: str) -> Any:
    def method(self: FreezingFileSystem, *args: Any, **kwargs: Any) -> Any:
        self.tick(name)
        return getattr(FileSystem, name)(self, *args, **kwargs)

    return method


for _name in SYSCALLS:
    setattr(FreezingFileSystem, _name, _make(_name))


def main() -> None:
    path, freeze_at = sys.argv[1], int(sys.argv[2])
    fs = FreezingFileSystem(freeze_at)
    anyio.run(lambda: migrate(path, filesystem=fs))
    print(f"finished {fs.calls}", flush=True)


if __name__ == "__main__":
    main()
