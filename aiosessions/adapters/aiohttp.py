"""aiohttp-session storage in an aiosessions store.

Wiring it in (``pip install "aiosessions[aiohttp]"``)::

    import aiohttp_session
    from aiosessions.adapters.aiohttp import AiosessionsStorage

    storage = AiosessionsStorage("state/sessions.json", max_age=3600)
    aiohttp_session.setup(app, storage)
    app.on_cleanup.append(storage.on_cleanup)

The cookie holds only a random identity (``key_factory``); the session lives in the
store under ``aiohttp:<cookie_name>:<identity>`` as ``{"record": <what the encoder
wrote, as JSON>, "updatedAt": <ms>, "expiresAt": <ms>}`` (``"text"`` instead of
``"record"`` when the encoder's output is not JSON). ``max_age`` is enforced by the
store, not only by the browser: a record past its age is never returned, and it is
deleted when read or by :meth:`AiosessionsStorage.purge_expired`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp_session import AbstractStorage, Session

from .._errors import CorruptSessionError, InvalidKeyError
from ._common import Record, StoreHandle, StoreTarget, deleting, items_with_prefix, key_part, now_ms

__all__ = ["AiosessionsStorage"]

_LOG = logging.getLogger("aiosessions.adapters.aiohttp")
_JSON_DECODE = msgspec.json.Decoder()
_JSON_ENCODE = msgspec.json.Encoder()


class AiosessionsStorage(AbstractStorage):
    """An ``aiohttp_session`` storage keeping sessions in an aiosessions store.

    :param store: a store path (or URL), opened on first use and closed by
        :meth:`aclose`/:meth:`on_cleanup`; or an open ``entry_type=dict`` store, which
        stays yours to close.
    :param key_prefix: what session keys start with; default ``aiohttp:<cookie_name>:``.
    :param store_options: options for ``open_store`` when ``store`` is a path.

    The other parameters are those of aiohttp-session's ``RedisStorage``, with the
    same defaults.
    """

    def __init__(
        self,
        store: StoreTarget,
        *,
        cookie_name: str = "AIOHTTP_SESSION",
        domain: str | None = None,
        max_age: int | None = None,
        path: str = "/",
        secure: bool | None = None,
        httponly: bool = True,
        samesite: str | None = None,
        key_factory: Callable[[], str] = lambda: uuid.uuid4().hex,
        encoder: Callable[[object], str] = json.dumps,
        decoder: Callable[[str], Any] = json.loads,
        key_prefix: str | None = None,
        store_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            cookie_name=cookie_name,
            domain=domain,
            max_age=max_age,
            path=path,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
            encoder=encoder,
            decoder=decoder,
        )
        self._handle = StoreHandle(store, what="AiosessionsStorage", options=store_options)
        self._key_factory = key_factory
        self._prefix = f"aiohttp:{key_part(cookie_name)}:" if key_prefix is None else key_prefix

    def key_of(self, identity: str) -> str:
        """The session key of the session whose cookie holds ``identity``."""
        return self._prefix + identity

    async def load_session(self, request: web.Request) -> Session:
        """The session of the request's cookie; a new one if absent, expired or corrupt."""
        identity = self.load_cookie(request)
        if identity is None:
            return Session(None, data=None, new=True, max_age=self.max_age)
        key = self.key_of(str(identity))
        store = await self._handle.store()
        try:
            entry = await store.get(key)
        except InvalidKeyError:
            return Session(None, data=None, new=True, max_age=self.max_age)
        except CorruptSessionError as exc:
            _LOG.warning("session %r does not decode, starting a new one: %s", key, exc)
            return Session(None, data=None, new=True, max_age=self.max_age)
        if entry is None:
            return Session(None, data=None, new=True, max_age=self.max_age)
        if _expired(entry):
            await store.update(key, deleting(_drop_if_expired))
            return Session(None, data=None, new=True, max_age=self.max_age)
        try:
            data = self._decoder(_text_of(entry))
        except ValueError:
            # As aiohttp-session's own storages do: an empty session under the same identity.
            data = None
        return Session(identity, data=data, new=False, max_age=self.max_age)

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        """Write the session and set (or, once it is empty, delete) its cookie."""
        identity = session.identity
        if identity is None:
            identity = self._key_factory()
            self.save_cookie(response, identity, max_age=session.max_age)
        elif session.empty:
            # Invalidated: the cookie goes, and the record is emptied (it loads as a new session).
            self.save_cookie(response, "", max_age=session.max_age)
        else:
            identity = str(identity)
            self.save_cookie(response, identity, max_age=session.max_age)
        entry = _record_of(self._encoder(self._get_session_data(session)))
        now = now_ms()
        entry["updatedAt"] = now
        if session.max_age is not None:
            entry["expiresAt"] = now + session.max_age * 1000
        store = await self._handle.store()
        await store.set(self.key_of(str(identity)), entry)

    async def purge_expired(self) -> int:
        """Delete every session of this storage past its ``max_age``; return how many went.

        Lists only this storage's keys. Expired sessions are also deleted when read;
        call this now and then (or run ``aiosessions prune``) for those never read again.
        """
        store = await self._handle.store()
        expired = [key async for key, entry in items_with_prefix(store, self._prefix) if _expired(entry)]
        removed = 0
        for key in expired:
            if not isinstance(await store.update(key, deleting(_drop_if_expired)), dict):
                removed += 1
        return removed

    async def aclose(self) -> None:
        """Flush and close the store if this storage opened it; idempotent."""
        await self._handle.aclose()

    async def on_cleanup(self, app: web.Application) -> None:
        """``app.on_cleanup.append(storage.on_cleanup)``: close with the application."""
        await self.aclose()


def _expired(entry: Record) -> bool:
    expires = entry.get("expiresAt")
    return isinstance(expires, int) and not isinstance(expires, bool) and expires <= now_ms()


def _drop_if_expired(entry: Record | None) -> Record | None:
    # Checked again under the store's compare-and-swap: a save since the read wins.
    return None if entry is None or _expired(entry) else entry


def _record_of(text: str) -> Record:
    """The stored form of the encoder's output: parsed when it is JSON, else the text."""
    try:
        return {"record": _JSON_DECODE.decode(text)}
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return {"text": text}


def _text_of(entry: Record) -> str:
    """What the encoder wrote, for the decoder. :raises ValueError: no such member."""
    if "record" in entry:
        return _JSON_ENCODE.encode(entry["record"]).decode("utf-8")
    text = entry.get("text")
    if isinstance(text, str):
        return text
    raise ValueError("the stored session has neither 'record' nor 'text'")
