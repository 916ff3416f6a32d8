"""Packaging: importing aiosessions imports no framework; each adapter shows its wiring in five lines."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FRAMEWORKS = ["aiogram", "telegram", "aiohttp", "aiohttp_session"]


def test_importing_aiosessions_imports_no_framework() -> None:
    """Not the package, nor the adapters' shared private modules (only an adapter module does)."""
    code = (
        "import importlib, pkgutil, sys, aiosessions, aiosessions.adapters as a\n"
        "for m in pkgutil.iter_modules(a.__path__):\n"
        "    if m.name.startswith('_'): importlib.import_module('aiosessions.adapters.' + m.name)\n"
        f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def wiring(module: str) -> list[str]:
    """The literal block after "Wiring it in" in the module's docstring, as lines."""
    doc = importlib.import_module(module).__doc__ or ""
    block = re.search(r"Wiring it in.*?::\n\n((?:    .*\n|\n)+)", doc)
    assert block is not None, f"{module}'s docstring shows no wiring"
    return [line[4:] for line in block.group(1).splitlines() if line.strip()]


def test_aiohttp_wiring_runs(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp_session", reason="the aiohttp extra is not installed")
    from aiohttp import web

    lines = wiring("aiosessions.adapters.aiohttp")
    assert len(lines) == 5, lines
    code = "\n".join(lines).replace('"state/sessions.json"', repr(str(tmp_path / "sessions.json")))
    namespace: dict[str, Any] = {"app": web.Application()}
    exec(code, namespace)
    assert namespace["storage"].on_cleanup in namespace["app"].on_cleanup


def test_aiogram_wiring_runs(tmp_path: Path) -> None:
    pytest.importorskip("aiogram", reason="the aiogram extra is not installed")
    lines = wiring("aiosessions.adapters.aiogram")
    assert len(lines) == 5, lines
    assert lines[-1].startswith("await dp.start_polling(bot)")  # online: not run here
    code = "\n".join(lines[:-1]).replace('"state/sessions.json"', repr(str(tmp_path / "sessions.json")))
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    dp = namespace["dp"]
    assert dp.storage is namespace["storage"]
    assert dp.fsm.events_isolation.__class__.__name__ == "AiosessionsEventIsolation"


def test_ptb_wiring_runs(tmp_path: Path) -> None:
    pytest.importorskip("telegram", reason="the ptb extra is not installed")
    lines = wiring("aiosessions.adapters.ptb")
    assert len(lines) == 5, lines
    assert lines[-1].startswith("app.run_polling()")  # online: not run here
    code = "\n".join(lines[:-1]).replace('"state/sessions.json"', repr(str(tmp_path / "sessions.json")))
    namespace: dict[str, Any] = {"TOKEN": "1000:offline"}
    exec(code, namespace)
    assert namespace["app"].persistence is namespace["persistence"]
