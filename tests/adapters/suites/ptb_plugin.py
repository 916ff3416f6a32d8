"""Our plugin for python-telegram-bot's tests/ext/test_basepersistence.py, run unchanged.

PTB's suite tests the application's use of a persistence through ``TrackingPersistence``,
a dummy of its own that keeps the data in dicts and counts every call; its assertions
read those dicts and counters. Here every method of that class is wrapped, in
place: the same dummy (the suite's oracle, counters and all), with every call also
made on our :class:`AiosessionsPersistence`, and every ``get_*`` answered by OURS
from the store -- checked equal to what the dummy holds. So the application runs on
our data, the suite's assertions stay true, and a difference fails the test.

The data the suite puts straight into the dummy (``fill_data``, direct edits before
the application loads) is written through our persistence before the first load;
``reset_tracking()`` (which empties the dummy) empties the store too. After each test
the store is closed, opened again by a new persistence, and must hold exactly what the
dummy holds (the read-back check).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosessions_suite_support import backend, forget, store_target

from aiosessions.adapters._common import items_with_prefix
from aiosessions.adapters.ptb import AiosessionsPersistence

__all__ = ["backend", "forget"]

_PLACE: dict[str, Any] = {}
_INSTANCES: list[Any] = []


def _mirror(tracking: type) -> None:
    """Wrap every method of the suite's dummy in place (a subclass would change its MRO,
    which the suite's slots test inspects): each calls the dummy's own, and ours."""
    own = {name: getattr(tracking, name) for name in dir(tracking) if not name.startswith("__")}
    init = tracking.__init__

    class Mirrored:
        def __init__(
            self, store_data: Any = None, update_interval: float = 60, fill_data: bool = False
        ) -> None:
            init(self, store_data=store_data, update_interval=update_interval, fill_data=fill_data)
            target, options = _PLACE["target"], _PLACE["options"]
            self.ours = AiosessionsPersistence(
                target, store_data=store_data, update_interval=update_interval, store_options=options
            )
            self.synced = False
            self.wipe = False
            # The application calls the persistence concurrently (asyncio.gather): the
            # wipe and the first sync must finish before any other call reaches ours.
            self.preparing = asyncio.Lock()
            _INSTANCES.append(self)

        def set_bot(self, bot: Any) -> None:
            own["set_bot"](self, bot)
            self.ours.set_bot(bot)

        def reset_tracking(self) -> None:
            own["reset_tracking"](self)
            self.wipe = True  # the store is emptied before the next call reaches it

        async def prepare(self) -> None:
            """Bring the store to what the dummy holds, before the first call reaches ours."""
            async with self.preparing:
                await self._prepare()

        async def _prepare(self) -> None:
            if self.wipe:
                self.wipe = False
                store = await self.ours._handle.store()
                for key in [key async for key, _ in items_with_prefix(store, "ptb:")]:
                    await store.delete(key)
                self.ours._digests.clear()
                self.ours._versions.clear()
            if self.synced:
                return
            self.synced = True
            for user_id, data in list(self.user_data.items()):
                await self.ours.update_user_data(user_id, data)
            for chat_id, data in list(self.chat_data.items()):
                await self.ours.update_chat_data(chat_id, data)
            await self.ours.update_bot_data(self.bot_data)
            await self.ours.update_callback_data(self.callback_data)
            for name, states in list(self.conversations.items()):
                for key, state in list(states.items()):
                    await self.ours.update_conversation(name, key, state)

        async def _got(self, what: str, expected: Any, got: Any) -> Any:
            assert got == expected, f"{what}: ours {got!r} != the dummy's {expected!r}"
            return got

        async def get_user_data(self) -> Any:
            await self.prepare()
            return await self._got(
                "user_data", await own["get_user_data"](self), await self.ours.get_user_data()
            )

        async def get_chat_data(self) -> Any:
            await self.prepare()
            return await self._got(
                "chat_data", await own["get_chat_data"](self), await self.ours.get_chat_data()
            )

        async def get_bot_data(self) -> Any:
            await self.prepare()
            return await self._got(
                "bot_data", await own["get_bot_data"](self), await self.ours.get_bot_data()
            )

        async def get_callback_data(self) -> Any:
            await self.prepare()
            expected = await own["get_callback_data"](self)
            got = await self.ours.get_callback_data()
            # The dummy's "nothing stored" is ([], {}); ours is None, as BasePersistence allows.
            await self._got("callback_data", expected, got if got is not None else ([], {}))
            return got

        async def get_conversations(self, name: str) -> Any:
            await self.prepare()
            expected = await own["get_conversations"](self, name)
            return await self._got(f"conversations {name}", expected, await self.ours.get_conversations(name))

        async def update_user_data(self, user_id: int, data: Any) -> None:
            await self.prepare()
            await own["update_user_data"](self, user_id, data)
            await self.ours.update_user_data(user_id, data)

        async def update_chat_data(self, chat_id: int, data: Any) -> None:
            await self.prepare()
            await own["update_chat_data"](self, chat_id, data)
            await self.ours.update_chat_data(chat_id, data)

        async def update_bot_data(self, data: Any) -> None:
            await self.prepare()
            await own["update_bot_data"](self, data)
            await self.ours.update_bot_data(data)

        async def update_callback_data(self, data: Any) -> None:
            await self.prepare()
            await own["update_callback_data"](self, data)
            await self.ours.update_callback_data(data)

        async def update_conversation(self, name: str, key: Any, new_state: Any) -> None:
            await self.prepare()
            await own["update_conversation"](self, name, key, new_state)
            await self.ours.update_conversation(name, key, new_state)

        async def drop_chat_data(self, chat_id: int) -> None:
            await self.prepare()
            await own["drop_chat_data"](self, chat_id)
            await self.ours.drop_chat_data(chat_id)

        async def drop_user_data(self, user_id: int) -> None:
            await self.prepare()
            await own["drop_user_data"](self, user_id)
            await self.ours.drop_user_data(user_id)

        async def refresh_user_data(self, user_id: int, user_data: Any) -> None:
            await self.prepare()
            await self.ours.refresh_user_data(user_id, user_data)
            await own["refresh_user_data"](self, user_id, user_data)

        async def refresh_chat_data(self, chat_id: int, chat_data: Any) -> None:
            await self.prepare()
            await self.ours.refresh_chat_data(chat_id, chat_data)
            await own["refresh_chat_data"](self, chat_id, chat_data)

        async def refresh_bot_data(self, bot_data: Any) -> None:
            await self.prepare()
            await self.ours.refresh_bot_data(bot_data)
            await own["refresh_bot_data"](self, bot_data)

        async def flush(self) -> None:
            await self.prepare()
            await own["flush"](self)
            await self.ours.flush()

    for name, method in vars(Mirrored).items():
        if callable(method):
            setattr(tracking, name, method)
    tracking.mirrored = True  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mirror the suite's TrackingPersistence into ours (once per module)."""
    for module in {item.module for item in items if isinstance(item, pytest.Function) and item.module}:
        tracking = getattr(module, "TrackingPersistence", None)
        if tracking is not None and not hasattr(tracking, "mirrored"):
            _mirror(tracking)


@pytest.fixture(autouse=True)
async def _ours_in_a_store(tmp_path: Path, backend: str, forget: None) -> AsyncIterator[None]:
    """Each test's store, and the read-back check of every persistence the test used.

    (After ``forget``'s setup, so before its teardown deletes a Redis store's keys.)
    """
    target, options = store_target(tmp_path, backend)
    _PLACE.update(target=target, options=options)
    _INSTANCES.clear()
    yield
    for mirrored in _INSTANCES:
        if not mirrored.synced:
            continue  # the test never reached a persistence call: nothing went to the store
        await mirrored.prepare()
        await mirrored.ours.flush()
        await _check_reopened(mirrored, target, options)
    _INSTANCES.clear()


async def _check_reopened(mirrored: Any, target: Any, options: dict[str, Any]) -> None:
    """A new persistence on the same store holds exactly what the dummy holds."""
    fresh = AiosessionsPersistence(target, store_data=mirrored.store_data, store_options=options)
    if getattr(mirrored, "bot", None) is not None:
        fresh.set_bot(mirrored.bot)
    try:
        assert await fresh.get_user_data() == dict(mirrored.user_data)
        assert await fresh.get_chat_data() == dict(mirrored.chat_data)
        assert await fresh.get_bot_data() == mirrored.bot_data
        assert (await fresh.get_callback_data() or ([], {})) == mirrored.callback_data
        for name, states in mirrored.conversations.items():
            assert await fresh.get_conversations(name) == {k: v for k, v in states.items() if v is not None}
    finally:
        await fresh.flush()
    await asyncio.sleep(0)
