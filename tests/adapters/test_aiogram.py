"""The aiogram adapter: what aiogram's own storage tests do not check."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("aiogram", reason="the aiogram extra is not installed")

from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import StorageKey
from aiogram.types import Chat, Message, User
from hypothesis import given
from hypothesis import strategies as st

import aiosessions.adapters._lease as lease_module
import aiosessions.adapters.aiogram as adapter
from aiosessions import LockTimeoutError
from aiosessions._keys import validate_key
from aiosessions.adapters.aiogram import AiosessionsStorage

from .conftest import BACKENDS, Place, delete_redis_prefix

ROOT = Path(__file__).resolve().parents[2]
KEY = StorageKey(bot_id=1, chat_id=-100500, user_id=7)

ints = st.integers(min_value=-(2**63), max_value=2**63)
storage_keys = st.builds(
    StorageKey,
    bot_id=ints,
    chat_id=ints,
    user_id=ints,
    thread_id=st.none() | ints,
    business_connection_id=st.none() | st.text(),
    destiny=st.just("default") | st.text(),
)


def parse(key: str) -> StorageKey:
    """The inverse of key_of, written from the documented format: if it exists, key_of is injective."""
    parts = key.split(":")
    assert parts[:2] == ["aiogram", "bot"] and parts[3] == "chat" and parts[5] == "user", key
    fields: dict[str, Any] = {"bot_id": int(parts[2]), "chat_id": int(parts[4]), "user_id": int(parts[6])}
    rest = parts[7:]
    names = {"thread": "thread_id", "bc": "business_connection_id", "destiny": "destiny"}
    order = list(names)
    while rest:
        tag, value = rest[0], rest[1]
        assert tag in order, key
        order = order[order.index(tag) + 1 :]  # each optional part at most once, in order
        unescaped = value.replace("%3A", ":").replace("%00", "\x00").replace("%25", "%")
        fields[names[tag]] = int(value) if tag == "thread" else unescaped
        rest = rest[2:]
    assert fields.get("destiny") != "default", "the default destiny is never written"
    return StorageKey(**fields)


@given(storage_keys)
def test_key_mapping_is_injective_over_every_field(key: StorageKey) -> None:
    name = AiosessionsStorage("unused").key_of(key)
    validate_key(name)
    assert parse(name) == key


@given(storage_keys, storage_keys)
def test_distinct_storage_keys_get_distinct_session_keys(a: StorageKey, b: StorageKey) -> None:
    storage = AiosessionsStorage("unused")
    assert (storage.key_of(a) == storage.key_of(b)) == (a == b)


def test_key_mapping_is_readable() -> None:
    storage = AiosessionsStorage("unused")
    assert storage.key_of(KEY) == "aiogram:bot:1:chat:-100500:user:7"
    full = StorageKey(
        bot_id=1, chat_id=2, user_id=3, thread_id=0, business_connection_id="b:c%", destiny="quiz"
    )
    assert storage.key_of(full) == "aiogram:bot:1:chat:2:user:3:thread:0:bc:b%3Ac%25:destiny:quiz"


class Form(StatesGroup):
    name = State()


@pytest_asyncio.fixture
async def storage(place: Place) -> Any:
    storage = AiosessionsStorage(place.target, store_options=place.options)
    yield storage
    await storage.close()


@pytest.mark.asyncio
async def test_state_and_data_live_in_one_entry_and_never_overwrite_each_other(
    storage: AiosessionsStorage,
) -> None:
    await storage.set_state(KEY, Form.name)
    await storage.set_data(KEY, {"a": 1})
    await storage.set_state(KEY, "other")
    assert await storage.get_data(KEY) == {"a": 1}
    await storage.update_data(KEY, {"b": (1, 2)})
    assert await storage.get_state(KEY) == "other"
    store = await storage._handle.store()
    entry = await store.get(storage.key_of(KEY))
    assert entry is not None and set(entry) == {"state", "data", "updatedAt"}
    assert entry["data"] == {"a": 1, "b": {"$tuple": [1, 2]}}
    assert await store.updated_at(storage.key_of(KEY)) == entry["updatedAt"]
    await storage.set_state(KEY, None)
    await storage.set_data(KEY, {})
    assert await store.get(storage.key_of(KEY)) is None, "nothing left: the session is deleted"


@pytest.mark.asyncio
async def test_copies_are_returned_never_shared_objects(storage: AiosessionsStorage) -> None:
    data: dict[str, Any] = {"items": [1]}
    await storage.set_data(KEY, data)
    data["items"].append(2)
    got = await storage.get_data(KEY)
    assert got == {"items": [1]}
    got["items"].append(3)
    merged = await storage.update_data(KEY, {})
    merged["items"].append(4)
    assert await storage.get_data(KEY) == {"items": [1]}


@pytest.mark.asyncio
async def test_values_keep_their_types_and_unsupported_ones_are_refused(storage: AiosessionsStorage) -> None:
    when = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)
    message = Message(
        message_id=5,
        date=when,
        chat=Chat(id=-100500, type="supergroup"),
        from_user=User(id=7, is_bot=False, first_name="Ada"),
        text="hi",
    )
    await storage.set_data(
        KEY, {"when": when, "ids": {1, 2}, "pair": (1, "x"), "by_id": {7: "ada"}, "m": message}
    )
    got = await storage.get_data(KEY)
    assert got == {"when": when, "ids": {1, 2}, "pair": (1, "x"), "by_id": {7: "ada"}, "m": message}
    assert type(got["m"]) is Message and got["m"].from_user == message.from_user
    with pytest.raises(TypeError, match=r"data\['bad'\]: cannot store a .*object"):
        await storage.update_data(KEY, {"bad": object()})
    assert (await storage.get_data(KEY))["pair"] == (1, "x"), "a refused update changes nothing"


@pytest.mark.asyncio
async def test_concurrent_update_data_from_many_tasks_loses_nothing(storage: AiosessionsStorage) -> None:
    async def add(i: int) -> None:
        await storage.update_data(KEY, {f"k{i}": i})

    await asyncio.gather(*(add(i) for i in range(300)))
    assert await storage.get_data(KEY) == {f"k{i}": i for i in range(300)}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    offset = [0]
    real = adapter.now_ms
    monkeypatch.setattr(adapter, "now_ms", lambda: real() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += int(seconds * 1000)

    yield advance


@pytest.mark.asyncio
async def test_state_and_data_expire_separately(place: Place, clock: Callable[[float], None]) -> None:
    storage = AiosessionsStorage(
        place.target, state_ttl=10, data_ttl=dt.timedelta(seconds=60), store_options=place.options
    )
    other = StorageKey(bot_id=1, chat_id=2, user_id=2)
    await storage.set_state(KEY, "asking")
    await storage.set_data(KEY, {"a": 1})
    await storage.set_state(other, "asking")
    clock(11)
    assert await storage.get_state(KEY) is None
    assert await storage.get_data(KEY) == {"a": 1}
    assert await storage.update_data(KEY, {"b": 2}) == {"a": 1, "b": 2}, "a write renews the data's ttl"
    clock(59)
    assert await storage.get_data(KEY) == {"a": 1, "b": 2}
    clock(2)
    assert await storage.get_data(KEY) == {}
    store = await storage._handle.store()
    assert await store.get(storage.key_of(KEY)) is None, "an expired session is deleted when read"
    assert await store.contains(storage.key_of(other))
    assert await storage.purge_expired() == 1
    assert not await store.contains(storage.key_of(other))
    await storage.close()


@pytest.mark.asyncio
async def test_isolation_excludes_tasks_and_its_lock_table_stays_empty(storage: AiosessionsStorage) -> None:
    isolation = storage.create_isolation()
    assert isolation, "an isolation holding no lock is still true (aiogram tests `isolation or ...`)"
    inside: list[int] = []
    overlaps = 0

    async def handler(i: int) -> None:
        nonlocal overlaps
        async with isolation.lock(KEY):
            inside.append(i)
            overlaps += len(inside) > 1
            await asyncio.sleep(0)
            inside.remove(i)

    await asyncio.gather(*(handler(i) for i in range(30)))
    assert overlaps == 0
    for i in range(200):  # many distinct keys, one after the other
        async with isolation.lock(StorageKey(bot_id=1, chat_id=i, user_id=i)):
            assert isolation.held == 1
    assert isolation.held == 0
    store = await storage._handle.store()
    assert [key async for key in store.keys()] == [], "released locks leave nothing in the store"


@pytest.mark.asyncio
async def test_a_dead_holders_lease_expires_and_a_live_one_times_out(storage: AiosessionsStorage) -> None:
    store = await storage._handle.store()
    lock_key = storage.key_of(KEY, prefix="aiogram-lock")
    await store.set(lock_key, {"owner": "dead", "expiresAt": lease_module.now_ms() - 1, "pid": 1})
    async with storage.create_isolation().lock(KEY):
        assert (await store.get(lock_key))["owner"] != "dead"
    await store.set(lock_key, {"owner": "alive", "expiresAt": lease_module.now_ms() + 60_000, "pid": 2})
    with pytest.raises(LockTimeoutError, match="held by pid 2"):
        async with storage.create_isolation(wait_timeout=0.2).lock(KEY):
            pass


@pytest.mark.slow
def test_two_processes_share_one_store_through_the_adapter(tmp_path: Path) -> None:
    """Isolation excludes across processes (a read-then-write counter loses nothing), and
    update_data is atomic across processes (no merged key lost); on each backend."""
    rounds = 30
    places = {backend: Place(backend, tmp_path / backend) for backend in BACKENDS}
    for place in places.values():
        place.path.parent.mkdir()
    args = [f"{place.target}|{backend}|{place.path}.go" for backend, place in places.items()]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.adapters._aiogram_worker", name, str(rounds), *args], cwd=ROOT
        )
        for name in ("a", "b")
    ]
    try:
        for place in places.values():
            Path(f"{place.path}.go").touch()
        assert [w.wait(timeout=300) for w in workers] == [0, 0]

        async def check(place: Place) -> None:
            storage = AiosessionsStorage(place.target, store_options=place.options)
            try:
                assert await storage.get_data(StorageKey(bot_id=1, chat_id=1, user_id=1)) == {
                    "count": 2 * rounds
                }
                merged = await storage.get_data(StorageKey(bot_id=1, chat_id=2, user_id=2))
                assert merged == {f"{n}-{i}": i for n in ("a", "b") for i in range(rounds)}
            finally:
                await storage.close()

        for place in places.values():
            asyncio.run(check(place))
    finally:
        for place in places.values():
            if place.redis_prefix is not None:
                delete_redis_prefix(place.redis_prefix)
