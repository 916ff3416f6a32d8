"""The Redis section of the benchmarks: runs, counts round trips and lost updates, reports."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python *args`` in the source tree, its output captured."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def test_a_short_run_of_the_redis_section(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("the bench extra is not installed (matplotlib is missing): pip install -e '.[bench]'")

    import anyio

    sys.path.insert(0, str(ROOT))
    from benchmarks import several_hosts

    results = anyio.run(
        lambda: several_hosts.run_stage(
            tmp_path,
            seconds=0.2,
            processes=(2,),
            contenders=("aiosessions Redis, write-behind", several_hosts.AIOGRAM),
            measures=("update", "newest50"),
            step=lambda _: None,
        )
    )
    rows = results["contenders"]
    ours = rows["aiosessions Redis, write-behind"]["update"]["2"]
    assert ours["ops"] > 0 and ours["lost_updates"] == 0 and ours["round_trips_per_op"] > 0
    assert rows[several_hosts.AIOGRAM]["update"]["2"]["round_trips_per_op"] == pytest.approx(2.0)
    assert rows[several_hosts.AIOGRAM]["newest50"]["2"]["ops"] > 0
    table = several_hosts.tables(results)
    assert "| aiogram-style GET/SET |" in table and "lost updates (2)" in table
    (chart,) = several_hosts.charts(results, tmp_path)
    assert chart.stat().st_size > 1_000


def test_bench_writes_on_redis_command_line(shared_redis: str, tmp_path: Path) -> None:
    """`aiosessions bench --writes --redis URL`: the update rows on the Redis backend, small vs
    large entries, under a prefix of its own that is gone afterwards with every key it named."""
    from .conftest import redis

    def bench_keys() -> set[bytes]:
        with redis.Redis.from_url(shared_redis) as client:
            return set(client.scan_iter(match="{aiosessions-bench-*", count=1000))

    before = bench_keys()
    out = tmp_path / "writes.json"
    done = run(
        *("-m", "aiosessions", "bench", "--writes", "--quick", "--redis", shared_redis, "--json", str(out)),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "write cost on Redis" in done.stdout
    assert "update one field, write-through, update_members" in done.stdout
    figures = json.loads(out.read_text("utf-8"))
    for name in ("write-behind", "write-through"):
        for way in (name, f"{name}, update_members", f"{name}, update_members again"):
            for size in ("small", "large"):
                assert figures["update"][way][size]["p50"] > 0, (way, size)
    assert 100_000 < figures["large_bytes"] < 140_000
    # Its large members stored apart, an update of a 121 KB session sends the server what changed
    # (a bound loose enough for other clients' traffic on a shared server).
    assert "bytes the server received per write-through update_members()" in done.stdout
    assert 0 < figures["bytes_per_update"]["large"] < 60_000
    assert bench_keys() == before


def test_redis_goes_with_writes() -> None:
    done = run("-m", "aiosessions", "bench", "--redis", "redis://127.0.0.1:1/0", timeout=60)
    assert done.returncode == 2 and "--redis goes with --writes" in done.stderr, done.stderr


def test_the_writes_stage_measures_redis_on_a_server_of_its_own(tmp_path: Path) -> None:
    """`python -m benchmarks --stages writes`: the directory store's rows and the Redis ones,
    the latter on a redis-server the stage starts and stops."""
    from ._servers import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("the bench extra is not installed (matplotlib is missing): pip install -e '.[bench]'")
    done = run(
        *("-m", "benchmarks", "--quick", "--stages", "writes", "--no-charts"),
        *("--out", str(tmp_path), "--work", str(tmp_path)),
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    writes = json.loads((tmp_path / "results-quick.json").read_text("utf-8"))["writes"]
    assert writes["update"]["write-through +fsync"]["large"]["p50"] > 0
    assert writes["redis"]["update"]["write-through, update_members"]["large"]["p50"] > 0
    tables = (tmp_path / "tables-quick.md").read_text("utf-8")
    assert "write cost on Redis (redis://127.0.0.1:" in tables and "SQLite FULL" in tables
