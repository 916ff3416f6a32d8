"""The Redis section of the benchmarks: runs, counts round trips and lost updates, reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_run_of_the_redis_section(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("the bench extra is not installed (matplotlib is missing): pip install -e '.[bench]'")
    import sys

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
