"""An aiogram 3 bot whose FSM state and data live in aiosessions, offline.

    python examples/aiogram_bot.py

No network and no token: the bot's requests go to a session that answers like the Bot
API, and the updates are a scripted chat fed through the dispatcher's own routing
(``Dispatcher.feed_update``), with the storage's cross-process event isolation on.
Half-way through the conversation the dispatcher shuts down (closing the storage and
its store) and a new dispatcher, with a new storage on the same store, carries on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.base import BaseSession
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import Chat, Message, Update, User

from aiosessions.adapters.aiogram import AiosessionsStorage

BOT = User(id=1000, is_bot=True, first_name="Demo", username="demo_bot")
USER = User(id=42, is_bot=False, first_name="Ada")
CHAT = Chat(id=42, type="private")


class OfflineBotAPI(BaseSession):
    """Answers the Bot API calls the example makes, and prints what the bot says."""

    async def make_request(self, bot: Bot, method: TelegramMethod[Any], timeout: int | None = None) -> Any:
        if isinstance(method, SendMessage):
            print(f"  bot: {method.text}")
            return Message(message_id=1, date=dt.datetime.now(dt.timezone.utc), chat=CHAT, text=method.text)
        raise NotImplementedError(type(method).__name__)

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError
        yield b""

    async def close(self) -> None:
        pass


class Signup(StatesGroup):
    name = State()
    age = State()


async def start(message: Message, state: FSMContext) -> None:
    await state.set_state(Signup.name)
    await message.answer("Hi! What is your name?")


async def got_name(message: Message, state: FSMContext) -> None:
    await state.update_data(name=message.text, since=message.date)  # a datetime: kept as one
    await state.set_state(Signup.age)
    await message.answer(f"Nice to meet you, {message.text}. How old are you?")


async def got_age(message: Message, state: FSMContext) -> None:
    data = await state.get_data()
    since = data["since"]
    await message.answer(
        f"{data['name']}, {message.text}: noted (we met at {since:%H:%M} UTC, a {type(since).__name__})."
    )
    await state.clear()


def build(store: Path) -> Dispatcher:
    storage = AiosessionsStorage(store)
    dp = Dispatcher(storage=storage, events_isolation=storage.create_isolation())
    router = Router()
    router.message.register(start, Command("start"))
    router.message.register(got_name, Signup.name, F.text)
    router.message.register(got_age, Signup.age, F.text)
    dp.include_router(router)
    return dp


async def say(dp: Dispatcher, bot: Bot, update_id: int, text: str) -> None:
    print(f" user: {text}")
    when = dt.datetime(2024, 5, 1, 12, update_id, tzinfo=dt.timezone.utc)
    message = Message(message_id=update_id, date=when, chat=CHAT, from_user=USER, text=text)
    await dp.feed_update(bot, Update(update_id=update_id, message=message))


async def main() -> None:
    bot = Bot("1000:offline", session=OfflineBotAPI())
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "sessions.json"
        print("bot 1 starts")
        dp = build(store)
        await dp.emit_startup(bot=bot)
        await say(dp, bot, 1, "/start")
        await say(dp, bot, 2, "Ada")
        await dp.emit_shutdown(bot=bot)  # closes the storage: the store is flushed and closed
        print("bot 1 stopped; bot 2 starts on the same store")
        dp = build(store)
        await dp.emit_startup(bot=bot)
        await say(dp, bot, 3, "36")
        await say(dp, bot, 4, "37")  # the conversation has ended: no handler answers
        await dp.emit_shutdown(bot=bot)
        print("bot 2 stopped")


if __name__ == "__main__":
    asyncio.run(main())
