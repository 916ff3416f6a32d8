"""aiogram 3 FSM storage and event isolation in an aiosessions store.

Wiring it in (``pip install "aiosessions[aiogram]"``)::

    from aiogram import Dispatcher
    from aiosessions.adapters.aiogram import AiosessionsStorage

    storage = AiosessionsStorage("state/sessions.json")
    dp = Dispatcher(storage=storage, events_isolation=storage.create_isolation())
    await dp.start_polling(bot)  # the dispatcher closes the storage at shutdown

Each :class:`~aiogram.fsm.storage.base.StorageKey` is one session holding the state
and the data together, under a readable key that keeps every field apart::

    aiogram:bot:<bot_id>:chat:<chat_id>:user:<user_id>
        [:thread:<thread_id>][:bc:<business_connection_id>][:destiny:<destiny>]

(the optional parts only when set, destiny only when not ``"default"``; ``%`` and
``:`` in the two strings are written ``%25`` and ``%3A``). The entry is
``{"state": ..., "data": {...}, "updatedAt": <ms>}``, plus ``stateExpiresAt`` /
``dataExpiresAt`` with ``state_ttl`` / ``data_ttl``; data values are JSON that keeps
their Python types (see ``aiosessions.adapters._values``). A key with neither state
nor data is deleted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiogram.types
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage, StateType, StorageKey

from ._common import (
    Record,
    StoreHandle,
    StoreTarget,
    deleting,
    items_with_prefix,
    key_part,
    next_updated_at,
    now_ms,
)
from ._lease import LeaseLocks
from ._values import ValueCodec

__all__ = ["AiosessionsEventIsolation", "AiosessionsStorage"]

DEFAULT_DESTINY = "default"


class _AiogramObjects:
    """Keeps aiogram's Telegram types (pydantic models) as ``{"$aiogram": [name, fields]}``."""

    tag = "$aiogram"

    def dump(self, value: object) -> tuple[str, Any] | None:
        if not isinstance(value, aiogram.types.TelegramObject):
            return None
        for cls in type(value).__mro__:
            if getattr(aiogram.types, cls.__name__, None) is cls:
                return cls.__name__, value.model_dump(mode="json", exclude_unset=True)
        return None  # pragma: no cover - every TelegramObject derives from an exported class

    def load(self, name: str, data: Any) -> object:
        cls = getattr(aiogram.types, name, None)
        if not (isinstance(cls, type) and issubclass(cls, aiogram.types.TelegramObject)):
            raise ValueError(f"{name!r} is not a type of aiogram.types")
        return cls.model_validate(data)


_CODEC = ValueCodec((_AiogramObjects(),))


def _seconds(ttl: float | dt.timedelta | None, name: str) -> int | None:
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, dt.timedelta) else float(ttl)
    if not seconds > 0:
        raise ValueError(f"{name} must be positive, not {ttl!r}")
    return int(seconds * 1000)


def _int(value: object, name: str) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"StorageKey.{name} must be an int, not {value!r}")
    return str(value)


def _live(entry: Record, part: str) -> bool:
    """Whether ``entry`` has ``part`` ("state" or "data") and it has not expired."""
    if part not in entry:
        return False
    expires = entry.get(f"{part}ExpiresAt")
    return not isinstance(expires, int) or expires > now_ms()


class AiosessionsStorage(BaseStorage):
    """An aiogram FSM storage keeping state and data in an aiosessions store.

    :param store: a store path (or URL), opened on first use and closed by
        :meth:`close` (the dispatcher calls it at shutdown); or an open
        ``entry_type=dict`` store, which stays yours to close.
    :param key_prefix: the first part of every session key (default ``aiogram``); locks
        of :meth:`create_isolation` use ``<key_prefix>-lock``.
    :param state_ttl: seconds (or a ``timedelta``) a state lives after it is set.
    :param data_ttl: seconds (or a ``timedelta``) data lives after it is set.
    :param store_options: options for ``open_store`` when ``store`` is a path.
    """

    def __init__(
        self,
        store: StoreTarget,
        *,
        key_prefix: str = "aiogram",
        state_ttl: float | dt.timedelta | None = None,
        data_ttl: float | dt.timedelta | None = None,
        store_options: dict[str, Any] | None = None,
    ) -> None:
        self._handle = StoreHandle(store, what="AiosessionsStorage", options=store_options)
        self._prefix = key_part(key_prefix)
        self._state_ttl = _seconds(state_ttl, "state_ttl")
        self._data_ttl = _seconds(data_ttl, "data_ttl")

    # -- keys ----------------------------------------------------------------------

    def key_of(self, key: StorageKey, *, prefix: str | None = None) -> str:
        """The session key of ``key``: every field kept apart (see the module docstring)."""
        parts = [
            self._prefix if prefix is None else prefix,
            "bot",
            _int(key.bot_id, "bot_id"),
            "chat",
            _int(key.chat_id, "chat_id"),
            "user",
            _int(key.user_id, "user_id"),
        ]
        if key.thread_id is not None:
            parts += ["thread", _int(key.thread_id, "thread_id")]
        if key.business_connection_id is not None:
            parts += ["bc", key_part(key.business_connection_id)]
        if key.destiny != DEFAULT_DESTINY:
            parts += ["destiny", key_part(key.destiny)]
        return ":".join(parts)

    # -- the storage ---------------------------------------------------------------

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        """Set (or with None, clear) the state of ``key``; its data is kept."""
        value = state.state if isinstance(state, State) else state
        if value is not None and not isinstance(value, str):
            raise TypeError(f"a state is a str, a State or None, not {type(value).__name__}")

        def change(entry: Record) -> None:
            entry.pop("stateExpiresAt", None)
            if value is None:
                entry.pop("state", None)
                return
            entry["state"] = value
            if self._state_ttl is not None:
                entry["stateExpiresAt"] = now_ms() + self._state_ttl

        await self._change(key, change)

    async def get_state(self, key: StorageKey) -> str | None:
        """The state of ``key``, or None."""
        entry = await self._entry(key)
        if entry is None or not _live(entry, "state"):
            return None
        state = entry["state"]
        return state if isinstance(state, str) else None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        """Replace the data of ``key`` (``{}`` clears it); its state is kept.

        :raises DataNotDictLikeError: ``data`` is not a dict.
        :raises TypeError: a value cannot be stored (the message says where it is).
        """
        if not isinstance(data, dict):
            raise DataNotDictLikeError(f"Data must be a dict or dict-like object, got {type(data).__name__}")
        encoded = _CODEC.encode(data, "data") if data else None

        def change(entry: Record) -> None:
            self._put_data(entry, encoded)

        await self._change(key, change)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        """A copy of the data of ``key`` (``{}`` if none)."""
        return _data_of(await self._entry(key))

    async def get_value(
        self, storage_key: StorageKey, dict_key: str, default: Any | None = None
    ) -> Any | None:
        """One value of the data of ``storage_key``, or ``default``."""
        return (await self.get_data(storage_key)).get(dict_key, default)

    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``data`` into the data of ``key`` in one atomic ``store.update``; return a copy.

        Concurrent calls (other tasks, other processes) never lose each other's keys.
        """
        if not isinstance(data, Mapping):
            raise DataNotDictLikeError(f"Data must be a dict or dict-like object, got {type(data).__name__}")
        _CODEC.encode(dict(data), "data")  # refuse what cannot be stored before writing anything

        def change(entry: Record) -> None:
            merged = _data_of(entry)
            merged.update(data)
            self._put_data(entry, _CODEC.encode(merged, "data") if merged else None)

        return _data_of(await self._change(key, change))

    async def close(self) -> None:
        """Flush and close the store if this storage opened it (the dispatcher calls this)."""
        await self._handle.aclose()

    def create_isolation(
        self, *, lease: float = 60.0, wait_timeout: float | None = None
    ) -> AiosessionsEventIsolation:
        """An event isolation whose per-key lock holds across tasks and processes."""
        return AiosessionsEventIsolation(self, lease=lease, wait_timeout=wait_timeout)

    async def purge_expired(self) -> int:
        """Delete the sessions of this storage whose state and data have both expired.

        Expired parts are never returned; this removes the entries no one reads again
        (``aiosessions prune`` removes sessions by age too). Returns how many went.
        """
        store = await self._handle.store()
        gone = [
            key
            async for key, entry in items_with_prefix(store, self._prefix + ":")
            if key.startswith(self._prefix + ":bot:") and _empty(entry)
        ]
        removed = 0
        for key in gone:
            if not isinstance(await store.update(key, deleting(_drop_if_empty)), dict):
                removed += 1
        return removed

    # -- internals -----------------------------------------------------------------

    def _put_data(self, entry: Record, encoded: Any) -> None:
        entry.pop("dataExpiresAt", None)
        if encoded is None:
            entry.pop("data", None)
            return
        entry["data"] = encoded
        if self._data_ttl is not None:
            entry["dataExpiresAt"] = now_ms() + self._data_ttl

    async def _entry(self, key: StorageKey) -> Record | None:
        store = await self._handle.store()
        name = self.key_of(key)
        entry = await store.get(name)
        if entry is not None and _empty(entry):
            await store.update(name, deleting(_drop_if_empty))
            return None
        return entry

    async def _change(self, key: StorageKey, change: Any) -> Record | None:
        """One ``store.update`` of ``key``: ``change`` edits a copy of the live entry."""
        store = await self._handle.store()

        def apply(current: Record | None) -> Record | None:
            entry: Record = {}
            if current is not None:
                for part in ("state", "data"):
                    if _live(current, part):
                        entry[part] = current[part]
                        if f"{part}ExpiresAt" in current:
                            entry[f"{part}ExpiresAt"] = current[f"{part}ExpiresAt"]
            change(entry)
            if "state" not in entry and "data" not in entry:
                return None
            entry["updatedAt"] = next_updated_at(current)
            return entry

        result = await store.update(self.key_of(key), deleting(apply))
        return result if isinstance(result, dict) else None


class AiosessionsEventIsolation(BaseEventIsolation):
    """aiogram event isolation: one handler at a time per ``StorageKey``, in every process.

    The lock of a key is a lease in the store (see ``aiosessions.adapters._lease``),
    under the key's session key with the prefix ``<key_prefix>-lock``: it is released
    (deleted) when the handler returns, renewed while it runs, and expires ``lease``
    seconds after a crashed holder's last renewal. In this process waiters queue on a
    lock that exists only while someone holds or waits for it.
    """

    def __init__(
        self, storage: AiosessionsStorage, *, lease: float = 60.0, wait_timeout: float | None = None
    ) -> None:
        self._storage = storage
        self._locks = LeaseLocks(storage._handle, lease=lease, wait_timeout=wait_timeout)

    @property
    def held(self) -> int:
        """How many keys are locked or waited for in this process now.

        (Not ``__len__``: aiogram tests ``events_isolation or DisabledEventIsolation()``,
        and an isolation holding no lock must not read as false.)
        """
        return len(self._locks)

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        """Hold the lock of ``key`` while handling one event."""
        async with self._locks.hold(self._storage.key_of(key, prefix=self._storage._prefix + "-lock")):
            yield None

    async def close(self) -> None:
        """Nothing to do: the locks live in the storage's store, which the storage closes."""


def _data_of(entry: Record | None) -> dict[str, Any]:
    if entry is None or not _live(entry, "data"):
        return {}
    data = _CODEC.decode(entry["data"])
    return data if isinstance(data, dict) else {}


def _empty(entry: Record) -> bool:
    return not _live(entry, "state") and not _live(entry, "data")


def _drop_if_empty(entry: Record | None) -> Record | None:
    return None if entry is None or _empty(entry) else entry
