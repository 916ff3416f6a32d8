"""The Redis backend runs the backend contract (tests/contract.py) on a real server, on asyncio
and on trio (where its client runs on an asyncio loop in a thread of its own).

The tests of the server's own keys, prefixes, receipts and failures are in
tests/redis/test_backend.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from aiosessions import StoreIOError
from aiosessions.backends import Backend, BatchResult, Write
from aiosessions.backends._redis import RedisBackend
from tests.contract import BackendContract


class KeyFaults:
    """Which key's writes the server refuses (``fail_writes``), shared by a test's backends."""

    def __init__(self) -> None:
        self.broken: str | None = None


class RefusingRedisBackend(RedisBackend):
    """A Redis backend whose server refuses the writes of one key, as a failing server would
    refuse one command: that write fails, the batch's others land."""

    faults: KeyFaults

    async def write_batch(self, writes: Sequence[Write], *, durable: bool) -> BatchResult:
        broken = self.faults.broken
        refused = [write for write in writes if write.key == broken]
        result = await super().write_batch([w for w in writes if w.key != broken], durable=durable)
        for write in refused:
            result.failed[write.key] = StoreIOError(
                None, f"writing {write.key!r} failed: refused by the server", key=write.key, where="test"
            )
        return result


class TestRedisContract(BackendContract):
    @pytest.fixture
    def faults(self) -> KeyFaults:
        return KeyFaults()

    @pytest.fixture
    def backend_factory(self, redis_url: str, faults: KeyFaults) -> Callable[[], Backend]:
        def make() -> Backend:
            backend: Any = RefusingRedisBackend.from_url(redis_url)
            backend.faults = faults
            return backend  # type: ignore[no-any-return]

        return make

    @pytest.fixture
    def fail_writes(self, faults: KeyFaults) -> Callable[[str | None], None]:
        def fail(key: str | None) -> None:
            faults.broken = key

        return fail
