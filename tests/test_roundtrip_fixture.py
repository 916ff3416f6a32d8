"""OpenClaw's real-shaped sessions.json, through the legacy backend into a directory store and back.

Every key and every field -- the ones SessionEntry types and the ones it does not
know -- must come out JSON-equal to what went in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import aiosessions
from aiosessions import SessionEntry
from aiosessions._entry import codec_for
from aiosessions._keys import encode_key

pytestmark = pytest.mark.asyncio

OPTIONS: dict[str, Any] = {"flush_interval": 3600, "fsync": False}


def typed_fields() -> set[str]:
    import msgspec

    return {f.encode_name for f in msgspec.structs.fields(SessionEntry) if f.name != "extra"}


async def test_the_fixture_has_fields_the_entry_type_does_not_know(openclaw_sessions: dict[str, Any]) -> None:
    """Guards the test below: without unknown fields it would prove less than it claims."""
    members = {name for entry in openclaw_sessions.values() for name in entry}
    assert members - typed_fields(), "no unknown fields in the fixture"
    assert members & typed_fields()
    assert len(openclaw_sessions) >= 50


@pytest.mark.parametrize("entry_type", [SessionEntry, dict], ids=["SessionEntry", "dict"])
async def test_legacy_to_directory_round_trip(
    tmp_path: Path,
    openclaw_sessions_path: Path,
    openclaw_sessions: dict[str, Any],
    entry_type: type[Any],
) -> None:
    legacy = tmp_path / "legacy" / "sessions.json"
    legacy.parent.mkdir()
    shutil.copyfile(openclaw_sessions_path, legacy)
    target = tmp_path / "new" / "sessions.json"

    async with (
        aiosessions.open_store(legacy, mode="json", entry_type=entry_type, **OPTIONS) as source,
        aiosessions.open_store(target, entry_type=entry_type, **OPTIONS) as dest,
    ):
        assert source.mode == "json" and dest.mode == "directory"
        copied = 0
        async for key, entry in source.items():
            assert isinstance(entry, entry_type)
            await dest.set(key, entry)
            copied += 1
        assert copied == len(openclaw_sessions)
        await dest.flush()

    # The legacy file was only read.
    assert legacy.read_bytes() == openclaw_sessions_path.read_bytes()

    # On disk: one meta.json per session, JSON-equal to the legacy entry.
    folder = tmp_path / "new" / "sessions.d"
    for key, original in openclaw_sessions.items():
        meta = folder / encode_key(key) / "meta.json"
        assert json.loads(meta.read_bytes()) == original, key
    assert sum(1 for _ in folder.glob("*/meta.json")) == len(openclaw_sessions)

    # Through the store again, re-encoded with the entry type's codec.
    codec = codec_for(entry_type)
    async with aiosessions.open_store(target, entry_type=entry_type, **OPTIONS) as store:
        assert sorted([key async for key in store.keys()]) == sorted(openclaw_sessions)
        for key, original in openclaw_sessions.items():
            entry = await store.get(key)
            assert entry is not None
            assert json.loads(codec.encode(entry)) == original, key
            if isinstance(entry, SessionEntry):
                # Unknown members are kept, verbatim, in extra.
                unknown = set(original) - typed_fields()
                assert {name: entry.extra[name] for name in unknown} == {n: original[n] for n in unknown}
                recency = _recency(original)
                assert entry.updated_at == (msgspec_unset() if recency is None else recency)
            assert await store.updated_at(key) == _recency(original)
        items = {key: json.loads(codec.encode(entry)) async for key, entry in store.items()}
        assert items == openclaw_sessions


async def test_changing_a_known_field_keeps_every_other_field(
    tmp_path: Path, openclaw_sessions_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    import msgspec

    legacy = tmp_path / "sessions.json"
    shutil.copyfile(openclaw_sessions_path, legacy)
    target = tmp_path / "dir.json"
    async with (
        aiosessions.open_store(legacy, mode="json", **OPTIONS) as source,
        aiosessions.open_store(target, **OPTIONS) as dest,
    ):
        async for key, entry in source.items():
            await dest.set(key, msgspec.structs.replace(entry, label="changed"))
    async with aiosessions.open_store(target, entry_type=dict, **OPTIONS) as store:
        for key, original in openclaw_sessions.items():
            assert await store.get(key) == {**original, "label": "changed"}, key


def msgspec_unset() -> Any:
    import msgspec

    return msgspec.UNSET


def _recency(entry: dict[str, Any]) -> int | None:
    value = entry.get("updatedAt")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
