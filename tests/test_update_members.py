"""update_members() on entry types that do not take any JSON object, and its member splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

import aiosessions
from aiosessions._members import MemberSplits, changed, current, split

pytestmark = pytest.mark.anyio


class Strict(msgspec.Struct):
    sessionId: str
    updatedAt: int


async def test_a_member_that_breaks_a_strict_type_is_refused(tmp_path: Path) -> None:
    async with aiosessions.open_store(tmp_path / "sessions.json", entry_type=Strict, fsync=False) as store:
        await store.set("k", Strict("s", 1))
        assert await store.update_members("k", ["updatedAt"], lambda m: {"updatedAt": 2}) == {"updatedAt": 2}
        with pytest.raises(aiosessions.InvalidEntryError, match="it is not a Strict"):
            await store.update_members("k", ["updatedAt"], lambda m: {"updatedAt": "soon"})
        with pytest.raises(aiosessions.InvalidEntryError, match="it is not a Strict"):
            await store.update_members("k", ["sessionId"], lambda m: {})  # a required field removed
        assert await store.get("k") == Strict("s", 2)


def test_a_split_is_reused_only_for_equal_bytes() -> None:
    splits = MemberSplits(max_keys=2)
    data, joined, fresh = changed(split(b'{"a":1,"big":[1,2,3]}'), ["a"], {"a": 2})
    assert data == b'{"a":2,"big":[1,2,3]}' and fresh == [b"2"]
    splits.remember("k", data, joined)
    assert splits.of("k", data) is joined
    assert splits.of("k", bytes(bytearray(data))) is joined  # an equal copy (a backend's read)
    assert splits.of("k", b'{"a":3,"big":[]}') is not joined
    splits.remember("x", b"{}", {})
    splits.remember("y", b"{}", {})  # over max_keys: the least recently used goes
    assert splits.of("k", data) is not joined


def test_current_members() -> None:
    members: Any = split(b'{"a":{"b":[1]},"c":null}')
    assert current(members, ["a", "c", "missing"]) == {"a": {"b": [1]}, "c": None}
    assert current(None, ["a"]) is None
