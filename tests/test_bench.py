"""The benchmark harness: the workload generator's shapes, the legacy contender, and tiny runs
of ``aiosessions bench`` and ``python -m benchmarks``.

Figures are never asserted (a benchmark, not a timed test): only that each run measures what it
says, on stores of the right shape, and reports it.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aiosessions import SessionEntry
from aiosessions._barrier import syncfs_filesystem
from aiosessions._bench import (
    DEFAULT_SEED,
    AiosessionsContender,
    LegacyJsonContender,
    QuickSettings,
    encode_legacy,
    generate_sessions,
    lag_probe,
    percentile,
    render_table,
    report,
    run_quick,
    touch,
    write_legacy_file,
    zipf_sampler,
)
from aiosessions._entry import codec_for
from aiosessions._keys import decode_name, encode_key, validate_key

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("AIOSESSIONS_TEST_SEED", DEFAULT_SEED))


def setup_module() -> None:
    print(f"seed {SEED}")


# -- the generator ---------------------------------------------------------------------------


def test_generator_is_deterministic_for_a_seed() -> None:
    assert generate_sessions(50, seed=SEED) == generate_sessions(50, seed=SEED)
    assert list(generate_sessions(50, seed=SEED)) != list(generate_sessions(50, seed=SEED + 1))


def test_keys_are_of_every_real_kind_and_valid() -> None:
    keys = list(generate_sessions(600, seed=SEED))
    assert len(set(keys)) == 600
    for key in keys:
        validate_key(key)
        assert decode_name(encode_key(key)) == key
    kinds = {
        "subagent": ":subagent:",
        "cron run": ":cron:",
        "telegram topic": ":topic:",
        "slack thread": ":slack:channel:",
        "matrix room": ":!room",
        "signal group": ":signal:group:",
        "direct": ":direct:",
    }
    for kind, marker in kinds.items():
        assert any(marker in key for key in keys), kind
    assert any(not key.isascii() for key in keys), "keys with Unicode, as real ones have"


def test_entries_have_the_shapes_of_the_fixture(openclaw_sessions: dict[str, Any]) -> None:
    sessions = generate_sessions(300, seed=SEED)
    fixture_fields = collections.Counter(f for entry in openclaw_sessions.values() for f in entry)
    generated_fields = collections.Counter(f for entry in sessions.values() for f in entry)
    # Every field every fixture entry has, the generated entries have too.
    for name, count in fixture_fields.items():
        if count == len(openclaw_sessions):
            assert generated_fields[name] == len(sessions), name
    for optional in ("skillsSnapshot", "pluginExtensions", "cliSessionIds", "lastThreadId", "pinnedAt"):
        assert generated_fields[optional] > 0, optional
    entry = next(iter(sessions.values()))
    assert set(entry["origin"]) == set(next(iter(openclaw_sessions.values()))["origin"])
    # Unknown fields survive a typed round trip, as with the fixture.
    codec = codec_for(SessionEntry)
    for value in list(sessions.values())[:50]:
        raw = msgspec.json.encode(value)
        assert msgspec.json.decode(codec.encode(codec.decode(raw))) == value


def test_entry_sizes_are_mixed_like_real_stores() -> None:
    sessions = generate_sessions(1_000, seed=SEED, blob_fraction=0.05)
    sizes = sorted(len(msgspec.json.encode(v)) for v in sessions.values())
    small = sum(1 for s in sizes if 900 <= s <= 13_000)
    blobs = sum(1 for s in sizes if 40_000 <= s <= 160_000)
    assert small >= 0.9 * len(sizes)
    assert 0.02 * len(sizes) <= blobs <= 0.08 * len(sizes)
    assert percentile(sizes, 50) < 8_000


def test_target_size_is_met() -> None:
    target = 6_000_000
    sessions = generate_sessions(48, seed=SEED, target_bytes=target)
    size = len(encode_legacy(sessions))
    assert abs(size - target) / target < 0.03, size
    assert all("skillsSnapshot" in entry for entry in sessions.values())


def test_zipf_sampler_is_skewed_and_in_range() -> None:
    draw = zipf_sampler(1_000, random.Random(SEED))
    counts = collections.Counter(draw() for _ in range(20_000))
    assert min(counts) >= 0 and max(counts) < 1_000
    assert counts.most_common(1)[0][0] < 5
    assert counts[0] > 20 * counts.get(500, 0) + 100


def test_touch_returns_a_new_entry() -> None:
    entry = {"sessionId": "s", "updatedAt": 1, "inputTokens": 10}
    changed = touch(99, 5)(entry)
    assert changed == {"sessionId": "s", "updatedAt": 99, "inputTokens": 15, "totalTokens": 5}
    assert entry == {"sessionId": "s", "updatedAt": 1, "inputTokens": 10}


def test_render_table_aligns() -> None:
    text = render_table(["", "a", "b"], [["row", "1", "22"], ["longer row", "333", "4"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines[:2]}) == 1
    assert lines[2].startswith("row ") and lines[3].endswith(" 4")


@pytest.mark.asyncio
async def test_the_lag_probe_counts_the_ticks_a_stall_swallowed() -> None:
    """A loop blocked for 50 ms is one late tick, and the ticks due while it was blocked: a
    store that stalls rarely but long must not look better than one that never does."""
    async with lag_probe(0.001) as probe:
        await asyncio.sleep(0.005)
        time.sleep(0.05)  # the loop blocked
        await asyncio.sleep(0.005)
    at = max(range(len(probe.lateness)), key=probe.lateness.__getitem__)
    longest = probe.lateness[at]
    assert longest >= 0.045
    swallowed = int(longest / 0.001 - 1e-9)
    expected = [longest - n * 0.001 for n in range(1, swallowed + 1)]
    assert probe.lateness[at + 1 : at + 1 + swallowed] == pytest.approx(expected)
    assert len(probe.lateness) >= probe.ticks + swallowed
    assert probe.summary().extra["ticks"] == probe.ticks


# -- the contenders of the built-in benchmark --------------------------------------------------


@pytest.mark.asyncio
async def test_legacy_contender_rewrites_the_whole_file_indented(tmp_path: Path) -> None:
    sessions = generate_sessions(20, seed=SEED)
    path = tmp_path / "sessions.json"
    write_legacy_file(path, sessions)
    keys = list(sessions)
    legacy = LegacyJsonContender(path)
    await legacy.open()
    assert await legacy.get(keys[0]) == sessions[keys[0]]
    await legacy.update(keys[0], touch(1_900_000_000_000, 7))
    assert await legacy.delete(keys[1]) is True
    assert await legacy.newest(1) == [keys[0]]
    await legacy.close()
    text = path.read_text("utf-8")
    assert text.startswith('{\n  "')  # indented by 2, as OpenClaw writes it
    on_disk = json.loads(text)
    assert on_disk[keys[0]]["updatedAt"] == 1_900_000_000_000
    assert keys[1] not in on_disk and len(on_disk) == 19
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.asyncio
async def test_aiosessions_contender_drives_a_store(tmp_path: Path) -> None:
    sessions = generate_sessions(10, seed=SEED)
    contender = AiosessionsContender(tmp_path / "sessions.json", fsync=False, flush_interval=3600)
    await contender.open()
    try:
        for key, value in sessions.items():
            await contender.set(key, value)
        first = next(iter(sessions))
        await contender.update(first, touch(1_900_000_000_000, 1))
        assert await contender.newest(1) == [first]
        await contender.flush()
    finally:
        await contender.close()
    assert (tmp_path / "sessions.d" / encode_key(first) / "meta.json").is_file()


# -- tiny runs of both entry points -------------------------------------------------------------


@pytest.mark.asyncio
async def test_quick_run_measures_both_stores(tmp_path: Path) -> None:
    settings = QuickSettings(
        sessions=24,
        target_bytes=600_000,
        duration=0.2,
        legacy_budget=0.2,
        samples=8,
        folder=tmp_path,
        fsync_runs=(True, False),
        open_sizes=(30, 300),
        open_samples=5,
    )
    results = await run_quick(settings, quiet=True)
    assert [run["fsync"] for run in results["runs"]] == [True, False]
    for run in results["runs"]:
        for name in ("legacy JSON", "aiosessions"):
            row = run["measures"][name]
            for measure in ("update", "update_members", "update_through", "cold_read", "lag"):
                assert row[measure].samples >= 3 and row[measure].p50 >= 0, (name, measure)
            assert row["mixed"].ops > 0 and row["mixed"].rate > 0
    text = report(results)
    assert "update one session, p50" in text and "aiosessions is" in text
    # Both settings, each said plainly; fsync on (the library's default) first.
    assert text.index("fsync on in both stores (the library's default") < text.index("fsync off in both")
    times = "\N{MULTIPLICATION SIGN}"
    verdict = re.compile(rf"[\d,.]+{times} (better|worse)|about the same")
    rows = [line for line in text.splitlines() if line.startswith(("update ", "read ", "mixed ", "event-"))]
    ratios = [row.rsplit("  ", 1)[-1].strip() for row in rows]
    assert len(ratios) == 2 * 9 and all(verdict.fullmatch(r) for r in ratios), ratios
    assert results["sessions"] == 24 and abs(results["bytes"] - 600_000) < 30_000
    # Opening, at two store sizes, beside the physical floor and the backend alone.
    assert [row["sessions"] for row in results["open"]] == [30, 300]
    for row in results["open"]:
        assert row["open"].samples == row["floor"].samples == row["backend"].samples == 5
        assert row["ratio"] == row["open"].p50 / row["floor"].p50 > 0
    assert "open + get one session + close" in text and "300 sessions" in text
    assert list(tmp_path.iterdir()) == []  # the temporary store is gone


def test_bench_command_line(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiosessions",
            "bench",
            "--quick",
            "--sessions",
            "20",
            "--duration",
            "0.2",
            "--json",
            str(out),
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "legacy JSON" in done.stdout and "aiosessions is" in done.stdout
    assert "fsync on in both stores (the library's default" in done.stdout  # the default, said plainly
    assert "fsync off" not in done.stdout
    assert "[1/" in done.stderr  # progress lines (stderr is not a terminal here)
    figures = json.loads(out.read_text("utf-8"))
    assert figures["sessions"] == 20 and figures["origin"].startswith("generated")
    assert [run["fsync"] for run in figures["runs"]] == [True]
    assert figures["runs"][0]["measures"]["aiosessions"]["update"]["p50"] > 0


@pytest.mark.slow
def test_full_benchmark_quick_run(tmp_path: Path) -> None:
    for module in ("aiosqlite", "diskcache", "aiofiles", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the bench extra is not installed ({module} is missing): pip install -e '.[bench]'")
    only = (
        "legacy JSON,aiosessions write-behind,SQLite (aiosqlite),diskcache,aiofiles directory,physical limit"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--stages",
            "headline",
            "--only",
            only,
            "--out",
            str(tmp_path),
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results-quick.json").read_text("utf-8"))
    assert set(results["headline"]) == set(only.split(","))
    for name, row in results["headline"].items():
        for measure in ("update", "get_cold", "get_hot", "open_first_read", "mixed", "paced", "paced_lag"):
            assert row[measure]["samples"] > 0, (name, measure)
    assert "| legacy JSON | " in (tmp_path / "tables-quick.md").read_text("utf-8")
    for chart in ("update", "cold-read", "loop-lag"):
        assert (tmp_path / f"{chart}-quick.png").stat().st_size > 1_000


def test_a_comparison_says_worse_in_words_never_a_fraction() -> None:
    from aiosessions._bench import format_comparison

    times = "\N{MULTIPLICATION SIGN}"
    assert format_comparison(1308.4) == f"1,308{times} better"
    assert format_comparison(1 / 3.34) == f"3.34{times} worse"  # not "0.299 times less"
    assert format_comparison(1.01) == format_comparison(1 / 1.01) == "about the same"
    assert format_comparison(1.0) == "same"
    assert format_comparison(None) == format_comparison(float("nan")) == "n/a"


def test_a_row_where_aiosessions_is_behind_says_worse() -> None:
    from aiosessions._bench import Summary, ratio_rows

    def row(latency: float, rate: float) -> dict[str, Any]:
        timing = Summary.of([latency] * 5)
        return {
            "update": timing,
            "update_members": timing,
            "update_through": timing,
            "update_members_through": timing,
            "cold_read": timing,
            "mixed": Summary.of([0.001] * 10, seconds=10 / rate),
            "lag": timing,
            "mixed_lag": timing,
        }

    run = {"fsync": True, "measures": {"legacy JSON": row(0.010, 100), "aiosessions": row(0.0299, 300)}}
    rows = ratio_rows({"paced_rate": 500}, run)
    by_label = {label: verdict for label, _, _, verdict in rows}
    assert by_label["update one session, p50"] == "2.99\N{MULTIPLICATION SIGN} worse"
    assert by_label["mixed workload throughput"] == "3\N{MULTIPLICATION SIGN} better"
    assert not any("0." in verdict or "less" in verdict for verdict in by_label.values())


def test_bench_from_a_copy_of_your_store_leaves_it_untouched(tmp_path: Path) -> None:
    from tests.test_cli import unprivileged

    state = tmp_path / "state"
    state.mkdir()
    original = state / "sessions.json"
    sessions = generate_sessions(25, seed=SEED)
    sessions["a bad entry"] = [1, 2]  # not an object: left out of the workload, not an error
    write_legacy_file(original, sessions)
    before = original.read_bytes(), original.stat().st_mtime_ns, sorted(os.listdir(state))
    state.chmod(0o555)
    original.chmod(0o444)
    out = tmp_path / "figures.json"
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "aiosessions", "bench", "--quick", "--from", str(original)),
                *("--duration", "0.2", "--fsync", "off", "--json", str(out), "--dir", str(tmp_path / "work")),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
            check=False,
            preexec_fn=unprivileged,  # as a user who may not write there (CI runs as root)
        )
    finally:
        state.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert "25 sessions, " in done.stdout and f"(a copy of {original})" in done.stdout
    assert "left out of the workload: 1 entry that is not a JSON object" in done.stdout
    assert (original.read_bytes(), original.stat().st_mtime_ns, sorted(os.listdir(state))) == before
    figures = json.loads(out.read_text("utf-8"))
    assert figures["sessions"] == 25 and figures["left_out"] == 1
    assert [run["fsync"] for run in figures["runs"]] == [False]
    assert list((tmp_path / "work").iterdir()) == []  # the copies are gone


def test_bench_writes_command_line(tmp_path: Path) -> None:
    """`aiosessions bench --writes`: small vs large entries at each durability, the plain loop
    and SQLite, measured in one run (figures are not asserted, only that each was measured)."""
    out = tmp_path / "writes.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "aiosessions", "bench", "--writes", "--quick"),
            *("--json", str(out), "--dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for row in (
        "update one field, write-behind",
        "update_members",
        "write-through +fsync",
        "plain loop",
        "SQLite FULL",
    ):
        assert row in done.stdout, row
    figures = json.loads(out.read_text("utf-8"))
    assert 1_500 < figures["small_bytes"] < 3_000 and 100_000 < figures["large_bytes"] < 140_000
    for name in (
        *(
            f"{durability}{way}"
            for durability in ("write-behind", "write-through", "write-through +fsync")
            for way in ("", ", update_members", ", update_members again")
        ),
    ):
        for size in ("small", "large"):
            assert figures["update"][name][size]["p50"] > 0, (name, size)
    assert figures["sqlite"]["FULL"]["distinct"]["rate"] > 0
    assert set(figures["distinct"]) == {
        "write-behind +fsync",
        "write-behind +fsync, syncfs barrier",
        "write-behind +fsync, per-file fsync",
        "write-through +fsync",
    }
    # Durable batches take the journal where syncfs may checkpoint it (CI's ext4 does).
    journaled = syncfs_filesystem(os.stat(tmp_path).st_dev) is not None
    assert figures["journal"] is journaled
    assert ("go through the batch journal" in done.stdout) is journaled
    assert [p.name for p in tmp_path.iterdir()] == ["writes.json"]  # the temporary stores are gone
