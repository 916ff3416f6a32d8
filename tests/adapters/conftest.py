"""Fixtures of the adapters' tests: each runs on every backend the store has."""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiosessions.adapters._common import StoreHandle

#: The Redis backend's tests' shared server: database 9, a unique key prefix per test.
REDIS_URL = os.environ.get("AIOSESSIONS_TEST_REDIS", "redis://127.0.0.1:6379/9")
#: Every backend the store has; the adapters' tests run on each.
BACKENDS = ["directory", "json"] + (
    ["redis"] if importlib.util.find_spec("aiosessions.backends._redis") else []
)


def delete_redis_prefix(prefix: str) -> None:
    """Delete the keys of the store ``prefix`` on the shared server, and only those."""
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        for pattern in ("{" + prefix + "}*", "{" + prefix + "/*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])


class Place:
    """Where one test's store lives: ``target`` and ``options`` as ``open_store`` takes them."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.path = tmp_path / "sessions.json"
        self.target: Any = self.path
        self.options: dict[str, Any] = {"fsync": False}
        self.redis_prefix: str | None = None
        if backend == "json":
            self.options["mode"] = "json"
        if backend == "redis":
            self.redis_prefix = "aiosessions-test-" + secrets.token_hex(6)
            self.target = f"{REDIS_URL}?prefix={self.redis_prefix}"
            self.options = {}

    def handle(self, **options: Any) -> StoreHandle:
        """A handle that opens this place's store on first use."""
        return StoreHandle(self.target, what="a test", options={**self.options, **options})


@pytest.fixture(params=BACKENDS)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    made = Place(str(request.param), tmp_path)
    yield made
    if made.redis_prefix is not None:
        delete_redis_prefix(made.redis_prefix)
