"""The python-telegram-bot adapter: what PTB's own persistence tests do not check."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

pytest.importorskip("telegram", reason="the ptb extra is not installed")

from telegram import Bot, Chat, Message, User
from telegram.ext import ExtBot

from aiosessions.adapters._values import UnsupportedValueError
from aiosessions.adapters.ptb import AiosessionsPersistence

from .conftest import Place

pytestmark = pytest.mark.asyncio


def persistence(place: Place, **options: Any) -> AiosessionsPersistence:
    made = AiosessionsPersistence(place.target, store_options=place.options, **options)
    made.set_bot(ExtBot("1000:offline"))
    return made


async def test_everything_reads_back_after_a_restart_with_its_types(place: Place) -> None:
    first = persistence(place)
    when = dt.datetime(2024, 5, 1, 12, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    await first.update_user_data(42, {"visits": 3, "seen": when, "pairs": {(1, 2): {"x"}}, 7: b"\x00"})
    await first.update_user_data(-5, {})
    await first.update_chat_data(-1001234, {"title": "group"})
    await first.update_bot_data({"started": dt.date(2024, 5, 1)})
    await first.update_callback_data(([("uuid", 1714567890.5, {"a": (1, 2)})], {"query": "uuid"}))
    await first.update_conversation("signup", (42, 42), 1)
    await first.update_conversation("signup", ("inline", 7), "asking")
    await first.flush()

    second = persistence(place)
    users = await second.get_user_data()
    assert users == {42: {"visits": 3, "seen": when, "pairs": {(1, 2): {"x"}}, 7: b"\x00"}, -5: {}}
    assert all(type(k) is int for k in users), "user ids come back as int"
    assert users[42]["seen"].tzinfo is ZoneInfo("Europe/Berlin")
    assert await second.get_chat_data() == {-1001234: {"title": "group"}}
    assert await second.get_bot_data() == {"started": dt.date(2024, 5, 1)}
    assert await second.get_callback_data() == ([("uuid", 1714567890.5, {"a": (1, 2)})], {"query": "uuid"})
    conversations = await second.get_conversations("signup")
    assert conversations == {(42, 42): 1, ("inline", 7): "asking"}
    assert all(type(k) is tuple for k in conversations), "conversation keys come back as tuples"
    assert await second.get_conversations("other") == {}
    await second.flush()


async def test_dropped_and_ended_data_stays_gone_after_a_restart(place: Place) -> None:
    first = persistence(place)
    await first.update_user_data(1, {"a": 1})
    await first.update_chat_data(2, {"b": 2})
    await first.update_conversation("c", (1,), 3)
    await first.flush()
    second = persistence(place)
    assert await second.get_user_data() == {1: {"a": 1}}
    await second.drop_user_data(1)
    await second.drop_chat_data(2)
    await second.update_conversation("c", (1,), None)
    await second.flush()
    third = persistence(place)
    assert (await third.get_user_data(), await third.get_chat_data(), await third.get_conversations("c")) == (
        {},
        {},
        {},
    )
    await third.flush()


async def test_unchanged_data_is_not_written_again(place: Place) -> None:
    first = persistence(place)
    await first.update_user_data(1, {"a": [1, 2]})
    store = await first._handle.store()
    before = await store.updated_at("ptb:user:1")
    writes = store.statistics().writes if hasattr(store.statistics(), "writes") else None
    await first.update_user_data(1, {"a": [1, 2]})
    assert await store.updated_at("ptb:user:1") == before
    if writes is not None:
        assert store.statistics().writes == writes
    await first.update_user_data(1, {"a": [1, 2, 3]})
    assert await store.updated_at("ptb:user:1") > before  # type: ignore[operator]
    await first.flush()

    second = persistence(place)
    await second.get_user_data()  # what it loaded counts as written
    store = await second._handle.store()
    version = await store.updated_at("ptb:user:1")
    await second.update_user_data(1, {"a": [1, 2, 3]})
    assert await store.updated_at("ptb:user:1") == version
    await second.flush()


async def test_loading_lists_only_this_namespace_and_kind(place: Place) -> None:
    handle = place.handle()
    store = await handle.store()
    for i in range(50):
        await store.set(f"agent:main:telegram:direct:{i}", {"updatedAt": i})
        await store.set(f"other:user:{i}", {"data": {"not": "ours"}})
    await store.set("ptb:user:x", {"data": {}})  # not an id: not a user of ours
    ours = AiosessionsPersistence(store, namespace="ptb")
    await ours.update_user_data(3, {"me": True})
    await ours.update_chat_data(3, {"chat": True})
    assert await ours.get_user_data() == {3: {"me": True}}
    assert await ours.get_chat_data() == {3: {"chat": True}}
    await ours.flush()
    assert not store.closed, "a store handed in stays open"
    await handle.aclose()


async def test_telegram_objects_and_the_bot_are_kept(place: Place) -> None:
    first = persistence(place)
    message = Message(
        message_id=5,
        date=dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc),
        chat=Chat(id=-100, type="supergroup", title="t"),
        from_user=User(id=7, is_bot=False, first_name="Ada"),
        text="hi",
        api_kwargs={"future_field": 1},
    )
    await first.update_user_data(7, {"last": message, "bot": first.bot})
    await first.flush()
    second = persistence(place)
    got = (await second.get_user_data())[7]
    assert type(got["last"]) is Message and got["last"].to_dict() == message.to_dict()
    assert got["last"].date == message.date and got["last"].api_kwargs == {"future_field": 1}
    assert got["last"].get_bot() is second.bot, "read Telegram objects are bound to the bot"
    assert got["bot"] is second.bot
    await second.flush()


async def test_what_cannot_be_kept_raises_a_clear_error_and_writes_nothing(place: Place) -> None:
    class Cart:
        pass

    first = persistence(place)
    await first.update_user_data(42, {"items": [1]})
    with pytest.raises(UnsupportedValueError, match=r"^user_data\[42\]\['cart'\]: cannot store a .*Cart"):
        await first.update_user_data(42, {"items": [1, 2], "cart": Cart()})
    with pytest.raises(TypeError, match="bot_data\\['f'\\]"):
        await first.update_bot_data({"f": lambda: None})
    assert await first.get_user_data() == {42: {"items": [1]}}
    await first.flush()


async def test_refresh_takes_in_another_process_change_in_place(place: Place) -> None:
    mine = persistence(place)
    theirs = persistence(place)
    await mine.update_user_data(1, {"n": 1})
    await mine.flush()
    await theirs.get_user_data()
    user_data = {"n": 1}
    await theirs.refresh_user_data(1, user_data)
    assert user_data == {"n": 1}, "unchanged elsewhere: left alone"
    user_data["local"] = True
    await theirs.refresh_user_data(1, user_data)
    assert user_data == {"n": 1, "local": True}, "unsaved local changes are not clobbered by a no-op"
    await mine.update_user_data(1, {"n": 2})
    await mine.flush()
    await theirs.refresh_user_data(1, user_data)
    assert user_data == {"n": 2}
    await mine.drop_user_data(1)
    await mine.flush()
    await theirs.refresh_user_data(1, user_data)
    assert user_data == {}
    quiet = persistence(place, refresh=False)
    data = {"x": 1}
    await quiet.refresh_user_data(1, data)
    assert data == {"x": 1}
    for each in (theirs, quiet):
        await each.flush()


async def test_refuses_a_store_of_another_entry_type(place: Place) -> None:
    import aiosessions

    handle = place.handle()
    await handle.store()
    with pytest.raises(TypeError, match="entry_type=dict"):
        async with aiosessions.open_store(place.target, **place.options) as typed:
            AiosessionsPersistence(typed)
    await handle.aclose()


async def test_a_plain_bot_is_refused_when_callback_data_is_kept(place: Place) -> None:
    with pytest.raises(TypeError, match="ExtBot"):
        AiosessionsPersistence(place.target).set_bot(Bot("1000:offline"))


async def test_loading_asks_the_store_for_its_prefix_only(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_user_data/get_chat_data/get_conversations list by prefix (cost of the matches only)."""
    ours = persistence(place)
    await ours.update_user_data(1, {"a": 1})
    await ours.update_conversation("signup", (1, 1), 2)
    store = await ours._handle.store()
    asked: list[str] = []
    real = store.items

    def spy(prefix: str = "", **options: Any) -> Any:
        asked.append(prefix)
        return real(prefix, **options)

    monkeypatch.setattr(store, "items", spy)
    assert await ours.get_user_data() == {1: {"a": 1}}
    assert await ours.get_chat_data() == {}
    assert await ours.get_conversations("signup") == {(1, 1): 2}
    assert asked == ["ptb:user:", "ptb:chat:", "ptb:conv:signup:"]
    await ours.flush()
