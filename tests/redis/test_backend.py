"""The Redis backend on a real server: layout, prefixes, compare-and-swap, receipts, listings, errors."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest
import redis.asyncio as aioredis

import aiosessions
from aiosessions import SessionEntry, StoreFormatError, StoreIOError, open_store
from aiosessions._entry import codec_for
from aiosessions.backends import BatchResult, Write
from aiosessions.backends._redis import RedisBackend

from .conftest import prefix_keys

pytestmark = pytest.mark.asyncio


def backend_for(url: str, **options: Any) -> RedisBackend:
    return RedisBackend.from_url(url, **options)


# -- opening ------------------------------------------------------------------------------


async def test_open_store_by_url_round_trips_entries(
    redis_url: str, shared_redis: str, redis_prefix: str
) -> None:
    entry = SessionEntry(session_id="s1", updated_at=1_700_000_000_000, channel="telegram", label=None)
    async with open_store(redis_url) as store:
        assert store.mode == "redis"
        assert redis_prefix in store.path and "127.0.0.1:6379/9" in store.path
        await store.set("agent:main:telegram:direct:42", entry)
        await store.flush()
    async with open_store(redis_url) as store:
        assert await store.get("agent:main:telegram:direct:42") == entry
    # The entry is the same compact JSON as a meta.json, readable with redis-cli GET.
    async with aioredis.Redis.from_url(shared_redis) as client:
        raw = await client.get("{" + redis_prefix + "/0}:s:agent:main:telegram:direct:42")
        marker = json.loads(await client.get("{" + redis_prefix + "}:format"))
    assert raw == codec_for(SessionEntry).encode(entry)
    assert marker == {"format": "aiosessions.redis", "version": 2, "buckets": 1}


async def test_a_backend_from_a_client_or_a_pool_leaves_it_open(shared_redis: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(shared_redis)
    pool = aioredis.ConnectionPool.from_url(shared_redis)
    try:
        async with open_store(RedisBackend(client, prefix=redis_prefix), flush_interval=0) as store:
            await store.set("k", SessionEntry(session_id="from a client"))
        async with open_store(RedisBackend(pool, prefix=redis_prefix)) as store:
            entry = await store.get("k")
            assert entry is not None and entry.session_id == "from a client"
        assert await client.ping()  # still ours to use and close
        async with aioredis.Redis(connection_pool=pool) as other:
            assert await other.ping()
    finally:
        await client.aclose()
        await pool.aclose()


async def test_the_public_name_is_imported_on_first_use() -> None:
    from aiosessions.backends import RedisBackend as public

    assert public is RedisBackend


async def test_a_decoding_client_is_refused(shared_redis: str) -> None:
    client = aioredis.Redis.from_url(shared_redis, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisBackend(client, prefix="x")
    await client.aclose()


@pytest.mark.parametrize("prefix", ["", "a b", "a{b", "a}b", "a/b", "é"])
async def test_a_prefix_that_could_clash_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        backend_for(f"redis://127.0.0.1:6379/9?prefix={prefix}" if prefix else "redis://x", prefix=prefix)


async def test_url_options_are_ours_and_the_rest_redis_pys(shared_redis: str, redis_prefix: str) -> None:
    backend = backend_for(f"{shared_redis}?prefix={redis_prefix}&buckets=4&socket_timeout=7")
    async with open_store(backend) as store:
        assert backend.buckets == 4
        assert backend._client.connection_pool.connection_kwargs["socket_timeout"] == 7
        await store.set("a", SessionEntry(session_id="a"))
    with pytest.raises(ValueError, match="buckets must be an integer"):
        backend_for(f"{shared_redis}?prefix=x&buckets=many")


async def test_a_client_from_a_url_bounds_each_reply_itself(shared_redis: str, redis_prefix: str) -> None:
    """No socket_timeout in the client (redis-py would wait_for every send): the backend bounds replies."""
    backend = backend_for(f"{shared_redis}?prefix={redis_prefix}")
    if sys.version_info >= (3, 11):
        assert backend._client.connection_pool.connection_kwargs["socket_timeout"] is None
        assert backend._reply_timeout == 10
    else:
        assert backend._client.connection_pool.connection_kwargs["socket_timeout"] == 10
    mine = backend_for(f"{shared_redis}?prefix={redis_prefix}", socket_timeout=3)
    assert mine._client.connection_pool.connection_kwargs["socket_timeout"] == 3
    assert mine._reply_timeout is None
    await backend.aclose()
    await mine.aclose()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="redis-py's socket_timeout bounds replies before 3.11")
async def test_a_server_that_never_replies_fails_the_call_naming_it() -> None:
    """A server that accepts connections and then says nothing (hung, or a network cut)."""
    silent: list[anyio.abc.SocketStream] = []

    async def listen(stream: anyio.abc.SocketStream) -> None:
        silent.append(stream)
        await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, listen)
        backend = backend_for(f"redis://127.0.0.1:{port}/9?prefix=silent")
        backend._reply_timeout = 0.2
        with pytest.raises(StoreIOError, match=r"no reply within 0\.2 s") as caught:
            async with open_store(backend):
                pass
        assert caught.value.where == f"redis://127.0.0.1:{port}/9"
        assert not backend._inflight and not backend._expired and backend._watchdog is None
        # A cancellation of the caller's own is not taken for a timeout: it stays a cancellation.
        patient = backend_for(f"redis://127.0.0.1:{port}/9?prefix=silent")
        with anyio.move_on_after(0.1) as scope:
            await patient.open()
        assert scope.cancelled_caught
        assert not patient._inflight and not patient._expired
        await patient.aclose()
        assert patient._watchdog is None
        tasks.cancel_scope.cancel()
    for stream in silent:
        await stream.aclose()
    await listener.aclose()


async def test_an_existing_store_keeps_its_buckets(redis_url: str) -> None:
    async with open_store(backend_for(redis_url, buckets=3)):
        pass
    backend = backend_for(redis_url)
    async with open_store(backend):
        assert backend.buckets == 3
    with pytest.raises(StoreFormatError, match="3 bucket"):
        async with open_store(backend_for(redis_url, buckets=5)):
            pass


async def test_a_foreign_marker_is_refused(shared_redis: str, redis_prefix: str) -> None:
    async with aioredis.Redis.from_url(shared_redis) as client:
        await client.set(
            "{" + redis_prefix + "}:format", b'{"format": "aiosessions.redis", "version": 9, "buckets": 1}'
        )
    with pytest.raises(StoreFormatError, match=r"version 9.*upgrade"):
        async with open_store(f"{shared_redis}?prefix={redis_prefix}"):
            pass


async def test_a_server_that_is_not_there_is_named(redis_server: Any) -> None:
    server = redis_server()
    url = server.url
    server.kill()
    with pytest.raises(StoreIOError) as caught:
        async with open_store(f"{url}?prefix=gone"):
            pass
    assert f"127.0.0.1:{server.port}" in str(caught.value)
    assert caught.value.where is not None and str(server.port) in caught.value.where


async def test_a_unix_socket_url(redis_server: Any) -> None:
    server = redis_server()
    url = f"unix://{server.socket_path}?db=3&prefix=sock"
    async with open_store(url, flush_interval=0) as store:
        assert store.path.startswith(f"unix://{server.socket_path}?db=3")
        await store.set("k", SessionEntry(session_id="over a socket"))
    with server.client() as client:
        client.select(3)
        assert client.get("{sock/0}:s:k") == b'{"sessionId":"over a socket"}'


# -- prefixes: stores side by side --------------------------------------------------------


async def test_stores_with_different_prefixes_do_not_touch_each_other(
    shared_redis: str, redis_prefix: str
) -> None:
    other = redis_prefix + "-other"
    neighbours = {  # keys that look alike but belong to nobody
        redis_prefix + ":s:a": b"not ours",
        "{" + redis_prefix + "x/0}:s:a": b"not ours either",
        "{" + redis_prefix + "-other}:stray": b"a key of the other prefix's namespace",
    }
    async with aioredis.Redis.from_url(shared_redis) as client:
        await client.mset(neighbours)
        try:
            async with (
                open_store(f"{shared_redis}?prefix={redis_prefix}") as first,
                open_store(f"{shared_redis}?prefix={other}") as second,
            ):
                await first.set("a", SessionEntry(session_id="first"))
                await second.set("a", SessionEntry(session_id="second"))
                await second.set("b", SessionEntry(session_id="second"))
                await first.flush()
                await second.flush()
                assert [key async for key in first.keys()] == ["a"]
                assert sorted([key async for key in second.keys()]) == ["a", "b"]
                await first.delete("a")
                await first.flush()
                entry = await second.get("a")
                assert entry is not None and entry.session_id == "second"
            for key, value in neighbours.items():
                assert await client.get(key) == value
        finally:
            await client.delete(*neighbours)
            from .conftest import delete_prefix

            delete_prefix(shared_redis, other)
    assert all(
        key.startswith(b"{" + redis_prefix.encode() + b"/0}") or key.endswith(b"}:format")
        for key in prefix_keys(shared_redis, redis_prefix)
    )


# -- compare-and-swap, versions and receipts ----------------------------------------------


async def test_compare_and_swap_by_token_and_by_bytes(redis_url: str) -> None:
    one, two = backend_for(redis_url), backend_for(redis_url)
    await one.open()
    await two.open()
    try:
        assert (await one.write_batch([Write("k", b'{"n":1}', None, blind=False)], durable=True)).landed == [
            "k"
        ]
        # `two` never saw the key: it compares bytes; `one` compares its remembered token.
        assert await two.read("k") == b'{"n":1}'
        two._versions.clear()
        result = await two.write_batch([Write("k", b'{"n":2}', b'{"n":1}', blind=False)], durable=True)
        assert result.landed == ["k"]
        stale = await one.write_batch([Write("k", b'{"n":9}', b'{"n":1}', blind=False)], durable=True)
        assert stale.conflicts == {"k": b'{"n":2}'} and not stale.landed
        # The conflict taught `one` the current token: its retry lands.
        retry = await one.write_batch([Write("k", b'{"n":3}', b'{"n":2}', blind=False)], durable=True)
        assert retry.landed == ["k"]
        absent = await two.write_batch([Write("k", b"{}", None, blind=False)], durable=True)
        assert absent.conflicts == {"k": b'{"n":3}'}
        assert await one.read("k") == b'{"n":3}'
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_large_entry_is_compared_by_its_token(redis_url: str) -> None:
    big = msgspec.json.encode({"updatedAt": 1, "blob": "x" * 200_000})
    backend = backend_for(redis_url)
    await backend.open()
    try:
        await backend.write_batch([Write("big", big)], durable=True)
        stored = await backend.read("big")
        assert stored == big
        newer = big.replace(b'"updatedAt":1', b'"updatedAt":2')
        # What the script is sent: the expected version token (a few bytes), not 200 KB.
        (call,) = backend._plan([Write("big", newer, stored, blind=False)], BatchResult())
        guard, expected = call.argv[3 + 1], call.argv[3 + 4]
        assert guard == b"T" and len(expected) < 40
        result = await backend.write_batch([Write("big", newer, stored, blind=False)], durable=True)
        assert result.landed == ["big"]
        assert await backend.newest(1) == [("big", 2)]
    finally:
        await backend.aclose()


async def test_a_read_of_an_entry_held_unchanged_does_not_send_it_again(redis_url: str) -> None:
    """The read names the version token of the bytes it holds; the server answers with the token
    alone while it is current, with the bytes as soon as anyone wrote (even the same bytes)."""
    big = msgspec.json.encode({"updatedAt": 1, "blob": "x" * 200_000})
    backend, other = backend_for(redis_url), backend_for(redis_url)
    await backend.open()
    await other.open()
    try:
        await backend.write_batch([Write("big", big)], durable=True)
        # What it wrote is what it holds: the very bytes come back, none sent by the server.
        assert await backend.read("big") is big
        first = await other.read("big")
        assert first == big and first is not big
        assert await other.read("big") is first
        newer = big.replace(b'"updatedAt":1', b'"updatedAt":2')
        assert (await other.write_batch([Write("big", newer, first, blind=False)], durable=True)).landed
        assert await backend.read("big") == newer
        # The same bytes written again are a new version: sent again, compared by token after.
        assert (await other.write_batch([Write("big", newer)], durable=True)).landed
        again = await backend.read("big")
        assert again == newer and await backend.read("big") is again
        assert (await other.write_batch([Write("big", None)], durable=True)).landed
        assert await backend.read("big") is None
    finally:
        await backend.aclose()
        await other.aclose()


async def test_bytes_forgotten_while_the_server_said_unchanged_still_stand(redis_url: str) -> None:
    """What the read held can leave the cache (it is bounded) before the reply comes: the
    reply "unchanged" stands for the bytes held when the read was sent, without a second read."""
    entry = msgspec.json.encode({"updatedAt": 1, "n": 1})
    backend = backend_for(redis_url)
    await backend.open()
    try:
        await backend.write_batch([Write("k", entry)], durable=True)
        script = backend._script

        async def forget_while_waiting(name: str, keys: Any, args: Any) -> Any:
            reply = await script(name, keys, args)
            backend._forget("k")
            return reply

        backend._script = forget_while_waiting  # type: ignore[method-assign]
        trips = backend.counters()["round_trips"]
        assert await backend.read("k") is entry
        assert backend.counters()["round_trips"] == trips + 1
    finally:
        await backend.aclose()


def lose_replies(backend: RedisBackend) -> Callable[[], None]:
    """From now on the backend's batches run in the server but their replies are lost;
    the function returned puts the real sending back."""
    send = backend._send

    async def run_then_lose_the_reply(calls: Any, durable: bool) -> Any:
        await send(calls, durable)
        raise aioredis.ConnectionError("connection lost after the batch was sent")

    def restore() -> None:
        backend._send = send  # type: ignore[method-assign]

    backend._send = run_then_lose_the_reply  # type: ignore[method-assign]
    return restore


async def test_a_batch_whose_reply_was_lost_is_resolved_by_its_receipt(redis_url: str) -> None:
    """The script ran but its reply never came: the next attempt learns it landed, once."""
    backend = backend_for(redis_url)
    await backend.open()
    try:
        await backend.write_batch([Write("k", b'{"n":1}')], durable=True)
        restore = lose_replies(backend)
        write = Write("k", b'{"n":2}', b'{"n":1}', blind=False)
        lost = await backend.write_batch([write], durable=True)
        assert set(lost.in_doubt) == {"k"} and isinstance(lost.in_doubt["k"], StoreIOError)
        assert "in doubt" in str(lost.in_doubt["k"])
        restore()
        # The queue sends the same write again: it had landed, so it is not applied twice.
        again = await backend.write_batch([write], durable=True)
        assert again.landed == ["k"] and not again.conflicts
        assert await backend.read("k") == b'{"n":2}'
        assert backend.counters()["in_doubt"] == 1
    finally:
        await backend.aclose()


async def test_what_a_lost_reply_became_is_not_kept_past_close(redis_url: str) -> None:
    """A write in doubt that is never sent again (the store closes first) leaves nothing behind."""
    backend = backend_for(redis_url)
    await backend.open()
    try:
        restore = lose_replies(backend)
        assert set((await backend.write_batch([Write("k", b'{"n":1}')], durable=True)).in_doubt) == {"k"}
        restore()
        # Another key's batch resolves the doubt first; "k" itself is never written again.
        assert (await backend.write_batch([Write("other", b"{}")], durable=True)).landed == ["other"]
        assert set(backend._resolved) == {"k"} and not backend._doubts
    finally:
        await backend.aclose()
    assert not backend._resolved and not backend._doubts and not backend._reapplied_risk


async def test_a_batch_that_never_ran_is_aborted_for_good(redis_url: str, shared_redis: str) -> None:
    """Lost before it ran: its receipt is set to aborted, so a late copy of it changes nothing."""
    backend = backend_for(redis_url)
    await backend.open()
    held: list[Any] = []

    async def never_send(calls: Any, durable: bool) -> Any:
        held.extend(calls)
        raise aioredis.ConnectionError("connection refused")

    try:
        await backend.write_batch([Write("k", b'{"n":1}')], durable=True)
        send = backend._send
        backend._send = never_send  # type: ignore[method-assign]
        write = Write("k", b'{"n":2}', b'{"n":1}', blind=False)
        assert set((await backend.write_batch([write], durable=True)).in_doubt) == {"k"}
        backend._send = send  # type: ignore[method-assign]
        again = await backend.write_batch([Write("k", b'{"n":3}', b'{"n":1}', blind=False)], durable=True)
        assert again.landed == ["k"]
        # The lost batch arrives late (a command still on its way): it finds its receipt aborted.
        late = await send(held, True)
        assert late == [[b"aborted"]]
        assert await backend.read("k") == b'{"n":3}'
    finally:
        await backend.aclose()


async def test_a_replayed_batch_changes_nothing(redis_url: str) -> None:
    """redis-py resends a command whose connection dropped: the receipt makes the second run a no-op."""
    backend = backend_for(redis_url)
    await backend.open()
    try:
        calls = backend._plan([Write("a", b'{"n":1}'), Write("b", None)], BatchResult())
        first = await backend._send(calls, True)
        async with aioredis.Redis.from_url(redis_url.split("?")[0]) as client:
            await client.set(backend._entry(0, "a"), b'{"n":"changed since"}')
        second = await backend._send(calls, True)
        assert first == second == [[b"LL"]]
        assert await backend.read("a") == b'{"n":"changed since"}'
    finally:
        await backend.aclose()


async def test_round_trips_count_a_script_the_server_had_forgotten(redis_url: str) -> None:
    """A read whose script is not cached costs the refused call, three SCRIPT LOADs and the call again."""
    backend = backend_for(redis_url)
    await backend.open()
    try:
        await backend.write_batch([Write("k", b'{"n":1}')], durable=True)
        before = backend.counters()["round_trips"]
        assert await backend.read("k") == b'{"n":1}'
        assert backend.counters()["round_trips"] == before + 1
        backend._shas["read"] = "0" * 40  # as after SCRIPT FLUSH or a restart, without touching the server
        assert await backend.read("k") == b'{"n":1}'
        assert backend.counters()["round_trips"] == before + 1 + 5
        backend._shas["write"] = "0" * 40
        assert (await backend.write_batch([Write("k", b'{"n":2}')], durable=True)).landed == ["k"]
        assert backend.counters()["round_trips"] == before + 1 + 5 + 5
    finally:
        await backend.aclose()


async def test_receipts_do_not_pile_up(redis_url: str, shared_redis: str, redis_prefix: str) -> None:
    async with open_store(redis_url, flush_interval=0) as store:
        for n in range(20):
            await store.set(f"k{n % 3}", SessionEntry(session_id=str(n)))
        receipts = [key for key in prefix_keys(shared_redis, redis_prefix) if b":x:" in key]
        assert len(receipts) <= 1  # the last batch's, deleted by the next one or at close
    assert not [key for key in prefix_keys(shared_redis, redis_prefix) if b":x:" in key]


# -- listings -----------------------------------------------------------------------------


@pytest.mark.parametrize("buckets", [1, 5])
async def test_listings_from_the_indexes(redis_url: str, buckets: int) -> None:
    backend = backend_for(redis_url, buckets=buckets)
    async with open_store(backend, entry_type=dict) as store:
        for n in range(2500):
            entry: dict[str, Any] = {"sessionId": str(n)}
            if n % 7:
                entry["updatedAt"] = n % 1000
            await store.set(f"agent:{n % 4}:s{n:05d}", entry)
        await store.set("bool", {"updatedAt": True})
        await store.flush()
        assert await backend.count() == 2501
        everything = [key async for key in store.keys()]
        assert len(everything) == len(set(everything)) == 2501
        chunks = [chunk async for chunk in backend.key_chunks("agent:2:")]
        assert sorted(itertools.chain.from_iterable(chunks)) == [
            f"agent:2:s{n:05d}" for n in range(2, 2500, 4)
        ]
        expected = sorted(
            ((f"agent:{n % 4}:s{n:05d}", n % 1000 if n % 7 else None) for n in range(2500)),
            key=lambda pair: (pair[1] is None, -(pair[1] or 0), pair[0]),
        )
        expected.insert(next(i for i, pair in enumerate(expected) if pair[1] is None), ("bool", None))
        expected.sort(key=lambda pair: (pair[1] is None, -(pair[1] or 0), pair[0]))
        assert await backend.newest(50) == expected[:50]
        paged: list[tuple[str, int | None]] = []
        after = None
        while page := await backend.newest(333, after=after):
            paged.extend(page)
            after = page[-1]
        assert paged == expected
        # A change moves the session in the recency index; a delete removes it.
        await store.set(expected[-1][0], {"updatedAt": 10_000})
        await store.delete(expected[0][0])
        await store.flush()
        assert (await backend.newest(2))[0] == (expected[-1][0], 10_000)
        assert expected[0][0] not in [key for key, _ in await backend.newest(3000)]
        assert await backend.count() == 2500


# -- a server that goes away --------------------------------------------------------------


async def test_a_server_down_keeps_changes_queued_and_reports_them(redis_server: Any) -> None:
    server = redis_server("--appendonly", "yes", "--appendfsync", "always")
    url = f"{server.url}?prefix=down"
    async with open_store(url, flush_interval=3600, max_pending_keys=50) as store:
        await store.set("before", SessionEntry(session_id="before"))
        await store.flush()
        server.kill()
        await store.set("during", SessionEntry(session_id="during"))
        with pytest.raises(aiosessions.FlushError) as caught:
            await store.flush()
        assert f"127.0.0.1:{server.port}" in str(caught.value)
        assert caught.value.where is not None and str(server.port) in caught.value.where
        assert store.statistics().pending == 1
        entry = await store.get("during")  # still seen by this process
        assert entry is not None
        with pytest.raises(StoreIOError, match=str(server.port)):
            await store.get("before")
        server.start()
        await store.flush()
        assert store.statistics().pending == 0
    async with open_store(url) as store:
        assert {key async for key in store.keys()} == {"before", "during"}


async def test_aclose_with_the_server_down_says_what_is_lost(redis_server: Any) -> None:
    server = redis_server()
    url = f"{server.url}?prefix=lost"
    with pytest.raises(aiosessions.FlushError, match="2 session") as caught:
        async with open_store(url, flush_interval=3600) as store:
            await store.set("a", SessionEntry(session_id="a"))
            await store.set("b", SessionEntry(session_id="b"))
            server.kill()
    assert caught.value.unwritten == 2
    assert str(server.port) in str(caught.value.failures["a"])


async def test_a_lost_reply_then_more_updates_then_another_host_counts_exactly(redis_url: str) -> None:
    """The hard case: our batch landed but its reply was lost; we update the key again
    before we know; another host then updates on top of what landed. Every increment
    counts once: the queue resends the very write in doubt, learns that it landed, and
    re-applies only the later update to the other host's value."""

    def bump(entry: dict[str, Any] | None) -> dict[str, Any]:
        return {"n": (entry or {"n": 0})["n"] + 1}

    other = backend_for(redis_url)
    await other.open()
    try:
        async with open_store(redis_url, entry_type=dict, flush_interval=3600) as store:
            backend = store.backend
            assert isinstance(backend, RedisBackend)
            await store.update("k", bump)
            await store.flush()
            send = backend._send

            async def run_then_lose_the_reply(calls: Any, durable: bool) -> Any:
                await send(calls, durable)
                raise aioredis.ConnectionError("connection lost after the batch was sent")

            backend._send = run_then_lose_the_reply  # type: ignore[method-assign]
            await store.update("k", bump)  # 2, lands, but we do not know
            with pytest.raises(aiosessions.FlushError, match="in doubt"):
                await store.flush()
            backend._send = send  # type: ignore[method-assign]
            await store.update("k", bump)  # 3 here, queued behind the write in doubt
            # Another host adds 10 to what it reads: the 2 that landed.
            stored = await other.read("k")
            assert stored == b'{"n":2}'
            result = await other.write_batch([Write("k", b'{"n":12}', stored, blind=False)], durable=True)
            assert result.landed == ["k"]
            await store.flush()
            assert await store.get("k") == {"n": 13}
            assert backend.counters()["in_doubt"] == 1
            assert backend.counters()["in_doubt_reapplied"] == 0
        assert await other.read("k") == b'{"n":13}'
    finally:
        await other.aclose()


def _bump(entry: dict[str, Any] | None) -> dict[str, Any]:
    return {**(entry or {}), "n": (entry or {"n": 0})["n"] + 1}


async def test_an_update_right_after_a_read_starts_from_it_without_a_round_trip(redis_url: str) -> None:
    """A bot's message loop: get(), then update(); the update's base is what get() read."""
    async with open_store(redis_url, entry_type=dict, flush_interval=3600) as store:
        await store.set("k", {"n": 0})
        await store.flush()
        backend = store.backend
        assert isinstance(backend, RedisBackend)
        trips = backend.counters()["round_trips"]
        assert await store.get("k") == {"n": 0}
        assert await store.update("k", _bump) == {"n": 1}
        assert backend.counters()["round_trips"] == trips + 1  # the read; the update queued
        await store.flush()
        # Its own landed write is what it knows of the key: the next update starts from it.
        trips = backend.counters()["round_trips"]
        assert await store.update("k", _bump) == {"n": 2}
        assert backend.counters()["round_trips"] == trips
        await store.flush()
        # A caller waiting for the write gets a result from a fresh read.
        trips = backend.counters()["round_trips"]
        assert await store.update("k", _bump, durable=True) == {"n": 3}
        assert backend.counters()["round_trips"] == trips + 2  # the read, the batch


async def test_a_base_another_host_changed_since_costs_a_retry_not_an_update(redis_url: str) -> None:
    """get() here, another host's update flushed, update() here: both increments count; a
    delete in between is not undone (the update applies to no entry, as after a fresh read)."""
    async with (
        open_store(redis_url, entry_type=dict, flush_interval=3600) as here,
        open_store(redis_url, entry_type=dict, flush_interval=3600) as there,
    ):
        await here.set("k", {"n": 0, "note": "old"})
        await here.flush()
        assert await here.get("k") == {"n": 0, "note": "old"}
        await there.update("k", _bump)
        await there.flush()
        await here.update("k", _bump)  # from the stale {"n": 0}: 1 here ...
        await here.flush()  # ... but the server's compare-and-swap refuses it; re-applied to 1
        assert await there.get("k") == {"n": 2, "note": "old"}

        assert await here.get("k") == {"n": 2, "note": "old"}
        await there.delete("k")
        await there.flush()
        await here.update("k", _bump)
        await here.flush()
        assert await there.get("k") == {"n": 1}  # the old entry is not back


async def test_a_command_the_server_refuses_fails_that_write_alone(redis_url: str, shared_redis: str) -> None:
    """An entry key someone made a hash: comparing with it fails (WRONGTYPE) for that key only;
    the batch's other writes land, and nothing of the failed one was changed."""
    backend = backend_for(redis_url)
    await backend.open()
    try:
        await backend.write_batch([Write("odd", b'{"n":1}'), Write("fine", b'{"n":1}')], durable=True)
        entry = backend._entry(0, "odd")
        async with aioredis.Redis.from_url(shared_redis) as client:
            await client.delete(entry)
            await client.hset(entry, "not", "an entry")
        backend._versions.clear()  # compare by bytes: a GET of the hash
        result = await backend.write_batch(
            [
                Write("odd", b'{"n":2}', b'{"n":1}', blind=False),
                Write("fine", b'{"n":2}', b'{"n":1}', blind=False),
            ],
            durable=True,
        )
        assert result.landed == ["fine"]
        assert set(result.failed) == {"odd"} and "WRONGTYPE" in str(result.failed["odd"])
        assert await backend.read_many(["fine"]) == [b'{"n":2}']
        async with aioredis.Redis.from_url(shared_redis) as client:
            assert await client.type(entry) == b"hash"
        # A blind write replaces whatever is there.
        assert (await backend.write_batch([Write("odd", b'{"n":3}')], durable=True)).landed == ["odd"]
    finally:
        await backend.aclose()


async def test_the_bounds_hold_while_the_server_is_down(redis_server: Any) -> None:
    """A full queue on a dead server fails the writer (FlushError naming the server) instead of
    waiting forever or growing past max_pending_keys."""
    server = redis_server()
    async with open_store(f"{server.url}?prefix=bounded", flush_interval=3600, max_pending_keys=3) as store:
        server.kill()
        for key in ("a", "b", "c"):
            await store.set(key, SessionEntry(session_id=key))
        with anyio.fail_after(30), pytest.raises(aiosessions.FlushError) as caught:
            await store.set("d", SessionEntry(session_id="d"))
        assert str(server.port) in str(caught.value)
        assert store.statistics().pending == 3
        assert store.statistics().pending == 3  # refused, not queued
        server.start()
        await store.set("d", SessionEntry(session_id="d"))
        await store.flush()
    async with open_store(f"{server.url}?prefix=bounded") as store:
        assert sorted([key async for key in store.keys()]) == ["a", "b", "c", "d"]
