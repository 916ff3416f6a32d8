"""Format version 2: large members of an entry stored apart, in blob files beside meta.json.

What is on disk, that reads give back exactly what was written, that an update of a small
field writes only meta.json, what a missing or broken blob says, and how a store of format
version 1 (built by tests/_v1_store.py) is read and moved forward.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import aiosessions
from aiosessions import CorruptSessionError, SessionEntry, StoreFormatError, _parts
from aiosessions._bench import sized_sessions
from aiosessions._entry import codec_for
from aiosessions._keys import encode_key
from aiosessions._layout import encode_format
from aiosessions._parts import PARTS
from aiosessions.backends import DirectoryBackend, _directory
from aiosessions.backends._base import Write

from ._v1_store import build_v1_store

pytestmark = pytest.mark.asyncio

OPTIONS: dict[str, Any] = {"flush_interval": 3600, "fsync": False}


def folder_of(path: Path, key: str) -> Path:
    return path.with_name(path.stem + ".d") / encode_key(key)


def blobs_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("blob-*.json"))}


@pytest.mark.parametrize("fsync", [False, True], ids=["fsync-off", "fsync-on"])
async def test_a_120_kb_entry_is_a_small_meta_json_and_blobs_named_by_digest(
    tmp_path: Path, fsync: bool
) -> None:
    path = tmp_path / "sessions.json"
    sessions = sized_sessions(6, 121_000, seed=5)
    async with aiosessions.open_store(path, entry_type=dict, flush_interval=3600, fsync=fsync) as store:
        for key, entry in sessions.items():
            await store.set(key, entry)
    for key, entry in sessions.items():
        folder = folder_of(path, key)
        meta = (folder / "meta.json").read_bytes()
        assert len(meta) < 3_000
        stored = json.loads(meta)
        assert "skillsSnapshot" not in stored and stored["updatedAt"] == entry["updatedAt"]
        blobs = blobs_in(folder)
        assert blobs and all(
            name == f"blob-{hashlib.sha256(b).hexdigest()}.json" for name, b in blobs.items()
        )
        names = {name for name, _, _ in stored[PARTS]}
        assert "skillsSnapshot" in names
        assert (
            json.loads(blobs[f"blob-{dict((n, d) for n, _, d in stored[PARTS])['skillsSnapshot']}.json"])
            == (entry["skillsSnapshot"])
        )
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key, entry in sessions.items():
            assert await store.get(key) == entry
            assert msgspec.json.encode(await store.get(key)) == msgspec.json.encode(
                entry
            )  # member order kept


async def test_the_fixture_and_large_entries_round_trip_and_export_gives_back_the_input(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    sessions = {
        **openclaw_sessions,
        **sized_sessions(10, 121_000, seed=6),
        **sized_sessions(5, 20_000, seed=7),
    }
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key, entry in sessions.items():
            await store.set(key, entry)
    for entry_type in (dict, SessionEntry):
        async with aiosessions.open_store(path, entry_type=entry_type, **OPTIONS) as store:
            for key, entry in sessions.items():
                got = await store.get(key)
                as_json = json.loads(codec_for(entry_type).encode(got))
                assert as_json == entry, key
    out = tmp_path / "export.json"
    await aiosessions.export_json(path, out)
    assert json.loads(out.read_bytes()) == sessions
    assert any(blobs_in(folder_of(path, key)) for key in sessions)


async def test_an_update_of_a_small_field_writes_meta_json_only_and_hashes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.json"
    key, entry = next(iter(sized_sessions(1, 121_000, seed=8).items()))
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        await store.set(key, entry)
        await store.flush()
        folder = folder_of(path, key)
        before = {p.name: os.stat(p).st_ino for p in folder.glob("blob-*.json")}
        hashed: list[int] = []
        real = hashlib.sha256

        def counting(data: bytes = b"") -> Any:
            hashed.append(len(data))
            return real(data)

        monkeypatch.setattr(_parts.hashlib, "sha256", counting)
        for n in range(5):
            await store.update(key, lambda e, n=n: {**e, "updatedAt": n})
            await store.flush()
        assert hashed == []  # equal bytes (a memcmp) keep their digest
        after = {p.name: os.stat(p).st_ino for p in folder.glob("blob-*.json")}
        assert after == before  # no blob written again
        assert (await store.get(key)) == {**entry, "updatedAt": 4}
        # A changed large member is hashed and written as a new blob; the old one stays
        # until the sweep finds it unreferenced and old.
        await store.update(key, lambda e: {**e, "skillsSnapshot": {"changed": "y" * 10_000}})
        await store.flush()
        assert hashed and len(blobs_in(folder)) == len(before) + 1


async def test_an_entry_with_its_own_parts_member_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    entries = {
        "small": {"a": 1, PARTS: [["x", 0, "0" * 64]]},
        "large": {"b": "z" * 20_000, PARTS: "mine", "c": 2},
    }
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key, entry in entries.items():
            await store.set(key, entry)
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key, entry in entries.items():
            assert await store.get(key) == entry


async def test_a_missing_blob_names_its_file_and_the_session(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key, entry = next(iter(sized_sessions(1, 121_000, seed=9).items()))
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        await store.set(key, entry)
    blob = next(iter(folder_of(path, key).glob("blob-*.json")))
    blob.unlink()
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        with pytest.raises(CorruptSessionError, match="is missing") as caught:
            await store.get(key)
        assert caught.value.where == str(blob) and caught.value.key == key
        await store.delete(key)  # a broken session can be deleted
        assert await store.get(key) is None


async def test_a_blob_cut_short_is_corrupt_for_its_session_alone_and_a_write_repairs_it(
    tmp_path: Path,
) -> None:
    """A blob file cut short (a crash without fsync): the session that names it is corrupt,
    naming the file; another session holding the same content in its own folder still reads
    (blobs are cached by digest, for every session); a write of the session repairs it, and
    update_members then starts from the repaired members, not from what was read."""
    path = tmp_path / "sessions.json"
    entry = {"a": 1, "big": "x" * 20_000, "updatedAt": 0}
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        await store.set("broken", entry)
        await store.set("intact", entry)
    [blob] = folder_of(path, "broken").glob("blob-*.json")
    whole = blob.read_bytes()
    blob.write_bytes(whole[:5_000])
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for _ in range(2):  # the second read must not take the cut file from a cache either
            with pytest.raises(CorruptSessionError, match="SHA-256") as caught:
                await store.get("broken")
            assert caught.value.where == str(blob) and caught.value.key == "broken"
        assert await store.get("intact") == entry
        await store.set("broken", entry)  # the write puts the blob file back whole
        await store.flush()
        assert blob.read_bytes() == whole
        await store.update_members("broken", ["updatedAt"], lambda m: {"updatedAt": 1})
        await store.flush()
        assert await store.get("broken") == {**entry, "updatedAt": 1}
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        assert await store.get("broken") == {**entry, "updatedAt": 1}
        assert await store.get("intact") == entry


async def test_a_meta_json_whose_parts_are_not_the_stores_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        await store.set("k", {"a": 1})
    meta = folder_of(path, "k") / "meta.json"
    for bad in (b'{"a":1,"$parts":"nonsense"}', b'{"a":1,"$parts":[["x",0,"../../etc/passwd"]]}'):
        meta.write_bytes(bad)
        async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
            with pytest.raises(CorruptSessionError, match=r"\$parts") as caught:
                await store.get("k")
            assert caught.value.where == str(meta) and caught.value.key == "k"


async def test_compare_and_swap_sees_another_writer_of_a_split_entry(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key, entry = next(iter(sized_sessions(1, 121_000, seed=10).items()))
    whole = msgspec.json.encode(entry)
    one, two = DirectoryBackend(path), DirectoryBackend(path)
    await one.open()
    await two.open()
    try:
        assert (await one.write_batch([Write(key, whole, None, blind=False)], durable=False)).landed == [key]
        seen = await two.read(key)
        assert seen == whole
        changed = msgspec.json.encode({**entry, "updatedAt": 1})
        assert (await one.write_batch([Write(key, changed, whole, blind=False)], durable=False)).landed
        result = await two.write_batch([Write(key, whole, seen, blind=False)], durable=False)
        assert result.conflicts == {key: changed}  # the whole entry found, put together
        again = msgspec.json.encode({**entry, "updatedAt": 2})
        assert (await two.write_batch([Write(key, again, changed, blind=False)], durable=False)).landed
        # A meta.json written differently (not split) that holds the same entry is no conflict.
        (folder_of(path, key) / "meta.json").write_bytes(again)
        last = msgspec.json.encode({**entry, "updatedAt": 3})
        assert (await one.write_batch([Write(key, last, again, blind=False)], durable=False)).landed
        assert await two.read(key) == last
    finally:
        await one.aclose()
        await two.aclose()


# -- format version 1 ----------------------------------------------------------------------


def v1_entries(openclaw_sessions: dict[str, Any]) -> dict[str, Any]:
    entries: dict[str, Any] = dict(list(openclaw_sessions.items())[:20])
    entries.update(sized_sessions(5, 121_000, seed=11))
    entries["own-parts"] = {"x": 1, PARTS: [["not", 0, "a reference"]]}
    entries["agent:main:" + "long" * 80] = {"sessionId": "shortened", "big": "q" * 20_000, "n": 1}
    return entries


async def test_a_version_1_store_opens_and_is_moved_forward(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    entries = v1_entries(openclaw_sessions)
    directory = build_v1_store(path, entries)
    (directory / ".quarantine").mkdir()
    (directory / ".quarantine" / "kept").write_bytes(b"evidence")
    (directory / "broken").mkdir()
    (directory / "broken" / "meta.json").mkdir()  # unreadable as a file: quarantined
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key, entry in entries.items():
            assert await store.get(key) == entry, key
        await store.update("own-parts", lambda e: {**e, "x": 2})
    assert (directory / "FORMAT").read_bytes() == encode_format()
    assert (directory / ".quarantine" / "kept").read_bytes() == b"evidence"
    assert (directory / ".quarantine" / "broken" / "meta.json").is_dir()
    assert (directory / ".migration.json").exists()
    assert os.listdir(directory / ".trash") == []
    assert not path.with_name(".sessions.d.staging").exists()
    for key in entries:
        if len(json.dumps(entries[key])) > 20_000:
            assert blobs_in(folder_of(path, key)), key
    long_key = next(k for k in entries if k.startswith("agent:main:long"))
    assert (folder_of(path, long_key) / "key").read_text() == long_key
    out = tmp_path / "export.json"
    await aiosessions.export_json(path, out)
    assert json.loads(out.read_bytes()) == {**entries, "own-parts": {**entries["own-parts"], "x": 2}}


async def test_a_version_1_store_is_read_as_it_is_by_a_reader_that_writes_nothing(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    entries = v1_entries(openclaw_sessions)
    directory = build_v1_store(path, entries)
    out = tmp_path / "export.json"
    await aiosessions.export_json(path, out)
    assert json.loads(out.read_bytes()) == entries
    assert b'"version":1' in (directory / "FORMAT").read_bytes()
    backend = DirectoryBackend(path, upgrade=False)
    await backend.open()
    try:
        assert json.loads(await backend.read("own-parts") or b"") == entries["own-parts"]
        result = await backend.write_batch([Write("k", b"{}")], durable=False)
        assert isinstance(result.failed["k"], StoreFormatError)
    finally:
        await backend.aclose()


async def test_an_export_of_a_version_1_store_moved_forward_meanwhile_fails_instead_of_being_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export reads the old folder it opened; once another process moved the store forward
    (the old folder removed), its sessions read as absent: an error, not a partial backup."""
    path = tmp_path / "sessions.json"
    entries = {f"k{n:04}": {"n": n} for n in range(1_200)}  # more than one chunk of keys
    build_v1_store(path, entries)
    read_many = DirectoryBackend.read_many
    chunks = 0

    async def read_then_upgrade(self: DirectoryBackend, keys: Any) -> Any:
        nonlocal chunks
        found = await read_many(self, keys)
        chunks += 1
        if chunks == 1:  # between the first chunk and the next: another process's open
            async with aiosessions.open_store(path, entry_type=dict, **OPTIONS):
                pass
        return found

    monkeypatch.setattr(DirectoryBackend, "read_many", read_then_upgrade)
    out = tmp_path / "export.json"
    with pytest.raises(StoreFormatError, match="replaced while it was exported"):
        await aiosessions.export_json(path, out)
    assert not out.exists()  # the listing of the removed folder may even have ended early
    assert (path.with_name("sessions.d") / "FORMAT").read_bytes() == encode_format()
    monkeypatch.setattr(DirectoryBackend, "read_many", read_many)
    assert await aiosessions.export_json(path, out) == len(entries)


async def test_an_upgrade_cut_between_its_two_renames_is_finished_by_the_next_open(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    entries = v1_entries(openclaw_sessions)
    directory = build_v1_store(path, entries)
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS):
        pass
    # The state a crash between the renames leaves: the sealed new store in staging, no sessions.d.
    directory.rename(tmp_path / ".sessions.d.staging")
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key, entry in entries.items():
            assert await store.get(key) == entry
    assert (directory / "FORMAT").read_bytes() == encode_format()


async def test_a_sealed_staging_folder_beside_the_old_store_is_put_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The power went after the seal and both renames were lost: the old store is still at
    sessions.d and the sealed new one in staging. The next open puts the sealed one in place
    (its quarantine holds one copy of what was not carried over), not a second build."""
    from aiosessions import _upgrade

    path = tmp_path / "sessions.json"
    entries = {"k": {"big": "b" * 20_000, "n": 1}, "bare": {"n": 2}}
    directory = build_v1_store(path, entries)
    (directory / "notes.txt").write_bytes(b"operator notes")

    def power_cut(*args: object) -> None:
        raise OSError("the power went")

    with monkeypatch.context() as patch:
        patch.setattr(_upgrade, "_put_in_place", power_cut)
        with pytest.raises(aiosessions.SessionStoreError):
            async with aiosessions.open_store(path, entry_type=dict, **OPTIONS):
                pass
    staging = tmp_path / ".sessions.d.staging"
    assert (staging / "FORMAT").read_bytes() == encode_format()
    (staging / ".leftovers").write_bytes(b"format-1-lost")  # its removal lost too
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        assert {key: await store.get(key) for key in entries} == entries
    assert not staging.exists() and not (directory / ".leftovers").exists()
    kept = list((directory / ".quarantine").glob("format-1-*/notes.txt"))
    assert [file.read_bytes() for file in kept] == [b"operator notes"]


async def test_an_unsealed_staging_folder_of_an_upgrade_is_built_again(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    directory = build_v1_store(path, {"k": {"big": "b" * 20_000, "n": 1}})
    staging = tmp_path / ".sessions.d.staging"
    (staging / ".quarantine").mkdir(parents=True)  # the old store's, moved in before the crash
    (staging / ".quarantine" / "kept").write_bytes(b"evidence")
    (staging / "half").mkdir()
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        assert await store.get("k") == {"big": "b" * 20_000, "n": 1}
    assert not staging.exists() and not (directory / "half").exists()
    assert (directory / ".quarantine" / "kept").read_bytes() == b"evidence"


async def test_an_upgrade_keeps_what_it_does_not_carry_over_in_the_quarantine(tmp_path: Path) -> None:
    """Stray files, symlinks, unknown dot-folders and extra files of a session folder are not
    removed with the old store: they are moved into .quarantine/format-1-<hex>/."""
    path = tmp_path / "sessions.json"
    directory = build_v1_store(path, {"k": {"big": "b" * 20_000, "n": 1}, "bare": {"n": 2}})
    (directory / "notes.txt").write_bytes(b"operator notes")
    (directory / "link").symlink_to(tmp_path / "elsewhere")
    (directory / ".newer-feature").mkdir()
    (directory / ".newer-feature" / "data").write_bytes(b"additive")
    (folder_of(path, "k") / "attachment.bin").write_bytes(b"extra")
    (folder_of(path, "k") / ".meta.json.1-2.tmp").write_bytes(b"in flight")  # an orphan: dropped
    (directory / "died").mkdir()  # a creation that died before its meta.json, with a file of its own
    (directory / "died" / "extra").write_bytes(b"kept too")
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        assert await store.get("k") == {"big": "b" * 20_000, "n": 1}
        assert sorted([key async for key in store.keys()]) == ["bare", "k"]
    (kept,) = (directory / ".quarantine").iterdir()
    assert kept.name.startswith("format-1-")
    assert (kept / "notes.txt").read_bytes() == b"operator notes"
    assert os.readlink(kept / "link") == str(tmp_path / "elsewhere")
    assert (kept / ".newer-feature" / "data").read_bytes() == b"additive"
    assert (kept / encode_key("k") / "attachment.bin").read_bytes() == b"extra"
    assert (kept / "died" / "extra").read_bytes() == b"kept too"
    assert sorted(p.name for p in kept.rglob("*")) == sorted(
        ["notes.txt", "link", ".newer-feature", "data", encode_key("k"), "attachment.bin", "died", "extra"]
    )
    assert not (directory / "notes.txt").exists() and not (folder_of(path, "k") / "attachment.bin").exists()
    assert os.listdir(directory / ".trash") == []


async def test_an_upgrade_built_again_keeps_one_copy_of_what_it_does_not_carry_over(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    directory = build_v1_store(path, {"k": {"n": 1}})
    (directory / "notes.txt").write_bytes(b"operator notes")
    staging = tmp_path / ".sessions.d.staging"
    # An upgrade that died before its seal: the old quarantine moved in, a copy half made.
    (staging / ".quarantine" / "format-1-00").mkdir(parents=True)
    (staging / ".quarantine" / "kept").write_bytes(b"evidence")
    (staging / ".quarantine" / "format-1-00" / "notes.txt").write_bytes(b"oper")
    (staging / ".leftovers").write_bytes(b"format-1-00")
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        assert await store.get("k") == {"n": 1}
    quarantine = directory / ".quarantine"
    assert (quarantine / "kept").read_bytes() == b"evidence"
    (copy,) = quarantine.glob("format-1-*")
    assert copy.name != "format-1-00" and (copy / "notes.txt").read_bytes() == b"operator notes"
    assert not (directory / ".leftovers").exists()


# -- blobs no meta.json names: the sweep and fsck ------------------------------------------


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


async def superseded(path: Path) -> tuple[str, Path, Path]:
    """A split session whose skillsSnapshot changed once: (key, the old blob, the current one)."""
    key, entry = next(iter(sized_sessions(1, 121_000, seed=12).items()))
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        await store.set(key, entry)
        await store.flush()
        before = set(blobs_in(folder_of(path, key)))
        await store.update(key, lambda e: {**e, "skillsSnapshot": {"changed": "y" * 10_000}})
    folder = folder_of(path, key)
    after = set(blobs_in(folder))
    (old,) = before - after if before - after else [n for n in before if n not in _named(folder)]
    (new,) = after - before
    return key, folder / old, folder / new


def _named(folder: Path) -> set[str]:
    return {f"blob-{d}.json" for _, _, d in json.loads((folder / "meta.json").read_bytes())[PARTS]}


async def test_the_sweep_removes_old_unreferenced_blobs_and_never_a_referenced_one(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key, old, new = await superseded(path)
    named = _named(old.parent)
    assert old.name not in named and new.name in named
    young = old.parent / f"blob-{'0' * 64}.json"  # unreferenced, but written an instant ago
    young.write_bytes(b'"young"')
    for blob in old.parent.glob("blob-*.json"):
        if blob != young:
            age(blob, 7200)  # referenced ones too: age alone never removes a blob
    age(tmp_path / "sessions.d" / ".swept", 7200)
    async with aiosessions.open_store(path, entry_type=dict, tmp_max_age=3600, **OPTIONS) as store:
        await store.set("other", {"n": 1})  # a writer: the sweep takes stripes in .locks
        await wait_until(lambda: store.statistics().swept >= 1, "the sweep")
        assert store.statistics().swept == 1
        assert (await store.get(key) or {})["skillsSnapshot"] == {"changed": "y" * 10_000}
    assert not old.exists() and young.exists()
    assert {p.name for p in old.parent.glob("blob-*.json")} == named | {young.name}


async def test_fsck_reports_unreferenced_blobs_and_repair_removes_them(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key, old, _ = await superseded(path)
    assert (await aiosessions.fsck(path, tmp_max_age=3600)).ok  # superseded an instant ago: fine
    found = await aiosessions.fsck(path, tmp_max_age=0)
    assert [(p.kind, p.path) for p in found.problems] == [("orphaned-blob", str(old))]
    assert old.exists()
    repaired = await aiosessions.fsck(path, repair=True, tmp_max_age=0)
    assert repaired.problems[0].repaired and not old.exists()
    assert (await aiosessions.fsck(path, tmp_max_age=0)).ok
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        assert (await store.get(key) or {})["skillsSnapshot"] == {"changed": "y" * 10_000}


@pytest.mark.parametrize("damage", ["missing", "altered"])
async def test_fsck_calls_a_session_with_a_missing_or_altered_blob_corrupt(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "sessions.json"
    key, _, current = await superseded(path)
    if damage == "missing":
        current.unlink()
    else:
        current.write_bytes(b'{"changed":"tampered"}')
    found = await aiosessions.fsck(path, tmp_max_age=3600)
    (problem,) = [p for p in found.problems if p.kind == "corrupt-entry"]
    assert current.name in problem.detail and key in problem.detail
    repaired = await aiosessions.fsck(path, repair=True, tmp_max_age=3600)
    assert any(p.kind == "corrupt-entry" and p.repaired for p in repaired.problems)
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        assert await store.get(key) is None  # quarantined whole, blobs and all


async def test_fsck_removes_blobs_of_a_creation_that_died_before_its_meta_json(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key, _, _ = await superseded(path)
    folder = folder_of(path, key)
    (folder / "meta.json").unlink()
    blobs = len(blobs_in(folder))
    found = await aiosessions.fsck(path, tmp_max_age=3600)
    assert sorted(p.kind for p in found.problems) == ["missing-meta"] + ["orphaned-blob"] * blobs
    await aiosessions.fsck(path, repair=True, tmp_max_age=3600)
    assert not folder.exists()


async def test_fsck_of_a_version_1_store_says_it_will_be_moved_forward(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    build_v1_store(path, {"own-parts": {PARTS: [["x", 0, "nonsense"]]}, "k": {"n": 1}})
    found = await aiosessions.fsck(path)
    assert [p.kind for p in found.problems] == ["old-format"] and found.sessions == 2
    assert not found.problems[0].repairable


async def wait_until(condition: Any, what: str, deadline: float = 30.0) -> None:
    """Poll ``condition()`` until it holds (bounded, not a timing assertion)."""
    with anyio.fail_after(deadline):
        while not condition():
            await anyio.sleep(0.001)


# -- reading a split session without aiosessions ---------------------------------------------

#: The one-liner docs/format.md gives, run in a session folder.
JQ = (
    'jq -n \'reduce inputs as $v ({}; .[input_filename] = $v) | . as $f | .["meta.json"] as $m'
    ' | reduce ($m["$parts"] // [] | sort_by(.[1]) | .[]) as $p ($m | del(.["$parts"]) | to_entries;'
    ' .[:$p[1]] + [{key: $p[0], value: $f["blob-\\($p[2]).json"]}] + .[$p[1]:]) | from_entries\''
    " meta.json $(ls | grep '^blob-')"
)


async def test_the_jq_one_liner_of_format_md_puts_a_session_together(tmp_path: Path) -> None:
    assert JQ in (Path(__file__).parents[1] / "docs" / "format.md").read_text("utf-8")
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    path = tmp_path / "sessions.json"
    sessions = {**sized_sessions(3, 121_000, seed=13), "small": {"a": 1}}

    async def write() -> None:
        async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
            for key, entry in sessions.items():
                await store.set(key, entry)

    await write()
    for key, entry in sessions.items():
        out = subprocess.run(JQ, shell=True, cwd=folder_of(path, key), capture_output=True, check=True)
        assert json.loads(out.stdout) == entry
        assert list(json.loads(out.stdout)) == list(entry)  # member order too


async def test_aiosessions_show_puts_a_session_together(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key, entry = next(iter(sized_sessions(1, 121_000, seed=14).items()))

    async def write() -> None:
        async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
            await store.set(key, entry)

    await write()
    out = subprocess.run(
        [sys.executable, "-m", "aiosessions", "show", str(path), key], capture_output=True, check=True
    )
    assert json.loads(out.stdout) == entry


class _CountingFS(aiosessions.FileSystem):
    def __init__(self) -> None:
        super().__init__()
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)


@pytest.mark.parametrize("cache_bytes", [16 * 2**20, 0], ids=["cached", "no-cache"])
async def test_a_durable_update_of_a_split_entry_syncs_its_blobs_once(
    tmp_path: Path, cache_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs written without fsync are synced by the first durable write naming them, then never
    again: what this process synced is remembered apart from the entry cache (fsync per file:
    through the journal, see test_journal.py)."""
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")
    path = tmp_path / "sessions.json"
    key, entry = next(iter(sized_sessions(1, 121_000, seed=15).items()))
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        await store.set(key, entry)  # fsync off: its blobs are not durable
    fs = _CountingFS()
    async with aiosessions.open_store(
        path, entry_type=dict, fsync=True, flush_interval=0, cache_bytes=cache_bytes, filesystem=fs
    ) as store:
        await store.update(key, lambda e: {**e, "updatedAt": 1})
        blobs = len(blobs_in(folder_of(path, key)))
        assert fs.fsyncs == blobs + 1 + 2  # each blob, their folder, then meta.json and its folder
        before = fs.fsyncs
        for n in range(2, 7):
            await store.update(key, lambda e, n=n: {**e, "updatedAt": n})
        assert fs.fsyncs - before == 5 * 2


async def test_a_blob_file_made_again_by_another_process_is_synced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What this process synced is a file (its signature), not a digest: a blob removed and
    made again without fsync by another process is fsynced by the next durable write."""
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")
    path = tmp_path / "sessions.json"
    key, entry = next(iter(sized_sessions(1, 121_000, seed=16).items()))
    fs = _CountingFS()
    async with aiosessions.open_store(
        path, entry_type=dict, fsync=True, flush_interval=0, filesystem=fs
    ) as store:
        await store.set(key, entry)
        await store.update(key, lambda e: {**e, "updatedAt": 1})
        before = fs.fsyncs
        await store.update(key, lambda e: {**e, "updatedAt": 2})
        assert fs.fsyncs - before == 2  # meta.json and its folder: the blobs are synced
        # Another process deletes the session and writes it again, without fsync.
        async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as other:
            await other.delete(key)
            await other.flush()
            await other.set(key, {**entry, "updatedAt": 3})
        blobs = len(blobs_in(folder_of(path, key)))
        before = fs.fsyncs
        await store.update(key, lambda e: {**e, "updatedAt": 4})
        assert fs.fsyncs - before == blobs + 1 + 2  # each blob, their folder, meta.json and its folder


async def test_a_new_blob_file_is_fsynced_even_with_fsync_off(tmp_path: Path) -> None:
    """A new blob gets a new name, which ext4's auto_da_alloc does not cover: without an fsync
    a power cut could bring it back empty under a meta.json that names it."""
    path = tmp_path / "sessions.json"
    key, entry = next(iter(sized_sessions(1, 121_000, seed=17).items()))
    fs = _CountingFS()
    async with aiosessions.open_store(path, entry_type=dict, filesystem=fs, **OPTIONS) as store:
        await store.set("other", {"n": 1})  # the store and its lock files are made
        await store.flush()
        before = fs.fsyncs
        await store.set(key, entry)
        await store.flush()
        blobs = len(blobs_in(folder_of(path, key)))
        assert blobs >= 2 and fs.fsyncs - before == blobs  # each blob file once; not meta.json
        await store.update(key, lambda e: {**e, "updatedAt": 1})
        await store.flush()
        assert fs.fsyncs - before == blobs  # blobs kept: nothing synced


class _ReadOnlyFS(aiosessions.FileSystem):
    """A filesystem that may only be read (EROFS for everything that would change it)."""

    def open(self, path: str, flags: int, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "read-only file system", path)
        return super().open(path, flags, mode, dir_fd=dir_fd)

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        raise OSError(errno.EROFS, "read-only file system", path)

    def rename(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "read-only file system")


async def test_a_version_1_store_that_cannot_be_written_is_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    entries = {"own-parts": {"x": 1, PARTS: "mine", "big": "b" * 20_000}, "k": {"n": 1}}
    directory = build_v1_store(path, entries)
    (directory / ".locks" / "00").write_bytes(b"")  # lock files a writer of the old store made
    async with aiosessions.open_store(path, entry_type=dict, filesystem=_ReadOnlyFS(), **OPTIONS) as store:
        for key, entry in entries.items():
            assert await store.get(key) == entry
    assert b'"version":1' in (directory / "FORMAT").read_bytes()


async def test_the_cli_reads_a_version_1_store_as_it_is_and_migrate_moves_it_forward(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    entries = {"own-parts": {"x": 1, PARTS: "mine", "big": "b" * 20_000}, "k": {"n": 1}}
    directory = build_v1_store(path, entries)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "aiosessions", *args], capture_output=True, text=True, check=False
        )
        return done.stdout + done.stderr

    assert "2 sessions" in cli("ls", str(path))
    assert json.loads(cli("show", str(path), "own-parts")) == entries["own-parts"]
    assert "old-format" in cli("fsck", str(path))
    assert "the real run moves it forward to format version 3" in cli("migrate", str(path), "--dry-run")
    cli("prune", str(path), "--max-entries", "1", "--dry-run")
    cli("export", str(path), "-o", str(tmp_path / "out.json"))
    assert json.loads((tmp_path / "out.json").read_bytes()) == entries
    assert b'"version":1' in (directory / "FORMAT").read_bytes()  # reading changed nothing
    assert "moved forward to format version 3" in cli("migrate", str(path))
    assert json.loads((directory / "FORMAT").read_bytes())["version"] == 3
    assert blobs_in(directory / "own-parts")
    assert json.loads(cli("show", str(path), "own-parts")) == entries["own-parts"]
    assert "0 problems" in cli("fsck", str(path))
