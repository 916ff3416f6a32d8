"""Shared fixtures: store paths for both backends, and the shared fixture files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aiosessions

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"


def _fixture(name: str) -> Path:
    path = FIXTURES / name
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared fixtures are not available here")
    assert path.is_file(), f"{path} is missing although {SHARED} exists"
    return path


@pytest.fixture
def openclaw_sessions() -> dict[str, Any]:
    """The OpenClaw-shaped sessions.json of ../shared/fixtures, as parsed JSON."""
    data: dict[str, Any] = json.loads(_fixture("openclaw-sessions.json").read_text("utf-8"))
    return data


@pytest.fixture
def openclaw_sessions_path() -> Path:
    return _fixture("openclaw-sessions.json")


@pytest.fixture
def hostile_keys() -> list[str]:
    """The hostile keys of ../shared/fixtures (some of them invalid on purpose)."""
    keys: list[str] = json.loads(_fixture("hostile-keys.json").read_text("utf-8"))
    return keys


@pytest.fixture(params=["directory", "json"])
def mode(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once per backend."""
    return str(request.param)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.json"


@pytest.fixture
def open_test_store(store_path: Path, mode: str) -> Callable[..., Any]:
    """Open a store of the parametrised mode: write-behind on, fsync off, no timer flushes.

    A store owns a task group, so it is opened inside each test body (pytest-asyncio
    runs async fixtures' setup and teardown in different tasks):
    ``async with open_test_store() as store: ...``. Keyword arguments override.
    """

    def opener(**options: Any) -> Any:
        settings: dict[str, Any] = {"mode": mode, "flush_interval": 3600, "fsync": False}
        settings.update(options)
        return aiosessions.open_store(store_path, **settings)

    return opener
