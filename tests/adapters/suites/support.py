"""Shared by our conftests of the frameworks' suites (copied beside them as aiosessions_suite_support).

The framework's files live in a package named ``tests`` too, so this module must not
import from our ``tests`` package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiosessions.adapters._common import Record, StoreHandle, items_with_prefix

#: The backends every test of the suite runs on, once each ("directory", "json", "redis").
BACKENDS = os.environ.get("AIOSESSIONS_SUITE_STORES", "directory").split(",")


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Autouse and parametrised: every test of the framework's files runs on each backend."""
    return str(request.param)


def store_target(folder: Path, backend: str) -> tuple[Any, dict[str, Any]]:
    """Where the store of one test lives, and the options to open it with.

    On Redis: the shared test server, under a prefix made from the test's folder (unique),
    whose keys :func:`forget` deletes.
    """
    if backend == "directory":
        return folder / "sessions.json", {"fsync": False}
    if backend == "json":
        return folder / "sessions.json", {"fsync": False, "mode": "json"}
    if backend == "redis":
        return f"{REDIS_URL}?prefix={_redis_prefix(folder)}", {}
    raise AssertionError(f"unknown backend {backend!r}")


REDIS_URL = os.environ.get("AIOSESSIONS_TEST_REDIS", "redis://127.0.0.1:6379/9")
_PREFIXES: dict[Path, str] = {}


def _redis_prefix(folder: Path) -> str:
    return _PREFIXES.setdefault(folder, "aiosessions-suite-" + os.urandom(6).hex())


@pytest.fixture(autouse=True)
def forget(tmp_path: Path, backend: str) -> Iterator[None]:
    """After each test on Redis, delete the keys of its prefix (and only those)."""
    yield
    prefix = _PREFIXES.pop(tmp_path, None)
    if prefix is None:
        return
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        for pattern in ("{" + prefix + "}*", "{" + prefix + "/*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])


async def snapshot(handle: StoreHandle, prefix: str = "") -> dict[str, Record]:
    """Every entry under ``prefix``, as the store sees it now."""
    store = await handle.store()
    return {key: entry async for key, entry in items_with_prefix(store, prefix)}


async def check_reopened(
    target: Any, options: dict[str, Any], before: dict[str, Record], prefix: str = ""
) -> None:
    """What the frameworks' suites never check: a new store on the same place holds it all.

    ``before`` is what the store held before it was closed; a store opened anew must
    hold exactly that (nothing lost, nothing dropped come back).
    """
    handle = StoreHandle(target, what="the read-back check", options=options)
    try:
        after = await snapshot(handle, prefix)
    finally:
        await handle.aclose()
    assert after == before, f"read back after reopening differs:\n before {before}\n after  {after}"
