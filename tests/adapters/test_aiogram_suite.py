"""aiogram's own storage and isolation tests, unchanged, against our storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from .frameworks import BACKENDS, prepare, run, sdist_cache

__all__ = ["sdist_cache"]

pytest.importorskip("aiogram", reason="the aiogram extra is not installed")

FILES = ["tests/test_fsm/storage/test_storages.py", "tests/test_fsm/storage/test_isolation.py"]

INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_storage_and_isolation_suites(sdist_cache: Path, tmp_path: Path) -> None:
    workdir = prepare(
        sdist_cache,
        tmp_path,
        distribution="aiogram",
        members=[
            "tests/__init__.py",
            "tests/test_fsm/__init__.py",
            "tests/test_fsm/storage/__init__.py",
            *FILES,
        ],
        ini=INI,
        ours={"aiogram_conftest.py": "tests/conftest.py"},
    )
    outcome = run(workdir, FILES, env={"AIOSESSIONS_SUITE_STORES": ",".join(BACKENDS)})
    assert (outcome.returncode, outcome.failed, outcome.errors, outcome.skipped) == (0, 0, 0, 0), (
        outcome.output
    )
    # test_storages: 3 tests x 4 configurations of ours; test_isolation: test_lock x 3 of ours,
    # and 5 tests of aiogram's RedisEventIsolation class itself (with fakes; no storage involved).
    assert outcome.passed == (12 + 3 + 5) * len(BACKENDS), outcome.output
