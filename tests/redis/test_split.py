"""Large members stored apart on Redis (format version 2): what an update sends, what a read
fetches, blobs never outliving their entry nor missing for it, and version-1 stores."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from aiosessions import CorruptSessionError, open_store
from aiosessions.backends import Write
from aiosessions.backends._redis import RedisBackend

pytestmark = pytest.mark.asyncio

FIXTURE = Path(__file__).parents[1] / "fixtures" / "redis-v1-store.json.gz"


def large(updated_at: int = 1, skills: str = "s", report: str = "r") -> dict[str, Any]:
    """An OpenClaw-shaped entry of ~121 KB: two large members that rarely change."""
    return {
        "sessionId": "large",
        "updatedAt": updated_at,
        "skillsSnapshot": {"prompt": skills * 80_000},
        "systemPromptReport": {"text": report * 40_000},
        "deliveryContext": {"channel": "telegram"},
    }


def encode(entry: dict[str, Any]) -> bytes:
    return msgspec.json.encode(entry)


async def stored_keys(client: aioredis.Redis, prefix: str, kind: str) -> list[bytes]:
    return sorted([key async for key in client.scan_iter(match="{" + prefix + "/0}:" + kind + ":*")])


@contextlib.asynccontextmanager
async def opened(url: str, count: int = 1) -> AsyncIterator[list[RedisBackend]]:
    """``count`` backends on the store at ``url``, each as another process's, closed after."""
    backends = [RedisBackend.from_url(url) for _ in range(count)]
    try:
        for backend in backends:
            await backend.open()
        yield backends
    finally:
        for backend in backends:
            await backend.aclose()


def sent_bytes(backend: RedisBackend, writes: list[Write]) -> int:
    """How many bytes of arguments the write script would be sent for ``writes``."""
    from aiosessions.backends import BatchResult

    return sum(
        len(arg)
        for call in backend._plan(writes, BatchResult())
        for arg in call.argv
        if isinstance(arg, bytes)
    )


@pytest_asyncio.fixture
async def client(shared_redis: str) -> AsyncIterator[aioredis.Redis]:
    async with aioredis.Redis.from_url(shared_redis) as connection:
        yield connection


async def test_a_large_entry_is_stored_apart_and_read_whole(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    async with open_store(redis_url, entry_type=dict) as store:
        await store.set("k", large(), durable=True)
        value = await client.get("{" + redis_prefix + "/0}:s:k")
        assert value is not None and value.startswith(b"@{") and len(value) < 1024
        assert len(await stored_keys(client, redis_prefix, "b")) == 2
        assert await store.get("k") == large()
    # A fresh process reads it whole, and lists it by recency like any other.
    async with open_store(redis_url, entry_type=dict) as store:
        assert await store.get("k") == large()
        assert [key async for key, _ in store.items()] == ["k"]
        assert await store.newest(1) == [("k", 1)]


async def test_an_update_of_a_small_field_sends_what_changed(redis_url: str) -> None:
    async with opened(redis_url) as (backend,):
        first = encode(large(1))
        await backend.write_batch([Write("k", first)], durable=True)
        newer = encode(large(2))
        # The blobs the server holds for the version this process wrote are not sent again.
        assert sent_bytes(backend, [Write("k", newer, first, blind=False)]) < 2_000
        result = await backend.write_batch([Write("k", newer, first, blind=False)], durable=True)
        assert result.landed == ["k"]
        # A member that changed is sent: only that one.
        changed = encode(large(3, skills="t"))
        assert 80_000 < sent_bytes(backend, [Write("k", changed, newer, blind=False)]) < 90_000


async def test_blobs_go_with_the_last_entry_that_names_them(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    async with open_store(redis_url, entry_type=dict) as store:
        await store.set("k", large(1), durable=True)
        before = await stored_keys(client, redis_prefix, "b")
        await store.set("k", large(2, skills="t"), durable=True)
        after = await stored_keys(client, redis_prefix, "b")
        # The report is kept, the old snapshot went with the write that dropped it.
        assert len(after) == 2 and len(set(before) & set(after)) == 1
        await store.set("k", {"sessionId": "small now"}, durable=True)
        assert await stored_keys(client, redis_prefix, "b") == []
        assert await client.hgetall("{" + redis_prefix + "/0}:p") == {}
        await store.set("k", large(3), durable=True)
        await store.delete("k", durable=True)
        assert await stored_keys(client, redis_prefix, "b") == []
        assert await client.hgetall("{" + redis_prefix + "/0}:p") == {}


async def test_a_read_of_a_changed_entry_fetches_only_the_blobs_not_held(redis_url: str) -> None:
    async with opened(redis_url, 2) as (writer, reader):
        await writer.write_batch([Write("k", encode(large(1)))], durable=True)
        assert await reader.read("k") == encode(large(1))
        await writer.write_batch([Write("k", encode(large(2)))], durable=True)
        names, args, _ = reader._read_call("k")
        reply = await reader._script("read", names, args)
        _, value, *pairs = reply
        assert value.startswith(b"@") and pairs == []  # both blobs held: neither sent
        assert await reader.read("k") == encode(large(2))
        # Its members are known from the read: update_members() starts from them.
        members = reader.members_of("k", encode(large(2)))
        assert members is not None and set(members) == set(large())


async def test_a_read_stands_on_the_blobs_held_when_it_was_sent(redis_url: str) -> None:
    """The server leaves out the blobs the read said it held; a write of this process that
    replaces what is held before the reply comes (other blobs) must not make them missing."""
    async with opened(redis_url, 2) as (writer, reader):
        await writer.write_batch([Write("k", encode(large(1)))], durable=True)
        assert await reader.read("k") == encode(large(1))
        await writer.write_batch([Write("k", encode(large(2)))], durable=True)
        script = reader._script

        async def write_while_waiting(name: str, keys: Any, args: Any) -> Any:
            reply = await script(name, keys, args)
            reader._script = script  # type: ignore[method-assign]
            await reader.write_batch(
                [Write("other", b"{}"), Write("k", encode(large(3, "t", "q")))], durable=True
            )
            return reply

        reader._script = write_while_waiting  # type: ignore[method-assign]
        assert await reader.read("k") == encode(large(2))
        assert await reader.read("k") == encode(large(3, "t", "q"))


async def test_a_blob_dropped_by_another_writer_is_sent_again(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    """A blind write believes the server holds the blobs of the version it last saw; when
    another writer dropped one since, the script writes nothing and it is sent with them."""
    async with opened(redis_url, 2) as (one, two):
        await one.write_batch([Write("k", encode(large(1)))], durable=True)
        assert await two.read("k") == encode(large(1))
        await one.write_batch([Write("k", encode(large(2, skills="t")))], durable=True)
        result = await two.write_batch([Write("k", encode(large(3)))], durable=True)
        assert result.landed == ["k"] and not result.failed
        assert await one.read("k") == encode(large(3))
        assert len(await stored_keys(client, redis_prefix, "b")) == 2


async def test_a_conflict_hands_back_the_whole_entry_found(redis_url: str) -> None:
    async with opened(redis_url, 2) as (one, two):
        first = encode(large(1))
        await one.write_batch([Write("k", first)], durable=True)
        assert await two.read("k") == first
        theirs = encode(large(2, report="q"))
        assert (await one.write_batch([Write("k", theirs, first, blind=False)], durable=True)).landed
        mine = encode(large(3))
        result = await two.write_batch([Write("k", mine, first, blind=False)], durable=True)
        assert result.conflicts == {"k": theirs}
        # The conflict taught it the current version: the retry lands.
        retry = await two.write_batch([Write("k", mine, theirs, blind=False)], durable=True)
        assert retry.landed == ["k"]
        assert await one.read("k") == mine


async def test_an_entry_with_its_own_parts_member_round_trips(redis_url: str, redis_prefix: str) -> None:
    entries = {
        "small": {"sessionId": "s", "$parts": [["not", 0, "ours"]]},
        "large": {**large(), "$parts": "the entry's own"},
    }
    async with open_store(redis_url, entry_type=dict) as store:
        for key, entry in entries.items():
            await store.set(key, entry, durable=True)
    async with open_store(redis_url, entry_type=dict) as store:
        for key, entry in entries.items():
            assert await store.get(key) == entry
        assert dict([item async for item in store.items()]) == entries


async def test_a_missing_blob_is_a_corrupt_session_naming_it(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    async with open_store(redis_url, entry_type=dict) as store:
        await store.set("k", large(), durable=True)
        await store.set("other", {"sessionId": "intact"}, durable=True)
    blob = (await stored_keys(client, redis_prefix, "b"))[0]
    await client.delete(blob)  # as an eviction would
    digest = blob.split(b":")[2].decode()
    async with open_store(redis_url, entry_type=dict) as store:
        with pytest.raises(CorruptSessionError, match=digest) as caught:
            await store.get("k")
        assert caught.value.key == "k"
        assert await store.get("other") == {"sessionId": "intact"}
        # A write of the whole entry repairs it.
        await store.set("k", large(2), durable=True)
        assert await store.get("k") == large(2)


async def test_a_store_made_by_the_version_1_release_opens_and_moves_forward(
    shared_redis: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    """``tests/fixtures/redis-v1-store.json.gz``: every key of a store that the last release of
    Redis format version 1 made through its public API (``make_redis_v1_store.py``), and that
    release's own reading of every session."""
    document = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    old = document["prefix"].encode()
    for name, item in document["keys"].items():
        # The keys as that release named them, under this test's prefix.
        where = base64.b64decode(name).replace(b"{" + old, b"{" + redis_prefix.encode(), 1)
        value = item["value"]
        if item["type"] == "string":
            await client.set(where, base64.b64decode(value))
        elif item["type"] == "zset":
            await client.zadd(where, {base64.b64decode(member): 0 for member in value})
        else:
            fields = {base64.b64decode(f): base64.b64decode(v) for f, v in value.items()}
            await client.hset(where, mapping=fields)  # type: ignore[arg-type]
    marker = "{" + redis_prefix + "}:format"
    assert json.loads(await client.get(marker) or b"")["version"] == 1
    expected = document["expected"]
    url = f"{shared_redis}?prefix={redis_prefix}"
    async with open_store(url, entry_type=dict) as store:
        assert json.loads(await client.get(marker) or b"")["version"] == 2
        assert dict([item async for item in store.items()]) == expected
        assert await store.count() == len(expected)
        # The large session, stored whole by version 1, is split by its next write.
        key = "agent:main:telegram:direct:large"
        await store.update(key, lambda entry: {**entry, "updatedAt": entry["updatedAt"] + 1}, durable=True)
        raw = await client.get("{" + redis_prefix + "/0}:s:" + key)
        assert raw is not None and raw.startswith(b"@")
    async with open_store(url, entry_type=dict) as store:
        large_entry = await store.get(key)
        assert large_entry is not None
        assert large_entry == {**expected[key], "updatedAt": expected[key]["updatedAt"] + 1}
        assert (key, large_entry["updatedAt"]) in await store.newest(len(expected))


#: The recipe of docs/format.md ("Redis"), for the prefix P and the key KEY in bucket 0.
RECIPE = (
    "redis-cli GET '{P/0}:s:KEY' | cut -c2- > meta.json\n"
    "for d in $(redis-cli HGET '{P/0}:p' KEY); do "
    'redis-cli GET "{P/0}:b:$d:KEY" > "blob-$d.json"; done\n'
)


async def test_the_recipe_of_format_md_puts_a_split_session_together(
    redis_url: str, redis_prefix: str, shared_redis: str, tmp_path: Path
) -> None:
    from ..test_format2 import JQ

    docs = (Path(__file__).parents[2] / "docs" / "format.md").read_text("utf-8")
    assert RECIPE in docs and JQ in docs
    if shutil.which("jq") is None or shutil.which("redis-cli") is None:
        pytest.skip("jq or redis-cli is not installed")
    entry = {**large(), "label": "put together by hand"}
    key = "agent:main:telegram:direct:7"
    async with open_store(redis_url, entry_type=dict) as store:
        await store.set(key, entry, durable=True)
    recipe = RECIPE.replace("{P/0}", "{" + redis_prefix + "/0}").replace("KEY", key)
    recipe = recipe.replace("redis-cli ", f"redis-cli -u {shared_redis} ")
    subprocess.run(recipe, shell=True, cwd=tmp_path, check=True, capture_output=True)
    assert len(list(tmp_path.glob("blob-*.json"))) == 2
    out = subprocess.run(JQ, shell=True, cwd=tmp_path, capture_output=True, check=True)
    assert json.loads(out.stdout) == entry
    assert list(json.loads(out.stdout)) == list(entry)  # member order too


async def test_a_split_write_whose_reply_was_lost_lands_once_with_its_blobs(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    from .test_backend import lose_replies

    async with opened(redis_url) as (backend,):
        first = encode(large(1))
        await backend.write_batch([Write("k", first)], durable=True)
        restore = lose_replies(backend)
        write = Write("k", encode(large(2, skills="t")), first, blind=False)
        lost = await backend.write_batch([write], durable=True)
        assert set(lost.in_doubt) == {"k"}
        restore()
        # Sent again: it had landed, so it is not applied twice, and nothing is left behind.
        again = await backend.write_batch([write], durable=True)
        assert again.landed == ["k"] and not again.conflicts
        newer = encode(large(3, skills="t"))
        assert (await backend.write_batch([Write("k", newer, write.data, blind=False)], durable=True)).landed
    async with opened(redis_url) as (other,):
        assert await other.read("k") == newer
    assert len(await stored_keys(client, redis_prefix, "b")) == 2


async def test_a_batch_of_large_entries_is_split_in_slices_of_the_loop(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Splitting runs on the event loop (~35 µs for 121 KB): a batch of many large entries
    gives the loop a turn every SPLIT_SLICE seconds, here after each entry."""
    from aiosessions.backends import _redis

    monkeypatch.setattr(_redis, "SPLIT_SLICE", 0.0)
    backend = RedisBackend.from_url(redis_url)
    await backend.open()
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    plan = backend._plan
    seen_at_plan: list[int] = []

    def planned(*args: Any, **kwargs: Any) -> Any:
        seen_at_plan.append(turns)
        return plan(*args, **kwargs)

    backend._plan = planned  # type: ignore[method-assign]
    counter = asyncio.create_task(count_turns())
    try:
        await asyncio.sleep(0)
        before = turns
        writes = [Write(f"k{n}", encode(large(n))) for n in range(6)]
        assert len((await backend.write_batch(writes, durable=True)).landed) == 6
        assert seen_at_plan[0] - before >= 5  # the loop ran between the splits, before any I/O
    finally:
        counter.cancel()
        await backend.aclose()


async def test_what_is_held_of_a_split_entry_counts_its_bytes_once(redis_url: str) -> None:
    """The members held are slices of the entry held, not copies of its large members (the
    cache's bound counts what it holds)."""
    async with opened(redis_url) as (backend,):
        data = encode(large())
        await backend.write_batch([Write("k", data)], durable=True)
        assert backend._versions_bytes == len(data)
        held = backend._versions["k"]
        assert held.members is not None and len(held.parts) == 2
        assert {digest: len(blob) for digest, blob in held.blobs().items()} == {
            digest: len(held.members[name]) for name, digest in held.parts
        }
