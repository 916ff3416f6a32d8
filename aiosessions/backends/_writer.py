"""One worker thread per store for its batches: a cheaper hop than a thread pool's.

A write-through call waits for one worker-thread hop per batch, and on a loaded
machine the hop is a large part of what it costs: ``anyio.to_thread.run_sync``
takes a capacity-limiter token, a cancel scope and two checkpoints around the
thread's work (four turns of the event loop, ~55 µs for a call doing nothing here);
handing the call to a thread of our own through a queue and waking the loop with
``call_soon_threadsafe`` costs one turn (~25 µs). On asyncio the directory store
therefore runs a batch that needs one thread in its :class:`WriterThread`; on
other loops (trio) it uses anyio's pool as before.

The thread starts with the first batch and ends after :data:`IDLE_SECONDS` without
work or at :meth:`WriterThread.stop` (the store's close), so an idle or forgotten
store keeps no thread. A child made by ``fork()`` (which copies only the forking
thread) starts a thread of its own at its first call instead of waiting forever on one
that was not copied; that is all: a store opened before ``fork()`` must not be used in
the child (docs/design.md, "Write-behind and processes").

A batch must not be abandoned half-way by its caller: its outcome is settled on the
event loop after the thread is done (see ``WriteBehind``). anyio's cancellation never
reaches the caller (batches run shielded); a task cancelled natively (``Task.cancel``,
``asyncio.timeout``) keeps waiting for the thread here and raises ``CancelledError``
once the result is in.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["IDLE_SECONDS", "WriterThread"]

_T = TypeVar("_T")

#: A writer thread without work for this long ends (the next batch starts another).
IDLE_SECONDS = 10.0


class _Job(Generic[_T]):
    """One call handed to the thread, and what became of it."""

    __slots__ = ("args", "done", "error", "fn", "future", "loop", "result")

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., _T], args: tuple[Any, ...]) -> None:
        self.loop = loop
        self.fn = fn
        self.args = args
        self.future: asyncio.Future[None] = loop.create_future()
        self.done = False
        self.result: _T | None = None
        self.error: BaseException | None = None

    def wake(self) -> None:
        """On the loop: tell the waiting task the call is over (its future may be a new one)."""
        if not self.future.done():
            self.future.set_result(None)


class WriterThread:
    """A thread of its own that runs calls handed to it from an asyncio event loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        _ALL.add(self)

    def _forget_thread(self) -> None:
        """In a child made by ``fork()``: the thread was not copied; the next call starts one."""
        self._queue = queue.SimpleQueue()
        self._mutex = threading.Lock()
        self._thread = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` in the thread; its result, or its exception raised here.

        Must be called from a task of a running asyncio loop. Cancelling the task
        natively does not abandon the call: this waits for it, then raises.
        """
        job: _Job[_T] = _Job(asyncio.get_running_loop(), fn, args)
        self._submit(job)
        cancelled: BaseException | None = None
        while not job.done:
            try:
                await job.future
            except asyncio.CancelledError as exc:
                cancelled = exc
                if not job.done:
                    job.future = job.loop.create_future()  # job.wake runs on this loop: no race
        if cancelled is not None:
            raise cancelled
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _submit(self, job: _Job[Any]) -> None:
        with self._mutex:
            if self._thread is None:
                # Each thread takes from a queue of its own: the None of stop() reaches the thread
                # it was meant for, not one started after it while the old one still runs a call.
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._work, args=(self._queue,), name=self._name, daemon=True
                )
                self._thread.start()
            self._queue.put(job)

    def stop(self) -> None:
        """Let the thread end once the calls handed to it are done (a later call starts another)."""
        with self._mutex:
            if self._thread is not None:
                self._thread = None
                self._queue.put(None)

    def _work(self, jobs: queue.SimpleQueue[_Job[Any] | None]) -> None:
        while True:
            try:
                job = jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._mutex:  # calls are handed over under it: none can come in between
                    if jobs.empty():
                        # Still the writer's thread: had stop() let it go, its None would be here.
                        self._thread = None
                        return
                continue
            if job is None:
                return
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # handed to the caller, whatever it is
                job.error = exc
            job.done = True
            try:
                job.loop.call_soon_threadsafe(job.wake)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more
            del job


#: Every writer of this process, to be told after a fork that its thread is gone.
_ALL: weakref.WeakSet[WriterThread] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_ALL):
        writer._forget_thread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
