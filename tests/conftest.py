"""Shared fixtures: store paths for both backends, and the fixture files in tests/fixtures/."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

import aiosessions

#: The fixture files, part of the repository (copied from the project brief's shared fixtures),
#: so that a clean clone runs every test.
FIXTURES = Path(__file__).resolve().parent / "fixtures"


_OWN_BASETEMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Each test session gets a temporary root of its own (unless ``--basetemp`` names one).

    pytest's shared ``/tmp/pytest-of-<user>`` keeps the last three sessions' folders and
    deletes older ones at the end of a session; two sessions at once (a developer's run
    beside CI's, or a framework's suite run by a test in a subprocess) can then delete a
    folder under the other's feet, and the other fails at exit with "Directory not empty".
    """
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="aiosessions-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """With ``AIOSESSIONS_NO_SKIP=1`` (CI sets it) a skipped test fails: CI runs every test."""
    report = yield
    if os.environ.get("AIOSESSIONS_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped where every test must run (AIOSESSIONS_NO_SKIP=1): {reason}"
    return report


def _fixture(name: str) -> Path:
    path = FIXTURES / name
    assert path.is_file(), f"{path} is missing: it is part of the repository"
    return path


@pytest.fixture
def openclaw_sessions() -> dict[str, Any]:
    """The OpenClaw-shaped sessions.json of tests/fixtures, as parsed JSON."""
    data: dict[str, Any] = json.loads(_fixture("openclaw-sessions.json").read_text("utf-8"))
    return data


@pytest.fixture
def openclaw_sessions_path() -> Path:
    return _fixture("openclaw-sessions.json")


@pytest.fixture
def hostile_keys() -> list[str]:
    """The hostile keys of tests/fixtures (some of them invalid on purpose)."""
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


def plant_entry(store_path: Path, mode: str, key: str, raw: bytes | None) -> None:
    """Change ``key``'s stored bytes behind the store's back, as another writer would.

    ``raw`` is written verbatim (None removes the entry). In directory mode it becomes
    ``<stem>.d/<name>/meta.json`` (tmp + rename); in JSON mode it must be one JSON
    value and replaces the key's member of the legacy file.
    """
    import os

    from aiosessions._keys import encode_key

    if mode == "directory":
        folder = store_path.with_name(store_path.stem + ".d") / encode_key(key)
        if raw is None:
            (folder / "meta.json").unlink()
            folder.rmdir()
            return
        folder.mkdir(mode=0o700, exist_ok=True)
        tmp = folder / ".planted.tmp"
        tmp.write_bytes(raw)
        os.replace(tmp, folder / "meta.json")
        return
    data = json.loads(store_path.read_text("utf-8"))
    if raw is None:
        del data[key]
    else:
        data[key] = json.loads(raw)
    tmp = store_path.with_name(".planted.tmp")
    tmp.write_text(json.dumps(data, indent=2), "utf-8")
    os.replace(tmp, store_path)


@pytest.fixture
def plant(store_path: Path, mode: str) -> Callable[[str, bytes | None], None]:
    """``plant(key, raw)``: :func:`plant_entry` on the parametrised store."""

    def planter(key: str, raw: bytes | None) -> None:
        plant_entry(store_path, mode, key, raw)

    return planter
