"""A stateful model test: random sequences of set, update, delete, get, flush, crashes and
migration against a model that tracks what is visible and what is durable.

The store runs in a blocking portal (an event loop in a thread: asyncio or trio) on a
:class:`PowerLossFS`. A crash is honest: the machine dies (every later system call fails), the
store is abandoned with its queued changes, the disk is rebuilt as a power cut leaves it, and a
new store opens what is there. The model tracks, per key, its last durable state and every
state it had since; after a crash each key must hold one of those (never an older one, never a
value it did not have):

* with ``fsync=True`` the durable point is the last successful ``flush()`` (or clean reopen);
* with ``fsync=False`` it is the last clean reopen (nothing was fsynced since; a clean close is
  taken to be followed by the kernel's writeback);
* the queue may write before it is asked to (the flusher's own timing), never after a crash.
  How often a crash kept unflushed changes is counted: with ``flush_interval=3600`` it should be
  never, and a stale wake-up of the flusher was found that way.

Keys come from hostile strategies: the shared hostile-keys fixture, ``../`` paths, case
variants of one key, NFC/NFD twins, arbitrary Unicode and very long keys.
"""

from __future__ import annotations

import shutil
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

import aiosessions
from aiosessions import InvalidKeyError, SessionStoreError, _journal
from aiosessions._keys import validate_key

from .conftest import FIXTURE_KEYS, PowerLossFS, Scale, disk_state, record

#: The start of the machine the model runs on: a power cut is followed by a new one.
BOOT = [0]


def _valid(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidKeyError:
        return False
    return True


_BASE = ["agent:main:telegram:direct:james", "café", "a:b:c"]
_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=24)


def _case_variant(base: str, flips: list[bool]) -> str:
    return "".join(
        c.swapcase() if flip else c for c, flip in zip(base, flips + [False] * len(base), strict=False)
    )


hostile_keys = st.one_of(
    st.sampled_from([key for key in FIXTURE_KEYS if _valid(key)] or _BASE),
    st.sampled_from(_BASE),
    st.builds(_case_variant, st.sampled_from(_BASE), st.lists(st.booleans(), max_size=40)),
    st.builds(lambda k: unicodedata.normalize("NFD", k), st.sampled_from(["café", "Ångström:ü"])),
    st.builds(lambda depth, tail: "../" * depth + tail, st.integers(1, 5), _text),
    st.builds(lambda s: "/" + s, _text),
    _text,
    st.builds(lambda c, n: c * n, st.sampled_from(["é", "x", "😀", ":", "%"]), st.integers(100, 1500)),
).filter(_valid)


async def _keys(store: Any) -> list[str]:
    return sorted([key async for key in store.keys()])


#: Rules run, over all examples of a test (reset by the test).
TALLY: Counter[str] = Counter()


class StoreMachine(RuleBasedStateMachine):
    """One store, its model, and crashes."""

    keys = Bundle("keys")
    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="aiosessions-model-"))
        self.path = self.base / "sessions.json"
        self._portal_cm = anyio.from_thread.start_blocking_portal(self.backend)
        self.portal = self._portal_cm.__enter__()
        self.store: Any = None
        self._store_cm: Any = None
        self.fs: PowerLossFS | None = None
        self.visible: dict[str, Any] = {}
        self.durable: dict[str, Any] = {}
        self.possible: dict[str, list[Any]] = {}
        self.counter = 0
        self.fsync = True
        self.mode = "directory"
        self.history: list[str] = []

    # -- plumbing ---------------------------------------------------------------------------

    def _open(self) -> None:
        self.fs = PowerLossFS(self.base)
        self._store_cm = self.portal.wrap_async_context_manager(
            aiosessions.open_store(
                self.path, entry_type=dict, flush_interval=3600, fsync=self.fsync, filesystem=self.fs
            )
        )
        self.store = self._store_cm.__enter__()
        self.mode = self.store.mode

    def _close(self) -> None:
        cm, self._store_cm, self.store = self._store_cm, None, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def _abandon(self) -> None:
        """Leave the store on a dead disk: its final flush fails; its queue is lost."""
        assert self.fs is not None
        self.fs.crash()
        try:
            self._close()
        except SessionStoreError:
            pass

    def _power_cut_and_reopen(self) -> dict[str, Any]:
        assert self.fs is not None
        self.fs.power_cut()
        BOOT[0] += 1  # the machine starts again: a journal of the last start is replayed at open
        disk_state(self.path, self.mode)  # every file parses
        self._open()
        on_disk = disk_state(self.path, self.mode)
        seen = {key: self.portal.call(self.store.get, key) for key in self.visible}
        assert seen == {key: on_disk.get(key) for key in self.visible}
        return seen

    def _note(self, rule: str, key: str | None = None) -> None:
        """Count the rule, and keep a short history for failure messages."""
        TALLY[rule] += 1
        self.history.append(rule if key is None else f"{rule}({key[:20]!r})")

    def _value(self, key: str) -> dict[str, Any]:
        self.counter += 1
        if self.counter % 2:
            return {"key": key, "n": self.counter}
        # Large enough to be stored split (format version 2), one blob kept per key.
        return {"key": key, "n": self.counter, "a": "s" * 9_000 + key, "b": "r" * 9_000 + str(self.counter)}

    def teardown(self) -> None:
        try:
            self._close()
        finally:
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.base, ignore_errors=True)

    # -- rules ------------------------------------------------------------------------------

    @initialize(mode=st.sampled_from(["directory", "json"]), fsync=st.booleans())
    def start(self, mode: str, fsync: bool) -> None:
        self.fsync = fsync
        # Create the store on the real disk first: the power-loss layer starts from there.
        cm = self.portal.wrap_async_context_manager(
            aiosessions.open_store(self.path, mode=mode, entry_type=dict, fsync=True)
        )
        with cm:
            pass
        self._open()

    @initialize(target=keys, first=st.lists(hostile_keys, min_size=1, max_size=4, unique=True))
    def first_keys(self, first: list[str]) -> MultipleResults[str]:
        for key in first:
            self.visible.setdefault(key, None)
            self.durable.setdefault(key, None)
            self.possible.setdefault(key, [None])
        return multiple(*first)

    @rule(target=keys, key=hostile_keys)
    def add_key(self, key: str) -> str:
        self._note("add_key")
        self.visible.setdefault(key, None)
        self.durable.setdefault(key, None)
        self.possible.setdefault(key, [None])
        return key

    @rule(
        changes=st.lists(
            st.tuples(keys, st.sampled_from(["set", "set", "update", "update", "delete"])), max_size=8
        )
    )
    def change(self, changes: list[tuple[str, str]]) -> None:
        """A few sets, updates and deletes, as a handler would make them between flushes."""
        for key, op in changes:
            self._note(op, key)
            if op == "set":
                value = self._value(key)
                self.portal.call(self.store.set, key, value)
                self.visible[key] = value
            elif op == "update":
                expected, new = self.visible[key], self._value(key)

                def fn(current: Any, expected: Any = expected, new: Any = new, key: str = key) -> Any:
                    assert current == expected, f"update of {key!r} saw {current!r}, not {expected!r}"
                    return new

                assert self.portal.call(self.store.update, key, fn) == new
                self.visible[key] = new
            else:
                existed = self.portal.call(self.store.delete, key)
                assert existed == (self.visible[key] is not None)
                self.visible[key] = None
            self.possible[key].append(self.visible[key])

    @rule(key=keys)
    def get(self, key: str) -> None:
        self._note("get")
        assert self.portal.call(self.store.get, key) == self.visible[key]

    @rule()
    def list_keys(self) -> None:
        self._note("list_keys")
        listed = self.portal.call(_keys, self.store)
        assert listed == sorted(key for key, value in self.visible.items() if value is not None)

    @rule()
    def flush(self) -> None:
        self._note("flush")
        self.portal.call(self.store.flush)
        if self.fsync:
            self._durable_point(self.visible)

    def _durable_point(self, state: dict[str, Any]) -> None:
        self.visible = dict(state)
        self.durable = dict(state)
        self.possible = {key: [value] for key, value in state.items()}

    def _check_crash(self, seen: dict[str, Any], *, flushing: bool) -> None:
        for key, value in seen.items():
            assert value in self.possible[key], (
                f"{key!r} came back as {value!r}, not its durable state {self.durable[key]!r} or a "
                f"later one (fsync={self.fsync}, mode={self.mode}); steps: {' '.join(self.history[-30:])}"
            )
        if seen != self.durable and not flushing:
            TALLY["crash_kept_unflushed"] += 1
        self._durable_point(seen)

    @rule()
    def crash(self) -> None:
        """The power goes with changes queued: each key is back at its durable point (or later)."""
        self._note("crash")
        self._abandon()
        self._check_crash(self._power_cut_and_reopen(), flushing=False)

    @rule(at=st.integers(1, 60))
    def crash_during_flush(self, at: int) -> None:
        """The power goes during a flush: each key is at its durable or its visible state."""
        self._note("crash_during_flush")
        assert self.fs is not None
        self.fs.arm(at)
        try:
            self.portal.call(self.store.flush)
        except SessionStoreError:
            pass
        self._abandon()
        self._check_crash(self._power_cut_and_reopen(), flushing=True)

    @rule()
    def reopen(self) -> None:
        """A clean close flushes everything; the next open reads it all."""
        self._note("reopen")
        self._close()
        self._open()
        for key, value in self.visible.items():
            assert self.portal.call(self.store.get, key) == value
        self._durable_point(self.visible)

    @precondition(lambda self: self.mode == "json" and "migrate" in aiosessions.__all__)
    @rule()
    def migrate(self) -> None:
        """Migrate the legacy file to a directory store; every entry survives."""
        self._note("migrate")
        self._close()
        report = self.portal.call(lambda: aiosessions.migrate(self.path, fsync=self.fsync))
        assert report.entries == sum(value is not None for value in self.visible.values())
        self._open()
        assert self.store.mode == "directory"
        for key, value in self.visible.items():
            assert self.portal.call(self.store.get, key) == value
        self._durable_point(self.visible)

    @invariant()
    def no_write_failed(self) -> None:
        # Only crashes fail writes here, and a crash replaces the store.
        if self.store is not None:
            assert self.portal.call(self.store.statistics).failures == 0


class TrioStoreMachine(StoreMachine):
    backend = "trio"


@pytest.mark.slow
@pytest.mark.parametrize("machine", [StoreMachine, TrioStoreMachine], ids=["asyncio", "trio"])
def test_state_machine(scale: Scale, machine: type[StoreMachine], monkeypatch: pytest.MonkeyPatch) -> None:
    """Random operation sequences with crashes agree with the model, on asyncio and trio."""
    from hypothesis.stateful import run_state_machine_as_test

    monkeypatch.setattr(_journal, "current_boot", lambda: f"model-boot-{BOOT[0]}")

    # As many examples on trio: with a third, a CI run once drew no `reopen` at all.
    examples = scale.examples
    TALLY.clear()
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=scale.steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
    assert TALLY["crash"] and TALLY["crash_during_flush"] and TALLY["reopen"], TALLY
    record(
        "state_machine",
        scale=scale.name,
        backend=machine.backend,
        examples=examples,
        max_steps=scale.steps,
        rules_run=sum(TALLY.values()),
        **{f"rule_{name}": count for name, count in sorted(TALLY.items())},
    )
