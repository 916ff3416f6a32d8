"""python-telegram-bot's own tests/ext/test_basepersistence.py, unchanged, on our persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from .frameworks import BACKENDS, prepare, run_per_backend, sdist_cache

__all__ = ["sdist_cache"]

pytest.importorskip("telegram", reason="the ptb extra is not installed")

MEMBERS = [
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/auxil/",
    "tests/ext/__init__.py",
    "tests/ext/conftest.py",
    "tests/ext/test_basepersistence.py",
]

# PTB's own settings (its pyproject), for pytest-asyncio >= 0.24: one event loop for the
# session, as its conftest's session-scoped `event_loop` fixture gave with 0.21.
INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
markers =
    dev
    no_req
    req
    flaky
filterwarnings =
    error
    ignore::DeprecationWarning
    ignore:Tasks created via `Application\\.create_task` while the application is not running
    ignore::ResourceWarning
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_basepersistence_suite(sdist_cache: Path, tmp_path: Path) -> None:
    workdir = prepare(
        sdist_cache,
        tmp_path,
        distribution="python-telegram-bot",
        members=MEMBERS,
        ini=INI,
        ours={"ptb_plugin.py": "aiosessions_suite_ptb.py"},
    )
    # Its tests mostly wait (update intervals, timeouts): the backends run side by side.
    outcome = run_per_backend(
        workdir,
        ["-p", "aiosessions_suite_ptb", "tests/ext/test_basepersistence.py"],
        # Offline, without PTB's optional test dependencies (pytz, cryptography).
        env={"GITHUB_ACTIONS": "true", "TEST_WITH_OPT_DEPS": "false"},
    )
    assert (outcome.returncode, outcome.failed, outcome.errors, outcome.skipped) == (0, 0, 0, 0), (
        outcome.output
    )
    assert outcome.passed == 61 * len(BACKENDS), outcome.output
