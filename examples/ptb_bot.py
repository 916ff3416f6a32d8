"""A python-telegram-bot bot whose conversation and user data live in aiosessions, offline.

    python examples/ptb_bot.py

No network and no token: the bot's requests go to a stand-in that answers like the Bot
API, and the updates are a scripted chat fed through the application's own dispatch
(``Application.process_update``). Half-way through the conversation the bot is shut
down (the persistence is flushed and its store closed) and a new application, with a
new persistence on the same store, carries the conversation on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

from telegram import Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    filters,
)
from telegram.request import BaseRequest, RequestData

from aiosessions.adapters.ptb import AiosessionsPersistence

BOT = {"id": 1000, "is_bot": True, "first_name": "Demo", "username": "demo_bot"}
USER = {"id": 42, "is_bot": False, "first_name": "Ada"}
CHAT = {"id": 42, "type": "private"}
NAME, AGE = range(2)


class OfflineBotAPI(BaseRequest):
    """Answers the Bot API calls the example makes, and prints what the bot says."""

    @property
    def read_timeout(self) -> float | None:
        return None

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def do_request(
        self, url: str, method: str, request_data: RequestData | None = None, **kwargs: Any
    ) -> tuple[int, bytes]:
        call = url.rsplit("/", 1)[-1]
        params = request_data.parameters if request_data else {}
        if call == "getMe":
            result: Any = BOT
        elif call == "sendMessage":
            print(f"  bot: {params['text']}")
            result = {"message_id": 1, "date": 0, "chat": CHAT, "from": BOT, "text": params["text"]}
        else:
            result = True
        return 200, json.dumps({"ok": True, "result": result}).encode()


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    assert update.message is not None
    await update.message.reply_text("Hi! What is your name?")
    return NAME


async def name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    assert update.message is not None and context.user_data is not None
    context.user_data["name"] = update.message.text
    context.user_data["since"] = update.message.date  # a datetime: kept as one
    await update.message.reply_text(f"Nice to meet you, {update.message.text}. How old are you?")
    return AGE


async def age(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    assert update.message is not None and context.user_data is not None
    since = context.user_data["since"]
    await update.message.reply_text(
        f"{context.user_data['name']}, {update.message.text}: noted "
        f"(we met at {since:%H:%M} UTC, a {type(since).__name__})."
    )
    return ConversationHandler.END


def build(store: Path) -> Application[Any, Any, Any, Any, Any, Any]:
    persistence = AiosessionsPersistence(store)
    app = (
        ApplicationBuilder()
        .token("1000:offline")
        .request(OfflineBotAPI())
        .get_updates_request(OfflineBotAPI())
        .persistence(persistence)
        .build()
    )
    app.add_handler(
        ConversationHandler(
            entry_points=[CommandHandler("start", start)],
            states={
                NAME: [MessageHandler(filters.TEXT & ~filters.COMMAND, name)],
                AGE: [MessageHandler(filters.TEXT & ~filters.COMMAND, age)],
            },
            fallbacks=[],
            name="signup",
            persistent=True,
        )
    )
    return app


async def say(app: Application[Any, Any, Any, Any, Any, Any], update_id: int, text: str) -> None:
    print(f" user: {text}")
    message: dict[str, Any] = {
        "message_id": update_id,
        "date": int(dt.datetime(2024, 5, 1, 12, update_id, tzinfo=dt.timezone.utc).timestamp()),
        "chat": CHAT,
        "from": USER,
        "text": text,
    }
    if text.startswith("/"):
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text)}]
    await app.process_update(Update.de_json({"update_id": update_id, "message": message}, app.bot))


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "sessions.json"
        print("bot 1 starts")
        async with build(store) as app:  # initialize() loads; shutdown() saves and flushes
            await say(app, 1, "/start")
            await say(app, 2, "Ada")
        print("bot 1 stopped; bot 2 starts on the same store")
        async with build(store) as app:
            await say(app, 3, "36")
            await say(app, 4, "37")  # the conversation has ended: no handler answers
        print("bot 2 stopped")


if __name__ == "__main__":
    asyncio.run(main())
