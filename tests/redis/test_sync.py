"""Redis tests outside an asyncio test: the recency code's order, and trio."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st

from aiosessions import open_store
from aiosessions.backends._redis import decode_member, recency_code

recency = st.one_of(st.none(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70))
keys = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8
)


@given(st.lists(st.tuples(recency, keys), min_size=1, max_size=30))
def test_the_recency_code_sorts_newest_first_then_by_key(pairs: list[tuple[int | None, str]]) -> None:
    members = sorted({recency_code(at) + key.encode() for at, key in pairs})
    decoded = [decode_member(member) for member in members]
    assert decoded == sorted(
        {(key, at) for at, key in pairs}, key=lambda pair: (pair[1] is None, -(pair[1] or 0), pair[0])
    )


def test_a_store_on_trio(redis_url: str) -> None:
    """Under trio the client runs on an asyncio loop in a thread of its own: the same store."""
    import threading

    import trio

    from aiosessions import DELETE, SessionEntry

    def bump(entry: SessionEntry | None) -> SessionEntry:
        return SessionEntry(session_id="n", total_tokens=(entry.total_tokens if entry else 0) + 1)

    def ours() -> set[threading.Thread]:
        return {thread for thread in threading.enumerate() if thread.name == "aiosessions-redis"}

    async def main() -> None:
        before = ours()
        async with open_store(redis_url, flush_interval=0.01) as store:
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    for _ in range(10):
                        nursery.start_soon(store.update, "counter", bump)
            await store.set("a", SessionEntry(session_id="a", updated_at=5))
            await store.flush()
            entry = await store.get("counter")
            assert entry is not None and entry.total_tokens == 200
            assert sorted([key async for key in store.keys()]) == ["a", "counter"]
            assert await store.backend.newest(1) == [("a", 5)]  # type: ignore[attr-defined]
            # A call cancelled on the way is over when the cancellation arrives.
            with trio.move_on_after(0):
                await store.get("a")
            await store.update("a", lambda entry: DELETE)
            assert len(ours() - before) == 1  # the store's loop thread
        assert ours() == before  # stopped with the store

    anyio.run(main, backend="trio")


def test_a_client_of_your_own_on_trio(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from aiosessions import SessionEntry
    from aiosessions.backends import RedisBackend

    url, prefix = redis_url.split("?prefix=")

    async def main() -> None:
        pool = aioredis.ConnectionPool.from_url(url)
        async with open_store(RedisBackend(pool, prefix=prefix), flush_interval=0) as store:
            await store.set("k", SessionEntry(session_id="mine"))
            entry = await store.get("k")
            assert entry is not None and entry.session_id == "mine"

    anyio.run(main, backend="trio")


def test_import_aiosessions_does_not_import_redis() -> None:
    import subprocess
    import sys

    code = (
        "import sys, aiosessions, aiosessions.backends; "
        "assert not [m for m in sys.modules if m == 'redis' or m.startswith('redis.')], 'redis imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
