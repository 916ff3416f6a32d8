"""Shared by our conftests of the frameworks' suites (copied beside them as aiosessions_suite_support).

The framework's files live in a package named ``tests`` too, so this module must not
import from our ``tests`` package.
"""

from __future__ import annotations

import os
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
    """Where the store of one test lives, and the options to open it with."""
    if backend == "directory":
        return folder / "sessions.json", {"fsync": False}
    if backend == "json":
        return folder / "sessions.json", {"fsync": False, "mode": "json"}
    if backend == "redis":
        return os.environ["AIOSESSIONS_SUITE_REDIS_URL"], {}
    raise AssertionError(f"unknown backend {backend!r}")


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
