"""A store made by the last release of format version 1 opens in this one, whole.

``tests/fixtures/v1-release-store.tar.gz`` was written by that release's own code (see
``tests/fixtures/make_v1_release_store.py``), beside its own export of every session; the
upgrade tests of ``test_format2.py`` use a description of the old layout instead. This one
checks the description against the real thing.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

import aiosessions
from aiosessions import export_json

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).parent / "fixtures" / "v1-release-store.tar.gz"


@pytest.fixture
def v1_store(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    with tarfile.open(FIXTURE) as archive:
        # The "data" filter (no links out, no devices) where this Python has it (3.10.12+).
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(tmp_path, **options)
    expected = json.loads((tmp_path / "expected.json").read_bytes())
    return tmp_path / "sessions.json", expected


def marker_version(store: Path) -> int:
    return int(json.loads((store.with_name("sessions.d") / "FORMAT").read_bytes())["version"])


async def test_a_store_of_the_previous_release_opens_whole(v1_store: tuple[Path, dict[str, Any]]) -> None:
    path, expected = v1_store
    assert marker_version(path) == 1
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert {key: value async for key, value in store.items()} == expected
        newest = [key for key, _ in await store.newest(len(expected))]
        by_recency = sorted(expected, key=lambda k: (-expected[k].get("updatedAt", 0), k))
        assert newest == by_recency
        # It takes writes in the new format.
        key = next(iter(expected))
        await store.update(key, lambda e: {**(e or {}), "updatedAt": 1_800_000_000_000})
    assert marker_version(path) == 3
    long_key = next(k for k in expected if len(k) > 200)
    blobs = list(path.with_name("sessions.d").glob("*/blob-*.json"))
    assert len(blobs) >= 2  # the long key's snapshot, and the entry's own "$parts" member
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert await store.get(long_key) == expected[long_key]
        assert await store.get(key) == {**expected[key], "updatedAt": 1_800_000_000_000}


async def test_an_export_reads_the_previous_release_store_as_it_is(
    v1_store: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, expected = v1_store
    count = await export_json(path, tmp_path / "out.json")
    assert count == len(expected)
    assert json.loads((tmp_path / "out.json").read_bytes()) == expected
    assert marker_version(path) == 1  # reading changes nothing
