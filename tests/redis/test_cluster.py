"""A store on a local Redis Cluster the test starts: sessions spread over nodes, batches split by slot.

Three cluster-enabled redis-servers on free ports, joined by ``redis-cli --cluster create``
(a few seconds, once for the module).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from aiosessions import open_store
from aiosessions.backends import BatchResult, Write
from aiosessions.backends._redis import CLUSTER_BUCKETS, RedisBackend

from ._servers import REDIS_CLI, REDIS_SERVER, RedisCluster

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server and redis-cli are needed to start a local cluster")
    with RedisCluster(Path(tmp_path_factory.mktemp("cluster"))) as started:
        yield started


async def test_a_store_on_a_cluster_spreads_over_its_nodes(cluster: RedisCluster) -> None:
    url = f"{cluster.url}?prefix=spread"
    async with open_store(url, entry_type=dict) as store:
        backend = store.backend
        assert isinstance(backend, RedisBackend)
        assert backend.buckets == CLUSTER_BUCKETS and store.path.startswith("redis cluster ")
        for n in range(600):
            await store.set(f"agent:{n % 3}:s{n:04d}", {"updatedAt": n, "n": n})
        await store.flush()  # batches of 512 keys over 16 buckets: one script per bucket
        await store.update("agent:0:s0000", lambda entry: {**(entry or {}), "updatedAt": 10_000})
        await store.delete("agent:1:s0001")
        await store.flush()
        assert await backend.count() == 599
        assert len({key async for key in store.keys()}) == 599
        chunks = [chunk async for chunk in backend.key_chunks("agent:2:")]
        assert sorted(itertools.chain.from_iterable(chunks)) == [
            f"agent:2:s{n:04d}" for n in range(2, 600, 3)
        ]
        newest = await backend.newest(5)
        assert newest == [("agent:0:s0000", 10_000)] + [
            (f"agent:{n % 3}:s{n:04d}", n) for n in (599, 598, 597, 596)
        ]
        page = await backend.newest(3, after=newest[-1])
        assert page == [(f"agent:{n % 3}:s{n:04d}", n) for n in (595, 594, 593)]
    # Every node holds some of the store's sessions, each bucket's keys in one slot.
    holding = 0
    for server in cluster.servers:
        with server.client() as client:
            found = list(client.scan_iter(match="{spread/*", count=1000))
        holding += bool(found)
        slots = {}
        for key in found:
            tag = key[: key.index(b"}") + 1]
            slots.setdefault(tag, set()).add(client_keyslot(key))
        assert all(len(keys) == 1 for keys in slots.values())
    assert holding == len(cluster.servers)


def client_keyslot(key: bytes) -> int:
    from redis.crc import key_slot

    return int(key_slot(key))


async def test_compare_and_swap_between_two_cluster_clients(cluster: RedisCluster) -> None:
    one = RedisBackend(AsyncRedisCluster.from_url(cluster.url), prefix="cas", owns_client=True)
    two = RedisBackend.from_url(f"{cluster.url}?prefix=cas")
    await one.open()
    await two.open()
    try:
        writes = [Write(f"k{n}", b'{"v":0}', None, blind=False) for n in range(40)]
        assert sorted((await one.write_batch(writes, durable=True)).landed) == sorted(w.key for w in writes)
        stale = [Write(f"k{n}", b'{"v":1}', b'{"v":0}', blind=False) for n in range(40)]
        first = await two.write_batch(stale, durable=True)
        assert len(first.landed) == 40
        second = await one.write_batch(
            [Write(w.key, b'{"v":2}', w.expected, blind=False) for w in stale], durable=True
        )
        assert second.conflicts == {f"k{n}": b'{"v":1}' for n in range(40)}
        assert await one.read_many([f"k{n}" for n in range(40)]) == [b'{"v":1}'] * 40
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_replayed_batch_on_a_cluster_changes_nothing(cluster: RedisCluster) -> None:
    backend = RedisBackend.from_url(f"{cluster.url}?prefix=replay")
    await backend.open()
    try:
        calls = backend._plan([Write(f"k{n}", b"{}") for n in range(30)], BatchResult())
        assert len({call.bucket for call in calls}) > 1
        first = await backend._send(calls, True)
        second = await backend._send(calls, True)
        assert first == second and all(
            reply[0] == b"L" * len(call.writes) for call, reply in zip(calls, first, strict=True)
        )
    finally:
        await backend.aclose()


async def test_large_entries_on_a_cluster_keep_their_blobs_in_their_slot(cluster: RedisCluster) -> None:
    """Large members stored apart are keys the scripts name themselves: in their entry's slot."""
    blob = {"prompt": "p" * 40_000}
    one = RedisBackend.from_url(f"{cluster.url}?prefix=split")
    two = RedisBackend.from_url(f"{cluster.url}?prefix=split")
    await one.open()
    await two.open()
    try:
        entries = {
            f"k{n}": {"updatedAt": n, "skillsSnapshot": blob, "report": {"n": n, "t": "r" * 20_000}}
            for n in range(40)
        }
        encoded = {key: msgspec.json.encode(entry) for key, entry in entries.items()}
        writes = [Write(key, data, None, blind=False) for key, data in encoded.items()]
        assert len((await one.write_batch(writes, durable=True)).landed) == 40
        assert await two.read_many(list(encoded)) == list(encoded.values())
        newer = {key: data.replace(b'"updatedAt":', b'"updatedAt":1') for key, data in encoded.items()}
        again = [Write(key, newer[key], encoded[key], blind=False) for key in encoded]
        assert len((await two.write_batch(again, durable=True)).landed) == 40
        stale = await one.write_batch([Write("k1", encoded["k1"], encoded["k1"], blind=False)], durable=True)
        assert stale.conflicts == {"k1": newer["k1"]}
        assert await one.read_many(list(encoded)) == list(newer.values())
    finally:
        await one.aclose()
        await two.aclose()
    # Each blob in its entry's slot; two blobs a session (no superseded one left).
    blobs = 0
    for server in cluster.servers:
        with server.client() as client:
            for key in client.scan_iter(match="{split/*}:b:*", count=1000):
                entry = key[: key.index(b"}") + 1] + b":s:" + key.rsplit(b":", 1)[1]
                assert client_keyslot(key) == client_keyslot(entry)
                blobs += 1
    assert blobs == 80
