"""python-telegram-bot (v21+) persistence in an aiosessions store.

Wiring it in (``pip install "aiosessions[ptb]"``)::

    from telegram.ext import ApplicationBuilder
    from aiosessions.adapters.ptb import AiosessionsPersistence

    persistence = AiosessionsPersistence("state/sessions.json")
    app = ApplicationBuilder().token(TOKEN).persistence(persistence).build()
    app.run_polling()  # loads at start, saves every update_interval, flushes at stop

Every user's and chat's data is a session of its own, so a change writes one small
entry and loading reads only this bot's keys (listed by prefix)::

    ptb:user:<user_id>                 {"data": {...}, "updatedAt": <ms>}
    ptb:chat:<chat_id>                 {"data": {...}, "updatedAt": <ms>}
    ptb:bot_data                       {"data": {...}, "updatedAt": <ms>}
    ptb:callback_data                  {"data": [...], "updatedAt": <ms>}
    ptb:conv:<name>:<key>              {"key": [...], "state": ..., "updatedAt": <ms>}

(``ptb`` is the ``namespace``: give each bot sharing a store its own). Values are JSON
that keeps their Python types -- datetimes, tuples, sets, bytes, non-string dict keys,
Telegram objects -- and anything else is refused with a ``TypeError`` saying where it
is (see ``aiosessions.adapters._values``); nothing is pickled.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import telegram
from telegram.ext import BasePersistence, PersistenceInput
from telegram.ext._utils.types import CDCData, ConversationDict, ConversationKey

from ._common import Record, StoreHandle, StoreTarget, items_with_prefix, key_part, next_updated_at
from ._values import ValueCodec

__all__ = ["AiosessionsPersistence"]

_JSON = msgspec.json.Encoder()
Data = dict[Any, Any]


class _TelegramObjects:
    """Keeps Telegram objects as ``{"$telegram": [class name, to_dict()]}``; the bot as a reference."""

    tag = "$telegram"

    def __init__(self, persistence: AiosessionsPersistence) -> None:
        self._persistence = persistence

    def dump(self, value: object) -> tuple[str, Any] | None:
        if isinstance(value, telegram.Bot):
            return "Bot", None  # the application's bot is put back on load, as PicklePersistence does
        if not isinstance(value, telegram.TelegramObject):
            return None
        for cls in type(value).__mro__:
            if getattr(telegram, cls.__name__, None) is cls:
                return cls.__name__, value.to_dict()
        return None  # pragma: no cover - every TelegramObject derives from an exported class

    def load(self, name: str, data: Any) -> object:
        bot = getattr(self._persistence, "bot", None)
        if name == "Bot":
            if bot is None:
                raise ValueError("a stored reference to the bot, read before the persistence has a bot")
            return bot
        cls = getattr(telegram, name, None)
        if not (isinstance(cls, type) and issubclass(cls, telegram.TelegramObject)):
            raise ValueError(f"{name!r} is not a class of telegram")
        return cls.de_json(data, bot)


def _digest(encoded: Any) -> bytes:
    return hashlib.blake2b(_JSON.encode(encoded), digest_size=16).digest()


def _conversation_part(item: object) -> str:
    """One member of a conversation key: an int bare, a str quoted (so "5" and 5 differ)."""
    if isinstance(item, int) and not isinstance(item, bool):
        return str(item)
    if isinstance(item, str):
        return '"' + key_part(item) + '"'
    raise TypeError(f"conversation keys hold ints and strs, not {type(item).__name__}")


class AiosessionsPersistence(BasePersistence[Data, Data, Data]):
    """A ``telegram.ext.BasePersistence`` keeping every kind of data in an aiosessions store.

    :param store: a store path (or URL), opened when the application loads its data
        and closed by :meth:`flush` (at the application's shutdown), opened again if
        used after; or an open ``entry_type=dict`` store, which stays yours to close.
    :param namespace: the first part of every key; one per bot sharing a store.
    :param store_data: which kinds of data to keep (all by default).
    :param update_interval: seconds between the application's saves.
    :param refresh: before each update, re-read the user's, chat's and bot's data if
        another process changed it since this one read or wrote it (one cheap check
        of ``updatedAt`` each); False never re-reads.
    :param store_options: options for ``open_store`` when ``store`` is a path.

    User, chat and bot data must be dicts (the default ``ContextTypes``).
    """

    __slots__ = ("_codec", "_digests", "_handle", "_namespace", "_refresh", "_versions")

    def __init__(
        self,
        store: StoreTarget,
        *,
        namespace: str = "ptb",
        store_data: PersistenceInput | None = None,
        update_interval: float = 60,
        refresh: bool = True,
        store_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(store_data=store_data, update_interval=update_interval)
        self._handle = StoreHandle(store, what="AiosessionsPersistence", options=store_options)
        self._namespace = key_part(namespace)
        self._refresh = refresh
        self._codec = ValueCodec((_TelegramObjects(self),))
        #: What this process last read or wrote, by key: the data's digest (to skip
        #: writing it unchanged) and the entry's updatedAt (to see another process's change).
        self._digests: dict[str, bytes] = {}
        self._versions: dict[str, int] = {}

    # -- keys ----------------------------------------------------------------------

    def key_of(self, kind: str, ident: int | None = None) -> str:
        """The session key of ``kind`` ("user", "chat", "bot_data", "callback_data") data."""
        return f"{self._namespace}:{kind}" if ident is None else f"{self._namespace}:{kind}:{ident}"

    def conversation_key_of(self, name: str, key: ConversationKey) -> str:
        """The session key of conversation ``name``'s state for ``key``."""
        return f"{self._namespace}:conv:{key_part(name)}:" + ":".join(_conversation_part(k) for k in key)

    # -- loading -------------------------------------------------------------------

    async def get_user_data(self) -> dict[int, Data]:
        """Every user's data, listed by key prefix (nothing else of the store is read)."""
        return await self._load_all("user")

    async def get_chat_data(self) -> dict[int, Data]:
        """Every chat's data, listed by key prefix (nothing else of the store is read)."""
        return await self._load_all("chat")

    async def get_bot_data(self) -> Data:
        """The bot's data (``{}`` if none was stored)."""
        data = await self._load(self.key_of("bot_data"))
        return {} if data is None else data

    async def get_callback_data(self) -> CDCData | None:
        """The callback data cache's contents, or None if none was stored."""
        data = await self._load(self.key_of("callback_data"))
        return None if data is None else data

    async def get_conversations(self, name: str) -> ConversationDict:
        """The states of conversation ``name``, by key (listed by key prefix)."""
        store = await self._handle.store()
        prefix = f"{self._namespace}:conv:{key_part(name)}:"
        states: ConversationDict = {}
        async for key, entry in items_with_prefix(store, prefix):
            states[tuple(entry["key"])] = self._remember(key, entry, "state")
        return states

    # -- saving --------------------------------------------------------------------

    async def update_user_data(self, user_id: int, data: Data) -> None:
        """Save one user's data (skipped when unchanged since it was last read or written)."""
        await self._save(self.key_of("user", user_id), data, f"user_data[{user_id}]")

    async def update_chat_data(self, chat_id: int, data: Data) -> None:
        """Save one chat's data (skipped when unchanged since it was last read or written)."""
        await self._save(self.key_of("chat", chat_id), data, f"chat_data[{chat_id}]")

    async def update_bot_data(self, data: Data) -> None:
        """Save the bot's data (skipped when unchanged)."""
        await self._save(self.key_of("bot_data"), data, "bot_data")

    async def update_callback_data(self, data: CDCData) -> None:
        """Save the callback data cache's contents (skipped when unchanged)."""
        await self._save(self.key_of("callback_data"), data, "callback_data")

    async def update_conversation(self, name: str, key: ConversationKey, new_state: object | None) -> None:
        """Save (or, with None, delete) the state of conversation ``name`` for ``key``."""
        session = self.conversation_key_of(name, key)
        if new_state is None:
            await self._drop(session)
            return
        await self._save(
            session, new_state, f"conversations[{name!r}][{key!r}]", part="state", extra=list(key)
        )

    async def drop_user_data(self, user_id: int) -> None:
        """Delete one user's data from the store: it stays gone after a restart."""
        await self._drop(self.key_of("user", user_id))

    async def drop_chat_data(self, chat_id: int) -> None:
        """Delete one chat's data from the store: it stays gone after a restart."""
        await self._drop(self.key_of("chat", chat_id))

    # -- refreshing ----------------------------------------------------------------

    async def refresh_user_data(self, user_id: int, user_data: Data) -> None:
        """Take in, in place, a change another process made to this user's data."""
        await self._refresh_in_place(self.key_of("user", user_id), user_data)

    async def refresh_chat_data(self, chat_id: int, chat_data: Data) -> None:
        """Take in, in place, a change another process made to this chat's data."""
        await self._refresh_in_place(self.key_of("chat", chat_id), chat_data)

    async def refresh_bot_data(self, bot_data: Data) -> None:
        """Take in, in place, a change another process made to the bot's data."""
        await self._refresh_in_place(self.key_of("bot_data"), bot_data)

    async def flush(self) -> None:
        """Write everything queued; close the store if this persistence opened it."""
        store = self._handle.current
        if store is not None:
            await store.flush()
        await self._handle.aclose()

    # -- internals -----------------------------------------------------------------

    def _remember(self, key: str, entry: Record, part: str = "data") -> Any:
        """Decode ``entry[part]`` and note what this process now knows of ``key``."""
        encoded = entry.get(part)
        self._digests[key] = _digest(encoded)
        version = entry.get("updatedAt")
        if isinstance(version, int):
            self._versions[key] = version
        return self._codec.decode(encoded)

    async def _load(self, key: str) -> Any:
        store = await self._handle.store()
        entry = await store.get(key)
        return None if entry is None else self._remember(key, entry)

    async def _load_all(self, kind: str) -> dict[int, Data]:
        store = await self._handle.store()
        prefix = self.key_of(kind) + ":"
        loaded: dict[int, Data] = {}
        async for key, entry in items_with_prefix(store, prefix):
            ident = key[len(prefix) :]
            if ident.lstrip("-").isdigit() and str(int(ident)) == ident:
                loaded[int(ident)] = self._remember(key, entry)
        return loaded

    async def _save(self, key: str, value: Any, where: str, *, part: str = "data", extra: Any = None) -> None:
        encoded = self._codec.encode(value, where)
        digest = _digest(encoded)
        if self._digests.get(key) == digest:
            return  # unchanged since this process last read or wrote it
        store = await self._handle.store()

        def write(current: Record | None) -> Record:
            entry: Record = {part: encoded, "updatedAt": next_updated_at(current)}
            if extra is not None:
                entry["key"] = extra
            return entry

        result = await store.update(key, write)
        self._digests[key] = digest
        if result is not None:
            self._versions[key] = result["updatedAt"]

    async def _drop(self, key: str) -> None:
        store = await self._handle.store()
        await store.delete(key)
        self._digests.pop(key, None)
        self._versions.pop(key, None)

    async def _refresh_in_place(self, key: str, data: Data) -> None:
        if not self._refresh:
            return
        store = await self._handle.store()
        version = await store.updated_at(key)
        known = self._versions.get(key)
        if version == known:
            return
        entry = await store.get(key)
        if entry is None:
            if known is None:
                return  # never stored: nothing to take in
            fresh: Data = {}  # another process dropped it
            self._digests.pop(key, None)
            self._versions.pop(key, None)
        else:
            fresh = self._remember(key, entry)
        data.clear()
        data.update(fresh)
