"""An asyncio event loop in a thread of its own, so that asyncio-only clients serve trio code.

redis-py's asyncio client needs an asyncio loop. Under trio the Redis backend starts one
:class:`LoopThread`, builds its client there, and runs every call to the server there: the
trio task awaits an :class:`anyio.Event` that the loop thread sets (through the trio token,
never blocking either loop) when the call is done. All of the backend's own state is touched
only by code running on that loop, so nothing is shared between threads but the futures.

Cancelling the trio task cancels the asyncio task and waits (shielded) until it has finished,
so a cancelled call is over when the cancellation reaches the caller, as on asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["LoopThread", "running_trio"]

T = TypeVar("T")


def running_trio() -> bool:
    """Whether the calling code runs under trio (without importing trio if it is not loaded)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


class LoopThread:
    """A daemon thread running an asyncio loop until :meth:`stop`."""

    def __init__(self, name: str = "aiosessions-asyncio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def call(self, function: Callable[[], T]) -> T:
        """Run a plain function on the loop (say, a client's constructor) and return its result.

        Blocks the caller for as long as the function takes: only for quick, synchronous work.
        """

        async def wrapper() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` on the loop from trio code."""
        import trio

        token = trio.lowlevel.current_trio_token()
        done = anyio.Event()
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)

        def wake(_: concurrent.futures.Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # nobody waits any more

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            with anyio.CancelScope(shield=True):
                await done.wait()
            raise
        return future.result()

    def stop(self) -> None:
        """Stop the loop and wait for the thread (call once every call is over)."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
