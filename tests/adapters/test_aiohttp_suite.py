"""aiohttp-session's own tests/test_redis_storage.py, unchanged, with its storage swapped for ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from .frameworks import BACKENDS, Outcome, prepare, run, sdist_cache

__all__ = ["sdist_cache"]

pytest.importorskip("aiohttp_session", reason="the aiohttp extra is not installed")

#: Tests of RedisStorage's own checks of the `redis` package (a client of the wrong type
#: built by `redis.from_url`, `redis` missing or too old): nothing of a storage to swap.
NOT_APPLICABLE = [
    "test_redis_from_create_pool",
    "test_no_aioredis_installed",
    "test_old_aioredis_version",
]

INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    # aiohttp >= 3.14 on aiohttp-session's own `request[SESSION_KEY] = session`
    ignore:It is recommended to use web.RequestKey instances for keys
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_redis_storage_suite(sdist_cache: Path, tmp_path: Path) -> None:
    workdir = prepare(
        sdist_cache,
        tmp_path,
        distribution="aiohttp-session",
        members=["tests/__init__.py", "tests/typedefs.py", "tests/test_redis_storage.py"],
        ini=INI,
        ours={"aiohttp_session_conftest.py": "tests/conftest.py"},
    )
    deselect = [f"--deselect=tests/test_redis_storage.py::{name}" for name in NOT_APPLICABLE]
    outcome: Outcome = run(
        workdir,
        ["tests/test_redis_storage.py", *deselect],
        env={"AIOSESSIONS_SUITE_STORES": ",".join(BACKENDS)},
    )
    assert (outcome.returncode, outcome.failed, outcome.errors, outcome.skipped) == (0, 0, 0, 0), (
        outcome.output
    )
    assert (outcome.passed, outcome.deselected) == (
        13 * len(BACKENDS),
        len(NOT_APPLICABLE) * len(BACKENDS),
    ), outcome.output
