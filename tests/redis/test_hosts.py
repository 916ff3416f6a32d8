"""Several processes as separate hosts on one Redis: nothing lost, nothing applied twice.

Each host (tests/redis/_host.py) updates shared counters, and sets and deletes keys only it
writes, flushing at seeded random points; the test compares the store at the end with what
every host says it did. The same run is repeated with the server killed (-9) and restarted
mid-run (AOF, appendfsync always) and with every client connection killed again and again.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiosessions import open_store

from ._servers import RedisServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

HOST = Path(__file__).with_name("_host.py")
HOSTS = 4
SHARED = ["shared:a", "shared:b", "shared:c"]


def start_hosts(url: str, ops: int, seed: int, **extra: Any) -> list[subprocess.Popen[str]]:
    hosts = []
    for n in range(HOSTS):
        config = {
            "url": url,
            "me": f"h{n}",
            "ops": ops,
            "seed": seed + n,
            "shared": SHARED,
            "own": [f"own:h{n}:{k}" for k in range(5)],
            "flush_every": 8,
            "flush_interval": 0.01,
            **extra,
        }
        hosts.append(
            subprocess.Popen(
                [sys.executable, str(HOST), json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for host in hosts:
        assert host.stdout is not None
        line = host.stdout.readline()
        assert line.strip() == "ready", (line, host.stderr.read() if host.stderr else "")
    return hosts


def go(hosts: list[subprocess.Popen[str]]) -> None:
    for host in hosts:
        assert host.stdin is not None
        host.stdin.write("go\n")
        host.stdin.flush()


def finish(hosts: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    reports = []
    for host in hosts:
        out, err = host.communicate(timeout=90)
        assert host.returncode == 0, err[-3000:]
        lines = out.strip().splitlines()
        assert lines[-2].startswith("ack "), out[-500:]
        reports.append(json.loads(lines[-1]))
    print([(report["statistics"]["failures"], dict(report["counters"])) for report in reports])
    return reports


async def check(url: str, reports: list[dict[str, Any]]) -> None:
    """The store holds exactly what the hosts did: every increment once, each own key's last state."""
    async with open_store(url, entry_type=dict) as store:
        for key in SHARED:
            entry = await store.get(key)
            counts = (entry or {}).get("counts", {})
            expected = {f"h{n}": report["updates"][key] for n, report in enumerate(reports)}
            assert {name: counts.get(name, 0) for name in expected} == expected, key
        for report in reports:
            for key, state in report["own"].items():
                assert await store.get(key) == state, key
        listed = {key async for key in store.keys()}
    present = {key for report in reports for key, state in report["own"].items() if state is not None}
    assert listed == present | {key for key in SHARED if any(r["updates"][key] for r in reports)}


async def test_hosts_on_one_server_lose_nothing_and_apply_nothing_twice(redis_url: str) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    hosts = start_hosts(redis_url, ops=300, seed=seed)
    go(hosts)
    reports = await anyio.to_thread.run_sync(finish, hosts)
    await check(redis_url, reports)
    assert sum(report["statistics"]["conflicts"] for report in reports) > 0, "the hosts never collided"


async def test_hosts_changing_large_sessions_lose_nothing_and_leave_no_blob_behind(
    redis_url: str, redis_prefix: str, shared_redis: str
) -> None:
    """The same with entries whose large members are stored apart: the compare-and-swap, a
    blob another host dropped, the blobs a write no longer names, all across processes."""
    import redis

    seed = random.randrange(2**32)
    print(f"seed {seed}")
    hosts = start_hosts(redis_url, ops=200, seed=seed, large=True)
    go(hosts)
    reports = await anyio.to_thread.run_sync(finish, hosts)
    await check(redis_url, reports)
    assert sum(report["statistics"]["conflicts"] for report in reports) > 0, "the hosts never collided"
    # Every blob is named by its entry, and every blob an entry names is there.
    tag = "{" + redis_prefix + "/0}"
    with redis.Redis.from_url(shared_redis) as client:
        stored = {key.decode() for key in client.scan_iter(match=tag + ":b:*", count=1000)}
        named = {
            f"{tag}:b:{digest}:{key.decode()}"
            for key, digests in client.hgetall(tag + ":p").items()
            for digest in digests.decode().split()
        }
    assert stored == named and stored


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
async def test_a_server_killed_and_restarted_mid_run_loses_nothing_acknowledged(
    redis_server: Any, large: bool
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    server: RedisServer = redis_server("--appendonly", "yes", "--appendfsync", "always")
    url = f"{server.url}?prefix=restart"
    hosts = start_hosts(url, ops=1500, seed=seed, max_pending_keys=4, large=large)
    go(hosts)
    try:
        await anyio.sleep(0.2)
        outages = 0
        # While the hosts run (an outage makes them slower, so there is always a second).
        while outages < 2 or (outages < 4 and all(host.poll() is None for host in hosts)):
            server.kill()  # -9: only what the AOF holds survives
            outages += 1
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(server.start)
            await anyio.sleep(0.3)
    finally:
        reports = await anyio.to_thread.run_sync(finish, hosts)
    await check(url, reports)
    assert sum(report["statistics"]["failures"] for report in reports) > 0, "no host noticed the outage"


async def test_connections_killed_by_the_server_are_survived(redis_server: Any) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    server: RedisServer = redis_server()
    url = f"{server.url}?prefix=killed"
    hosts = start_hosts(url, ops=300, seed=seed)
    go(hosts)
    killed = 0
    with server.client() as admin:
        while any(host.poll() is None for host in hosts):
            killed += admin.client_kill_filter(_type="normal", skipme=True)
            time.sleep(0.02)
    reports = await anyio.to_thread.run_sync(finish, hosts)
    assert killed > 0
    await check(url, reports)
