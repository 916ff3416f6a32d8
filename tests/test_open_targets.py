"""``open_store`` takes a path, a URL or a backend object; file options go with paths only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import aiosessions
from aiosessions import SessionEntry, open_store
from aiosessions.backends import Backend, DirectoryBackend, JsonBackend


@pytest.mark.asyncio
async def test_a_backend_object_built_with_its_own_options(tmp_path: Path) -> None:
    backend = DirectoryBackend(tmp_path / "sessions.json", lock_timeout=2.5, cache_bytes=0)
    async with open_store(backend, flush_interval=0) as store:
        assert store.backend is backend and store.mode == "directory"
        await store.set("k", SessionEntry(session_id="s"))
    async with open_store(tmp_path / "sessions.json") as store:
        entry = await store.get("k")
        assert entry is not None and entry.session_id == "s"


@pytest.mark.asyncio
async def test_a_json_backend_object(tmp_path: Path) -> None:
    async with open_store(JsonBackend(tmp_path / "sessions.json"), flush_interval=0) as store:
        assert store.mode == "json"
        await store.set("k", SessionEntry(session_id="s"))
    assert (tmp_path / "sessions.json").read_bytes().startswith(b"{\n")


@pytest.mark.asyncio
async def test_a_backend_that_must_exist_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(aiosessions.StoreFormatError):
        async with open_store(DirectoryBackend(tmp_path / "nope.json", create=False)):
            pass
    assert not (tmp_path / "nope.d").exists()


def test_the_file_backends_implement_the_protocol(tmp_path: Path) -> None:
    def accepts(backend: Backend) -> str:
        return backend.mode

    assert accepts(DirectoryBackend(tmp_path / "a.json")) == "directory"
    assert accepts(JsonBackend(tmp_path / "b.json")) == "json"


@pytest.mark.parametrize(
    "option", [{"mode": "json"}, {"lock_timeout": 1.0}, {"cache_bytes": 0}, {"tmp_max_age": 1.0}]
)
def test_file_options_with_a_backend_object_are_refused(tmp_path: Path, option: dict[str, object]) -> None:
    with pytest.raises(TypeError, match=f"{next(iter(option))}: options of file stores"):
        open_store(DirectoryBackend(tmp_path / "s.json"), **option)  # type: ignore[call-overload]


def test_file_options_with_a_url_are_refused() -> None:
    with pytest.raises(TypeError, match="lock_timeout: options of file stores"):
        open_store("redis://127.0.0.1:6379/9?prefix=x", lock_timeout=1.0)


@pytest.mark.asyncio
async def test_a_redis_url_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiosessions.backends._redis", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "aiosessions\[redis\]"') as caught:
        async with open_store("redis://user:secret@127.0.0.1:6379/9"):
            pass
    assert "secret" not in str(caught.value)
