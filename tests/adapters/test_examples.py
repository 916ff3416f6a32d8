"""The adapters' examples run offline, as a reader would run them, and show what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stderr, done.stderr
    return done.stdout


def test_aiohttp_counter_session_survives_a_server_restart() -> None:
    pytest.importorskip("aiohttp_session", reason="the aiohttp extra is not installed")
    lines = run_example("aiohttp_counter.py").splitlines()
    restart = lines.index("server 1 stopped")
    assert lines[restart - 1] == "GET /        -> 200 ada has visited 2 times"
    assert lines[restart + 2] == "GET /        -> 200 ada has visited 3 times", "the session survived"
    assert lines[-2] == "GET /        -> 401 log in first", "logout ended it"


def test_aiogram_bot_carries_its_conversation_over_a_restart() -> None:
    pytest.importorskip("aiogram", reason="the aiogram extra is not installed")
    lines = run_example("aiogram_bot.py").splitlines()
    restart = lines.index("bot 1 stopped; bot 2 starts on the same store")
    assert lines[restart - 1] == "  bot: Nice to meet you, Ada. How old are you?"
    assert lines[restart + 2] == "  bot: Ada, 36: noted (we met at 12:02 UTC, a datetime).", (
        "state and data survived"
    )
    assert lines[restart + 3 :] == [" user: 37", "bot 2 stopped"], "the conversation ended"


def test_ptb_bot_carries_its_conversation_over_a_restart() -> None:
    pytest.importorskip("telegram", reason="the ptb extra is not installed")
    lines = run_example("ptb_bot.py").splitlines()
    restart = lines.index("bot 1 stopped; bot 2 starts on the same store")
    assert lines[restart - 1] == "  bot: Nice to meet you, Ada. How old are you?"
    assert lines[restart + 2] == "  bot: Ada, 36: noted (we met at 12:02 UTC, a datetime).", (
        "state and data survived"
    )
    assert lines[restart + 3 :] == [" user: 37", "bot 2 stopped"], "the conversation ended"
