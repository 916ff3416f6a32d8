"""The write-behind queue: coalesce changes per key, flush them in batches.

Every change goes through :meth:`WriteBehind.put`: it becomes the key's pending
state at once (readers of this process see it) and a flusher task writes the
pending keys in batches, one worker-thread hop per batch. Many changes to one
key before its write become one write of the final state.

``update()`` stays correct across processes by compare-and-swap: a pending key
remembers the stored bytes its updates were applied to (its *base*: usually the
very bytes object the read cache holds) and the update functions themselves. The
backend writes it only if the file still holds exactly those bytes, compared in
the worker thread under the cross-process lock; otherwise it returns
the current bytes, the functions are applied again to them on the event loop,
and the key is written in the next batch. A ``set`` or ``delete`` is blind
(last writer wins) and drops the functions before it.

Every change gets the next sequence number. Per key, ``landed_seq`` is the
newest change known to be on disk (fsynced when the store fsyncs) and
``visible_seq`` the newest whose bytes are in the file even if a later fsync
failed: another process may already have read and built on them, so the update
functions up to it are part of the stored value and are never applied again
(the key is still rewritten, since a failed fsync leaves its durability unknown).

With ``flush_interval=0`` every call waits for its own write (write-through);
concurrent callers still share batches.

A change by member (``update_members()``) is queued as an :class:`~._members.Unjoined`
entry: its bytes are joined when first needed, by the batch that writes it or a reader,
so changes coalesced before a write never pay for copying the whole entry.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ._errors import FlushError, SessionStoreError, StoreClosedError, StoreIOError
from ._members import Unjoined
from .backends import Backend, BatchResult, Write

__all__ = ["Rebase", "State", "StoreStatistics", "WriteBehind"]

UpdateFn = Callable[[Any], Any]
#: A key's state: its bytes, its members to be joined into them, or None (deleted).
State = bytes | Unjoined | None
#: Re-applies ``fns`` to ``current`` stored bytes; returns the new bytes (None deletes).
Rebase = Callable[[str, "bytes | None", list[UpdateFn]], "bytes | None"]

_FIRST_BACKOFF = 0.05
_LONGEST_BACKOFF = 5.0
#: A batch's changes by member are joined on the loop, with a checkpoint after each this
#: many bytes (~0.1-0.3 ms of copying): a batch of a thousand 120 KB entries must not hold
#: the loop for tens of milliseconds at once.
_JOIN_SLICE = 512 * 1024


@dataclass(frozen=True)
class StoreStatistics:
    """A snapshot of a store's write-behind queue and counters (see ``SessionStore.statistics``)."""

    #: Keys with changes not yet on disk (including those being written).
    pending: int
    #: Bytes of those pending entries.
    pending_bytes: int
    #: Entries written (or deleted) on disk since open; a legacy JSON rewrite counts each entry it changed.
    writes: int
    #: Changes absorbed by a later change to the same key before being written.
    coalesced: int
    #: Batches written (in legacy JSON mode, rewrites of the file).
    flushes: int
    #: Failed attempts to write a key (each retry that fails counts again).
    failures: int
    #: Writes that found another process's change and were re-applied to it.
    conflicts: int
    #: Seconds since the oldest change not yet on disk was made (0 when none).
    oldest_pending_age: float
    #: Orphaned tmp files and trash removed by the background sweep.
    swept: int = 0
    #: The backend's own counters (``store.backend.counters()``): ``swept`` for the file
    #: stores; ``round_trips``, ``in_doubt`` and ``in_doubt_reapplied`` on Redis.
    backend_counters: Mapping[str, int] = field(default_factory=dict)


class _Pending:
    """The unwritten state of one key. Invariant: ``seq > landed_seq`` while it is pending."""

    __slots__ = (
        "base",
        "blind_seq",
        "doubt",
        "error",
        "error_batch",
        "fns",
        "inflight_seq",
        "landed_seq",
        "seq",
        "since",
        "state",
        "unknown",
        "visible_seq",
    )

    def __init__(self, state: State, seq: int, since: float) -> None:
        self.state = state
        self.seq = seq
        self.landed_seq = seq - 1  # every change before this key became pending is on disk
        self.visible_seq = seq - 1  # >= landed_seq: in the file, perhaps not durable
        self.inflight_seq = 0
        self.blind_seq = 0  # the newest set/delete; blind while newer than visible_seq
        self.base: bytes | None = None  # the stored bytes the pending functions were applied to
        self.fns: list[tuple[int, UpdateFn]] = []
        self.since = since
        self.error: BaseException | None = None
        self.error_batch = 0
        #: ``(seq, bytes)`` of a write whose outcome is unknown (the backend raised): if
        #: the stored bytes turn out to be exactly these, it landed.
        self.unknown: tuple[int, bytes | None] | None = None
        #: A write the backend reported in doubt (a server's reply was lost) and its change's
        #: seq: it is sent again unchanged, so the backend can tell whether it landed; later
        #: changes wait for that, as they wait behind a write in flight.
        self.doubt: tuple[Write, int] | None = None

    @property
    def blind(self) -> bool:
        return self.blind_seq > self.visible_seq

    @property
    def data(self) -> bytes | None:
        """The bytes of the state (joined now if it is :class:`Unjoined`)."""
        state = self.state
        return state.data if isinstance(state, Unjoined) else state

    @property
    def members(self) -> Mapping[str, Any] | None:
        """The top-level members of the state as slices, when the change that made it had them."""
        state = self.state
        return state.members if isinstance(state, Unjoined) else None


def _size(state: State) -> int:
    if isinstance(state, Unjoined):
        return state.size
    return 0 if state is None else len(state)


class WriteBehind:
    """The dirty set of one store and the flusher that empties it."""

    def __init__(
        self,
        backend: Backend,
        rebase: Rebase,
        *,
        flush_interval: float,
        durable: bool,
        max_pending_keys: int,
        max_pending_bytes: int,
        batch_size: int,
    ) -> None:
        self._backend = backend
        self._rebase = rebase
        self.flush_interval = flush_interval
        self.durable = durable
        self._max_keys = max_pending_keys
        self._max_bytes = max_pending_bytes
        self._batch_size = batch_size
        self._pending: dict[str, _Pending] = {}  # ordered by `since`: the first is the oldest
        self._pending_bytes = 0
        self._seq = 0
        self._batch_no = 0
        self._waiters = 0  # callers waiting for a write: the flusher does not wait for the timer
        self._kicked = False  # flush()/durable asked for a write since the last batch: skip backoff
        self._retry_now = False
        self._backoff = 0.0
        self._backoff_until = -math.inf
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self._stalled_batch = 0  # the last batch that failed and wrote nothing (0: none since)
        self._flusher_running = False
        self._draining = False  # aclose() writes what is left, in its own task
        self._stopped = False  # nothing will be written any more
        self._writes = self._coalesced = self._flushes = self._failures = self._conflicts = 0

    @property
    def write_through(self) -> bool:
        """Whether every change is written at once (``flush_interval=0``)."""
        return self.flush_interval <= 0

    # -- the caller's side -----------------------------------------------------------------

    def pending(self, key: str) -> tuple[bytes | None] | None:
        """``(bytes,)`` of ``key``'s unwritten state (``(None,)`` = deleted), or None if clean."""
        p = self._pending.get(key)
        return None if p is None else (p.data,)

    def pending_state(self, key: str) -> tuple[State] | None:
        """``(state,)`` of ``key``'s unwritten state, not joined; None if clean."""
        p = self._pending.get(key)
        return None if p is None else (p.state,)

    def pending_keys(self) -> dict[str, bool]:
        """Every pending key, mapped to whether it exists (False = a pending delete)."""
        return {key: p.state is not None for key, p in self._pending.items()}

    def has_room(self, key: str) -> bool:
        """Whether a change to ``key`` may be queued now.

        A change to a key that is already pending adds no key, so only a new key
        counts against ``max_pending_keys``; every change waits while the pending
        bytes are at ``max_pending_bytes``. A caller that queues without awaiting
        after this check keeps ``pending <= max_pending_keys`` and
        ``pending_bytes < max_pending_bytes + len(its entry)``.
        """
        if self._pending_bytes >= self._max_bytes:
            return False
        return key in self._pending or len(self._pending) < self._max_keys

    async def wait_for_room(self, key: str) -> None:
        """Back-pressure: wait until :meth:`has_room` (the flusher is told to write at once).

        :raises FlushError: the queue is full and a batch written since this call
            began could write nothing (the disk refuses writes): failing beats waiting
            on a dead disk.
        :raises StoreClosedError: the flusher has stopped (the store was closed).
        """
        if self.has_room(key):
            return
        started = self._batch_no
        self._waiters += 1
        self._kicked = True
        self._wakeup.set()
        try:
            while not self.has_room(key):
                if self._stalled_batch > started:
                    raise self.flush_error(
                        "the write-behind queue is full and the disk is refusing writes",
                        {k: p.error for k, p in self._pending.items() if p.error is not None},
                    )
                self._check_running()
                await self._progress.wait()
        finally:
            self._leave()

    def put(self, key: str, data: State, *, fn: UpdateFn | None = None, base: bytes | None = None) -> int:
        """Make ``data`` the state of ``key`` and queue it; return the change's sequence number.

        ``data``: the new bytes, an :class:`Unjoined` entry (its members are handed to the
        backend with the write), or None to delete. ``fn`` is the update function that
        produced ``data`` from the stored state ``base`` (when ``key`` was not pending;
        None: absent); without ``fn`` the change is a blind set or delete. Never awaits,
        so it is atomic on the loop.
        """
        self._seq += 1
        seq = self._seq
        p = self._pending.get(key)
        if p is None:
            p = self._pending[key] = _Pending(data, seq, anyio.current_time())
            p.base = base
            self._pending_bytes += _size(data)
            if len(self._pending) == 1:
                self._wakeup.set()  # the flusher sleeps without a deadline when idle
        else:
            if p.seq > max(p.inflight_seq, p.visible_seq):
                self._coalesced += 1  # the previous state will never be written
            self._pending_bytes += _size(data) - _size(p.state)
            p.state = data
            p.seq = seq
        if fn is None:
            p.blind_seq = seq
            p.fns.clear()
        else:
            p.fns.append((seq, fn))
        if self.flush_interval <= 0 or self._over_bounds():
            self._wakeup.set()
        return seq

    async def wait_landed(self, key: str, seq: int) -> None:
        """Wait until change ``seq`` of ``key`` (or a newer one) is on disk.

        Cancelling the wait leaves the change queued; it is written all the same.

        :raises StoreIOError: an attempt to write it failed after this call began
            (the change stays queued and is retried).
        :raises StoreClosedError: the store closed before the change was written.
        """
        p = self._pending.get(key)
        if p is None or p.landed_seq >= seq:
            return  # before kicking: a stale kick would write the next change at once
        started = self._batch_no
        self._waiters += 1
        self._kicked = True
        self._wakeup.set()
        try:
            while True:
                p = self._pending.get(key)
                if p is None or p.landed_seq >= seq:
                    return
                if p.error is not None and p.error_batch > started:
                    raise _as_store_error(p.error, key)
                self._check_running()
                await self._progress.wait()
        finally:
            self._leave()

    async def flush(self) -> None:
        """Wait until every change made before the call is on disk.

        :raises FlushError: some keys failed to write (they stay queued).
        :raises StoreClosedError: the flusher has stopped (the store was closed).
        """
        targets = [(key, p.seq) for key, p in self._pending.items()]
        if not targets:
            return  # before kicking: a stale kick would write the next change at once
        started = self._batch_no
        done = 0  # targets[:done] are on disk
        failures_seen = -1  # force one full scan for errors
        self._waiters += 1
        self._kicked = True
        self._wakeup.set()
        try:
            while True:
                # Batches take keys in this order, so skipping the landed prefix and
                # scanning the rest only after a failure keeps a flush of N keys O(N),
                # not O(N^2 / batch size) on the event loop.
                while done < len(targets):
                    key, seq = targets[done]
                    p = self._pending.get(key)
                    if p is not None and p.landed_seq < seq:
                        break
                    done += 1
                if done == len(targets):
                    return
                if self._failures != failures_seen:
                    failures_seen = self._failures
                    failed = {
                        key: p.error
                        for key, seq in targets[done:]
                        if (p := self._pending.get(key)) is not None
                        and p.landed_seq < seq
                        and p.error is not None
                        and p.error_batch > started
                    }
                    if failed:
                        raise self.flush_error("flush failed", failed)
                self._check_running()
                await self._progress.wait()
        finally:
            self._leave()

    def _leave(self) -> None:
        """A waiter is done. A kick asks for a write on behalf of waiters: with none
        left it is stale, and would write the next change before its time."""
        self._waiters -= 1
        if self._waiters == 0:
            self._kicked = False

    def _over_bounds(self) -> bool:
        return len(self._pending) >= self._max_keys or self._pending_bytes >= self._max_bytes

    @property
    def accepting(self) -> bool:
        """Whether someone will write what is queued now: the flusher, or a closing drain."""
        return not self._stopped and (self._flusher_running or self._draining)

    def _check_running(self) -> None:
        if self._stopped:
            raise StoreClosedError(
                f"the store was closed with {len(self._pending)} session(s) not written to disk"
            )
        if not self.accepting:
            raise StoreClosedError(
                "the store's background flusher was cancelled (the task group it ran in ended); "
                f"{len(self._pending)} session(s) wait in memory: aclose() writes them"
            )

    def flush_error(self, what: str, failed: Mapping[str, BaseException | None]) -> FlushError:
        """A :class:`FlushError` naming the failed keys and how many changes are still queued."""
        failures = {key: error for key, error in failed.items() if error is not None}
        first_key, first = next(iter(failures.items()), ("?", None))
        message = (
            f"{what}: {len(failures)} session(s) could not be written, e.g. {first_key!r}: {first}; "
            f"{len(self._pending)} session(s) with changes are kept in memory and retried"
        )
        error = FlushError(message, failures=failures, unwritten=len(self._pending))
        error.__cause__ = first  # the traceback shows one real cause; .failures has them all
        return error

    def close_error(self, *, timeout: float, timed_out: bool) -> FlushError | None:
        """The error of an ``aclose()`` that left changes unwritten; None if everything landed."""
        left = len(self._pending)
        if not left:
            return None
        failures = {key: p.error for key, p in self._pending.items() if p.error is not None}
        if timed_out:
            reason = (
                f"the final flush did not finish within {timeout:g}s "
                "(a slow or stuck disk; pass aclose(timeout=...) to wait longer)"
            )
        else:
            first_key, first = next(iter(failures.items()), ("?", None))
            reason = f"the disk refused them, e.g. {first_key!r}: {first}"
        message = (
            f"closing the store: {left} session(s) with changes were not written to disk "
            f"and are lost: {reason}"
        )
        return FlushError(message, failures=failures, unwritten=left)

    def statistics(self, *, backend_counters: Mapping[str, int] | None = None) -> StoreStatistics:
        counters = dict(backend_counters or {})
        oldest = next(iter(self._pending.values()), None)
        age = 0.0 if oldest is None else max(0.0, anyio.current_time() - oldest.since)
        return StoreStatistics(
            pending=len(self._pending),
            pending_bytes=self._pending_bytes,
            writes=self._writes,
            coalesced=self._coalesced,
            flushes=self._flushes,
            failures=self._failures,
            conflicts=self._conflicts,
            oldest_pending_age=age,
            swept=counters.get("swept", 0),
            backend_counters=counters,
        )

    # -- the flusher -----------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The flusher: runs until cancelled (by the store's ``aclose``, or its task group)."""
        self._flusher_running = True
        task_status.started()
        try:
            while True:
                delay = self._delay()
                if delay > 0:
                    self._wakeup = anyio.Event()
                    if delay == math.inf:
                        # Idle: no timer (a cancel scope costs microseconds, and this runs
                        # after every batch, before a write-through caller gets back).
                        await self._wakeup.wait()
                    else:
                        with anyio.move_on_after(delay):
                            await self._wakeup.wait()
                    continue
                await self._write_batch()
        finally:
            # Wake every waiter so it can tell whether anyone still writes (never a hang).
            self._flusher_running = False
            self._progress.set()

    def begin_close(self) -> None:
        """The store is closing: from now on its closing task writes what is left
        (:meth:`drain`), so waiters keep waiting even after the flusher stops."""
        self._draining = True

    async def drain(self) -> None:
        """Write everything pending in the calling task (the flusher must be stopped).

        Used by ``aclose()``: it runs whatever cancelled the code around the store,
        so what was accepted is written even if the flusher died with its task group.
        Conflicts are re-applied and written at once; returns when nothing is pending
        or when a batch failed (what is left is reported by :meth:`close_error`).
        Waiters (``flush()``, ``durable=True``) keep waiting and see their writes land.
        """
        while self._pending:
            failures = self._failures
            await self._write_batch()
            if self._failures != failures:
                return

    def stop(self) -> None:
        """Nothing will be written any more: waiters of what is left raise StoreClosedError."""
        self._stopped = True
        self._progress.set()

    def _delay(self) -> float:
        """Seconds until the next batch is due (``inf`` when idle, 0 for now)."""
        if not self._pending:
            return math.inf
        now = anyio.current_time()
        # After a failed batch the next attempt waits out the backoff, unless a caller
        # asked for a write since (flush(), durable=True, write-through) or a conflict
        # was re-applied. A full queue does not skip it: a dead disk must not spin us.
        if now < self._backoff_until and not (self._kicked or self._retry_now):
            return self._backoff_until - now
        if (
            self._kicked
            or self._retry_now
            or self._waiters > 0
            or self.flush_interval <= 0
            or self._over_bounds()
        ):
            return 0.0
        oldest = next(iter(self._pending.values()))
        return max(0.0, oldest.since + self.flush_interval - now)

    async def _join_next_batch(self) -> None:
        """Join the unjoined changes the next batch takes, letting other tasks run between slices."""
        joined = 0
        for p in list(itertools.islice(self._pending.values(), self._batch_size)):
            state = p.state
            if isinstance(state, Unjoined) and state.joined is None:
                joined += len(state.data)
                if joined >= _JOIN_SLICE:
                    joined = 0
                    await anyio.lowlevel.checkpoint()

    async def _write_batch(self) -> None:
        await self._join_next_batch()
        self._retry_now = self._kicked = False
        snapshot: list[tuple[_Pending, Write, int]] = []
        for key, p in self._pending.items():
            if p.doubt is not None:
                write, seq = p.doubt
            else:
                write, seq = Write(key, p.data, p.base, p.blind, p.members), p.seq
            p.inflight_seq = seq
            snapshot.append((p, write, seq))
            if len(snapshot) >= self._batch_size:
                break
        self._batch_no += 1
        writes = [write for _, write, _ in snapshot]
        # Shielded: a batch interrupted between its writes landing and being settled
        # would be written again as if it had failed, and its update functions
        # re-applied to their own result. Cancelling the flusher stops it between batches.
        with anyio.CancelScope(shield=True):
            try:
                try:
                    result = await self._backend.write_batch(writes, durable=self.durable)
                except Exception as exc:
                    # Unexpected: some writes may have landed. Keep everything queued and
                    # remember what each write was, so a later conflict with exactly those
                    # bytes is known for what it is: our own write, not another's change.
                    result = BatchResult(failed={write.key: exc for write in writes})
                    for p, write, seq in snapshot:
                        p.unknown = (seq, write.data)
                self._settle(snapshot, result)
            finally:
                for p, _, _ in snapshot:
                    p.inflight_seq = 0
        self._flushes += 1
        self._progress.set()
        self._progress = anyio.Event()

    def _settle(self, snapshot: list[tuple[_Pending, Write, int]], result: BatchResult) -> None:
        now = anyio.current_time()
        landed = set(result.landed)
        failed = False
        for p, write, seq in snapshot:
            key = write.key
            p.doubt = None
            if key in landed:
                self._writes += 1
                p.error = None
                p.unknown = None
                self._land(key, p, write, seq, now)
            elif key in result.unsynced:
                # The new bytes replaced the file but its fsync failed: the outcome is
                # unknown, so the key is written again (not merely fsynced again). Its
                # update functions are in the file now and are not applied again.
                failed = True
                self._failures += 1
                p.error = result.unsynced[key]
                p.error_batch = self._batch_no
                self._make_visible(p, write, seq)
            elif key in result.conflicts:
                current = result.conflicts[key]
                if p.unknown is not None and p.unknown[1] == current:
                    # The write whose outcome was unknown did land: it is the new base.
                    # The key is written once more (as after a failed fsync): durability.
                    unknown_seq, unknown_data = p.unknown
                    p.unknown = None
                    self._make_visible(p, Write(key, unknown_data), unknown_seq)
                    self._retry_now = True
                    continue
                p.unknown = None
                self._conflicts += 1
                # A blind change overwrites whatever is there; otherwise re-apply the
                # functions to the newer value, and retry at once if that worked.
                if p.blind:
                    self._retry_now = True
                elif p.seq == p.visible_seq:
                    # Nothing of ours is left to apply: what was written (visibly,
                    # without a successful fsync) has been superseded by a newer change.
                    self._drop(key, p)
                elif self._rebase_pending(key, p, result.conflicts[key]):
                    self._retry_now = True
                else:
                    failed = True
            else:
                failed = True
                self._failures += 1
                if key in result.in_doubt:
                    p.doubt = (write, seq)
                p.error = (
                    result.failed.get(key)
                    or result.in_doubt.get(key)
                    or StoreIOError(None, f"writing {key!r} failed")
                )
                p.error_batch = self._batch_no
        if failed:
            self._backoff = min(max(self._backoff * 2, _FIRST_BACKOFF), _LONGEST_BACKOFF)
            self._backoff_until = now + self._backoff
            self._stalled_batch = 0 if result.landed else self._batch_no
        else:
            self._backoff = 0.0
            self._backoff_until = -math.inf
            self._stalled_batch = 0

    def _drop(self, key: str, p: _Pending) -> None:
        del self._pending[key]
        self._pending_bytes -= _size(p.state)

    def _make_visible(self, p: _Pending, write: Write, seq: int) -> None:
        """``write`` (change ``seq``) is in the file: it is the new base of later changes."""
        p.visible_seq = max(p.visible_seq, seq)
        p.base = write.data
        p.fns = [(fn_seq, fn) for fn_seq, fn in p.fns if fn_seq > seq]

    def _land(self, key: str, p: _Pending, write: Write, seq: int, now: float) -> None:
        if p.seq == seq:
            self._drop(key, p)
            return
        # Changed again while the batch was being written: what was written is
        # the new base, and only the functions applied after it stay pending.
        p.landed_seq = seq
        self._make_visible(p, write, seq)
        p.since = now
        # Keep the dict ordered by `since` (the timer and statistics read the first key).
        self._pending[key] = self._pending.pop(key)

    def _rebase_pending(self, key: str, p: _Pending, current: bytes | None) -> bool:
        """Re-apply ``key``'s pending functions to ``current``; False if that failed."""
        try:
            data = self._rebase(key, current, [fn for _, fn in p.fns])
        except Exception as exc:
            self._failures += 1
            p.error = exc if isinstance(exc, SessionStoreError) else _rebase_error(key, exc)
            p.error_batch = self._batch_no
            return False
        self._pending_bytes += _size(data) - _size(p.state)
        p.state = data
        p.base = current
        self._seq += 1
        p.seq = self._seq  # a new state: the previous one was never written
        return True


def _rebase_error(key: str, exc: BaseException) -> SessionStoreError:
    error = SessionStoreError(
        f"session {key!r} changed in another process and re-applying its pending update failed: {exc!r}"
    )
    error.__cause__ = exc
    return error


def _as_store_error(error: BaseException, key: str) -> BaseException:
    if isinstance(error, SessionStoreError):
        return error
    wrapped = StoreIOError(None, f"writing session {key!r} failed: {error!r}", key=key)
    wrapped.__cause__ = error
    return wrapped
