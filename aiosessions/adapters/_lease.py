"""Named locks that hold across tasks and processes, kept in the store itself.

In this process a name's holders queue on one lock, dropped as soon as nobody
holds or waits for it (so the table never grows with the names ever seen). Across
processes, the holder keeps a *lease* entry under the name: ``{"owner", "expiresAt",
"updatedAt", "pid", "host"}``. Taking it is a compare-and-swap ``store.update``
written through (``durable=True``) and read back: whoever's token is there owns it.
Every backend gives that compare-and-swap, so the lock works on all of them. A lease
is renewed while held and expires if its holder dies, so a crashed process blocks a
name for at most ``lease`` seconds; hosts sharing a store must have clocks that agree
to well within that. Releasing deletes the entry, so only held locks are stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio

from .._errors import LockTimeoutError, SessionStoreError
from .._locks import KeyLocks
from ._common import Record, StoreHandle, deleting, now_ms

__all__ = ["LeaseLocks"]

_LOG = logging.getLogger("aiosessions.adapters")
_FIRST_WAIT = 0.002
_LONGEST_WAIT = 0.05


class LeaseLocks:
    """Locks by name, exclusive across the tasks of this process and across processes."""

    def __init__(
        self, handle: StoreHandle, *, lease: float = 60.0, wait_timeout: float | None = None
    ) -> None:
        if not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        self._handle = handle
        self._lease_ms = int(lease * 1000)
        self._wait_timeout = wait_timeout
        self._local = KeyLocks()
        self._host = socket.gethostname()

    def __len__(self) -> int:
        """How many names are held or waited for in this process right now."""
        return len(self._local)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock stored under session key ``key`` for the body of ``async with``.

        :raises LockTimeoutError: ``wait_timeout`` passed before the lock was free.
        """
        async with self._local.hold(key):
            token = uuid.uuid4().hex
            await self._acquire(key, token)
            renewer = asyncio.get_running_loop().create_task(self._renew(key, token))
            try:
                yield
            finally:
                renewer.cancel()
                with suppress(asyncio.CancelledError):
                    await renewer
                with anyio.CancelScope(shield=True):
                    await self._release(key, token)

    def _lease(self, token: str) -> Record:
        now = now_ms()
        return {
            "owner": token,
            "expiresAt": now + self._lease_ms,
            "updatedAt": now,
            "pid": os.getpid(),
            "host": self._host,
        }

    async def _acquire(self, key: str, token: str) -> None:
        store = await self._handle.store()
        deadline = None if self._wait_timeout is None else anyio.current_time() + self._wait_timeout
        wait = _FIRST_WAIT

        def take(current: Record | None) -> Record:
            # Re-run on the other process's value if the compare-and-swap conflicts.
            if current is None or _expired(current) or current.get("owner") == token:
                return self._lease(token)
            return current

        while True:
            current = await store.get(key)
            if current is None or _expired(current):
                await store.update(key, take, durable=True)
                confirmed = await store.get(key)
                if confirmed is not None and confirmed.get("owner") == token:
                    return
                wait = _FIRST_WAIT  # someone else just took it: it may be brief
            if deadline is not None and anyio.current_time() >= deadline:
                holder = current or {}
                raise LockTimeoutError(
                    f"could not lock {key!r} in {store.path} within {self._wait_timeout:g}s: "
                    f"held by pid {holder.get('pid')} on {holder.get('host')!r}"
                )
            await anyio.sleep(wait)
            wait = min(wait * 2, _LONGEST_WAIT)

    async def _renew(self, key: str, token: str) -> None:
        store = await self._handle.store()

        def extend(current: Record | None) -> Record | None:
            if current is not None and current.get("owner") == token:
                return self._lease(token)
            return current

        while True:
            await anyio.sleep(self._lease_ms / 3000)
            try:
                result = await store.update(key, deleting(extend), durable=True)
            except SessionStoreError as exc:
                _LOG.warning("could not renew the lock %r: %s", key, exc)
                continue
            if not isinstance(result, dict) or result.get("owner") != token:
                _LOG.warning("the lock %r expired while held (another holder may have taken it)", key)
                return

    async def _release(self, key: str, token: str) -> None:
        store = self._handle.current
        if store is None:
            return  # closed under us: the lease expires by itself

        def drop(current: Record | None) -> Record | None:
            if current is not None and current.get("owner") == token:
                return None
            return current

        try:
            await store.update(key, deleting(drop))
        except SessionStoreError as exc:
            _LOG.warning("could not release the lock %r (it expires by itself): %s", key, exc)


def _expired(lease: Record) -> bool:
    expires = lease.get("expiresAt")
    return not isinstance(expires, int) or expires <= now_ms()
