"""Fixtures of the Redis tests: the shared server (database 9, a unique prefix per test) and our own servers.

The shared server is the one on 127.0.0.1:6379 (``AIOSESSIONS_TEST_REDIS`` overrides the
URL). Tests use only keys of their own prefix and delete only those; never FLUSHDB. When no
server answers, the tests skip saying so (a failure under CI, where .ci/run starts one and
``AIOSESSIONS_NO_SKIP=1`` turns every skip into a failure).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[test]')")

from ._servers import REDIS_SERVER, RedisServer, default_url  # noqa: E402


def _need(what: str) -> None:
    pytest.skip(what)


@pytest.fixture(scope="session")
def shared_redis() -> str:
    """The URL of the shared server (without a prefix), checked once."""
    url = default_url()
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        _need(f"no Redis server answers at {url}: {exc}")
    return url


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key of the store ``prefix`` (and only those: ``{prefix}...`` / ``{prefix/...``)."""
    with redis.Redis.from_url(url) as client:
        for pattern in ("{" + prefix + "}*", "{" + prefix + "/*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])


@pytest.fixture
def redis_prefix(shared_redis: str) -> Iterator[str]:
    """A prefix no other test uses; its keys are deleted afterwards."""
    prefix = "aiosessions-test-" + secrets.token_hex(6)
    yield prefix
    delete_prefix(shared_redis, prefix)


@pytest.fixture
def redis_url(shared_redis: str, redis_prefix: str) -> str:
    """``redis://127.0.0.1:6379/9?prefix=<unique>``."""
    return f"{shared_redis}?prefix={redis_prefix}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``redis_server(*options)``: start our own redis-server on a free port (killed afterwards)."""
    if REDIS_SERVER is None:
        _need("redis-server is not installed")
    started: list[RedisServer] = []

    def start(*options: str, name: str = "server") -> RedisServer:
        server = RedisServer(tmp_path / f"{name}{len(started)}", *options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def prefix_keys(url: str, prefix: str) -> list[bytes]:
    with redis.Redis.from_url(url) as client:
        found: list[Any] = []
        for pattern in ("{" + prefix + "}*", "{" + prefix + "/*"):
            found.extend(client.scan_iter(match=pattern, count=1000))
    return sorted(found)
