"""The installed ``aiosessions`` command, run in subprocesses: output, exit status, every error case."""

from __future__ import annotations

import ctypes
import fcntl
import importlib.util
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from aiosessions._keys import encode_key

BIN = Path(sys.executable).parent / "aiosessions"
COMMANDS = ("ls", "show", "migrate", "export", "prune", "fsck", "bench")


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: install the package (pip install -e .) so the script exists")


def unprivileged() -> None:
    """In a child before exec: make root obey file permissions as any other user does.

    CI runs as root, who may write into a read-only folder; a process of uid 0 without
    the capabilities that bypass permission checks is held to the owner's mode bits.
    (Dropping to ``nobody`` instead would lose access to an interpreter under /root.)
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run(
    *args: str | Path, ok: bool | None = True, read_only_user: bool = False
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=unprivileged if read_only_user else None,
    )
    assert "Traceback" not in result.stderr, result.stderr
    if ok is True:
        assert result.returncode == 0, result.stderr
    return result


def fails(*args: str | Path, match: str, status: int = 1) -> str:
    """Run a command expected to fail: one line on stderr naming the command, that status."""
    result = run(*args, ok=None)
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"aiosessions {args[0]}: error: "), lines[0]
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def legacy(tmp_path: Path, openclaw_sessions_path: Path) -> Path:
    path = tmp_path / "state" / "sessions.json"
    path.parent.mkdir()
    shutil.copyfile(openclaw_sessions_path, path)
    return path


@pytest.fixture
def migrated(legacy: Path) -> Path:
    run("migrate", legacy, "--no-fsync")
    return legacy


def test_help_on_every_command() -> None:
    top = run("--help")
    assert "usage: aiosessions" in top.stdout
    for command in COMMANDS:
        assert command in top.stdout
        assert f"usage: aiosessions {command}" in run(command, "--help").stdout
    assert run("--version").stdout.startswith("aiosessions ")
    bare = run(ok=None)
    assert bare.returncode == 2 and "usage:" in bare.stderr


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiosessions", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "usage: aiosessions" in result.stdout


def test_importing_the_library_imports_no_cli_machinery() -> None:
    code = (
        "import sys, aiosessions; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('argparse', 'rich')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_ls_newest_first_on_both_kinds(legacy: Path, openclaw_sessions: dict[str, Any]) -> None:
    newest = sorted(openclaw_sessions, key=lambda k: -openclaw_sessions[k]["updatedAt"])
    rows = json.loads(run("ls", legacy, "--json").stdout)
    assert [row["key"] for row in rows] == newest
    assert rows[0]["updatedAt"] == openclaw_sessions[newest[0]]["updatedAt"]

    run("migrate", legacy, "--no-fsync")
    # The store file, its directory or the folder holding them all name the store.
    for name in (legacy, legacy.with_name("sessions.d"), legacy.parent):
        limited = json.loads(run("ls", name, "--json", "--limit", "5").stdout)
        assert [row["key"] for row in limited] == newest[:5]

    table = run("ls", legacy, "-n", "3").stdout.splitlines()
    assert table[0].split() == ["UPDATED", "(UTC)", "AGE", "TOKENS", "MODEL", "NAME", "KEY"]
    assert [line.rsplit(maxsplit=1)[-1] for line in table[1:4]] == newest[:3]
    assert table[-1] == f"{len(openclaw_sessions)} sessions (showing the newest 3)"


def test_ls_by_prefix_and_newest_on_both_kinds(legacy: Path, openclaw_sessions: dict[str, Any]) -> None:
    def newest(prefix: str = "") -> list[str]:
        keys = [k for k in openclaw_sessions if k.startswith(prefix)]
        return sorted(keys, key=lambda k: (-openclaw_sessions[k]["updatedAt"], k))

    prefix = "agent:main:telegram:"
    assert newest(prefix) and len(newest(prefix)) < len(openclaw_sessions)
    for _ in ("json", "directory"):
        rows = json.loads(run("ls", legacy, "--json", "--prefix", prefix).stdout)
        assert [row["key"] for row in rows] == newest(prefix)
        limited = json.loads(run("ls", legacy, "--json", "--prefix", prefix, "-n", "2").stdout)
        assert [row["key"] for row in limited] == newest(prefix)[:2]
        assert json.loads(run("ls", legacy, "--json", "--prefix", "no-such:").stdout) == []
        table = run("ls", legacy, "-n", "4").stdout.splitlines()
        assert [line.rsplit(maxsplit=1)[-1] for line in table[1:5]] == newest()[:4]
        assert table[-1] == f"{len(openclaw_sessions)} sessions (showing the newest 4)"
        run("migrate", legacy, "--no-fsync")


def test_ls_n_names_an_unreadable_session_among_the_newest(migrated: Path) -> None:
    key = sorted(json.loads(run("ls", migrated, "--json").stdout), key=lambda r: -r["updatedAt"])[0]["key"]
    meta = migrated.with_name("sessions.d") / encode_key(key) / "meta.json"
    meta.write_text('{"updatedAt": 99999999999999, "cut short')
    done = run("ls", migrated, "-n", "3", "--json")
    assert key not in [row["key"] for row in json.loads(done.stdout)]
    assert key in done.stderr


def test_show_prints_the_entry(migrated: Path, openclaw_sessions: dict[str, Any]) -> None:
    key = "agent:main:signal:group:x/Y+z==15"
    out = run("show", migrated, key).stdout
    assert json.loads(out) == openclaw_sessions[key]
    assert out.startswith('{\n  "')


def test_migrate_dry_run_then_for_real(legacy: Path, openclaw_sessions: dict[str, Any]) -> None:
    dry = run("migrate", legacy, "--dry-run").stdout
    assert "dry run: would migrate 60 sessions" in dry
    assert not legacy.with_name("sessions.d").exists()

    report = json.loads(run("migrate", legacy, "--json").stdout)
    assert report["entries"] == len(openclaw_sessions) and report["backup"]
    assert json.loads(Path(report["backup"]).read_bytes()) == openclaw_sessions
    again = run("migrate", legacy).stdout
    assert again.startswith("already migrated")


def test_migrate_refuses_invalid_entries_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps({"good": {"updatedAt": 1}, "bad": [1, 2]}))
    fails("migrate", path, match="cannot be migrated")
    dry = run("migrate", path, "--dry-run", ok=None)
    assert dry.returncode == 1  # the real run would refuse: the dry run's status says so
    assert "migrate would fail: 1 entry cannot be migrated" in dry.stdout
    assert "'bad': the entry is an array" in dry.stdout
    assert "would go through" in run("migrate", path, "--dry-run", "--skip-invalid").stdout
    out = run("migrate", path, "--skip-invalid", "--no-fsync").stdout
    assert "migrated 1 session (" in out and "left out 1 entry (" in out


def test_export_to_stdout_and_to_a_file(
    migrated: Path, openclaw_sessions: dict[str, Any], tmp_path: Path
) -> None:
    assert json.loads(run("export", migrated).stdout) == openclaw_sessions
    target = tmp_path / "back.json"
    result = run("export", migrated, "-o", target)
    assert "exported 60 sessions" in result.stderr
    assert json.loads(target.read_bytes()) == openclaw_sessions


def test_prune(migrated: Path, openclaw_sessions: dict[str, Any]) -> None:
    dry = json.loads(run("prune", migrated, "--max-entries", "50", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True
    assert len(dry["removed"]) == 10 and dry["kept"] == 50
    assert len(json.loads(run("ls", migrated, "--json").stdout)) == 60

    out = run("prune", migrated, "--older-than", "3650d", "--max-entries", "55").stdout
    assert out.splitlines()[-1] == "removed 5 of 60 sessions (0 stale, 5 over the cap); 55 left"
    oldest = sorted(openclaw_sessions, key=lambda k: openclaw_sessions[k]["updatedAt"])[:5]
    assert [line.split()[1] for line in out.splitlines()[:-1]] == oldest
    assert len(json.loads(run("ls", migrated, "--json").stdout)) == 55

    bad = run("prune", migrated, "--older-than", "soon", ok=None)
    assert bad.returncode == 2 and "is not a duration" in bad.stderr
    usage = run("prune", migrated, ok=None)
    assert usage.returncode == 2 and "usage: aiosessions prune" in usage.stderr
    assert "give --older-than, --max-entries or both" in usage.stderr


def test_fsck_exit_status(migrated: Path) -> None:
    clean = run("fsck", migrated)
    assert clean.stdout.strip().endswith("60 sessions ok, 0 problems")
    folder = next(p for p in migrated.with_name("sessions.d").iterdir() if not p.name.startswith("."))
    (folder / "meta.json").write_text("{broken")

    listed = run("ls", migrated, "--json")
    assert len(json.loads(listed.stdout)) == 59 and "1 session could not be read" in listed.stderr
    found = run("fsck", migrated, ok=None)
    assert found.returncode == 3 and found.stdout.startswith("corrupt-entry")
    report = json.loads(run("fsck", migrated, "--json", ok=None).stdout)
    assert report["ok"] is False and report["problems"][0]["kind"] == "corrupt-entry"

    repaired = run("fsck", migrated, "--repair", ok=None)
    assert repaired.returncode == 4 and "-> moved to" in repaired.stdout
    assert run("fsck", migrated).returncode == 0


def test_bench_is_the_benchmark_modules_command() -> None:
    # The run itself is tested with the benchmark module (tests/test_bench.py).
    usage = run("bench", "--help").stdout
    assert "--quick" in usage and "--sessions" in usage and "legacy" in usage


# -- errors: one clear line, status 1, no traceback ----------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "sessions.json"
    for command in ("ls", "export", "fsck", "migrate"):
        fails(command, missing, match="no session store")
    fails("show", missing, "some:key", match="no session store")
    fails("prune", missing, "--max-entries", "1", match="no session store")
    assert not (tmp_path / "nope").exists()  # and nothing was created


def test_a_path_that_is_neither_kind_of_store(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    fails("ls", tmp_path / "plain", match="holds no sessions.json")
    unmarked = tmp_path / "sessions.d"
    unmarked.mkdir()
    (unmarked / "x").mkdir()
    fails("ls", unmarked, match="no FORMAT marker")
    fails("migrate", unmarked, match="no FORMAT marker")
    assert run("fsck", unmarked, ok=None).returncode == 3  # fsck says what is wrong with it


def test_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text('{"a": {"b": ')
    for command in ("ls", "export", "migrate"):
        fails(command, path, match="is not a JSON object of sessions")
    fails("show", path, "a", match="is not a JSON object of sessions")
    path.write_text("")
    fails("ls", path, match="is empty")
    assert path.read_text() == ""


def test_a_key_not_found_and_an_invalid_key(migrated: Path) -> None:
    fails("show", migrated, "agent:main:nobody", match="no session 'agent:main:nobody'")
    fails("show", migrated, "", match="keys must not be empty")


# -- on a terminal ---------------------------------------------------------------------------------


def run_in_terminal(
    *args: str | Path, columns: int = 160, rich: bool = True, answer: str | None = None
) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal ``columns`` wide, as an operator would see it.

    ``rich=False`` runs the same command with rich made unimportable (the plain-text output).
    With ``answer``, stdin is the terminal too, and ``answer`` is typed once a ``[y/N]``
    question shows.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    command = [str(BIN)]
    if not rich:
        hide_rich = "import sys; sys.modules['rich'] = None; from aiosessions._cli import main; "
        command = [sys.executable, "-c", hide_rich + "sys.exit(main())"]
    stdin = subprocess.DEVNULL if answer is None else slave
    proc = subprocess.Popen([*command, *map(str, args)], stdin=stdin, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
        if answer is not None and b"[y/N]" in b"".join(chunks):
            os.write(master, answer.encode() + b"\n")
            answer = None
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return proc.wait(timeout=60), re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # without colours


def test_on_a_terminal_ls_draws_a_table_and_migrate_a_progress_bar(legacy: Path) -> None:
    status, out = run_in_terminal("migrate", legacy, "--no-fsync")
    assert status == 0 and "migrated 60 sessions" in out
    assert "60/60" in out  # the progress bar's count (rich's or the plain one)
    status, out = run_in_terminal("ls", legacy, "-n", "2")
    assert status == 0 and "KEY" in out and "60 sessions (showing the newest 2)" in out


def cells(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_ls_on_a_terminal_shows_every_key_whole(
    legacy: Path, openclaw_sessions: dict[str, Any], columns: int, rich: bool
) -> None:
    # rich is in the test extra: the table it draws is the one operators see.
    assert importlib.util.find_spec("rich") is not None, "pip install -e '.[test]' installs rich"
    status, out = run_in_terminal("ls", legacy, columns=columns, rich=rich)
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0].split()[-1] == "KEY"
    # Every key is on its row, whole (the longest fixture key, 71 characters, fits 80 columns),
    # and no row is wider than the terminal: other columns gave way instead.
    rows = [line.rstrip() for line in lines[1 : 1 + len(openclaw_sessions)]]
    assert sorted(row.rsplit("  ", 1)[-1].strip() for row in rows) == sorted(openclaw_sessions)
    assert "…" not in "".join(row.rsplit("  ", 1)[-1] for row in rows)
    assert all(cells(row) <= columns for row in rows), max(rows, key=cells)
    assert lines[-1].startswith("60 sessions")
    if columns == 120:
        assert lines[0].split()[:5] == ["UPDATED", "(UTC)", "AGE", "TOKENS", "MODEL"]
    assert f"left out to fit {columns} columns" in lines[-2]


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_ls_on_a_terminal_wraps_a_key_longer_than_the_terminal(tmp_path: Path, rich: bool) -> None:
    long_key = "agent:main:matrix:channel:!" + "room" * 30 + ":example.org"
    path = tmp_path / "sessions.json"
    odd_key = "agent:main:[bold]odd[/bold]:thread:1"  # neither markup nor an emoji code to rich
    path.write_text(json.dumps({long_key: {"updatedAt": 2}, odd_key: {"updatedAt": 1}}))
    status, out = run_in_terminal("ls", path, columns=80, rich=rich)
    assert status == 0, out
    body = out.splitlines()[1:-2]
    # Wrapped (rich folds it into the column; plain text leaves it to the terminal), never cut.
    assert long_key in "".join(line.strip() for line in body)
    assert "…" not in out
    assert odd_key in out


# -- honest words ----------------------------------------------------------------------------------


def test_fsck_offers_repair_only_for_what_it_can_repair(migrated: Path) -> None:
    store = migrated.with_name("sessions.d")
    folder = next(p for p in store.iterdir() if not p.name.startswith("."))
    (folder / "meta.json").write_text("{broken")
    found = run("fsck", migrated, ok=None)
    assert found.returncode == 3
    assert found.stdout.splitlines()[-1].endswith("59 sessions ok, 1 problem (run with --repair to fix it)")

    # A legacy file left beside the store: only `migrate` moves it aside, so fsck says so.
    migrated.write_text("{}")
    mixed = run("fsck", migrated, ok=None).stdout.splitlines()
    assert mixed[-1].endswith("2 problems (--repair fixes 1; the other lines say what to do)")
    assert any(line.startswith("stale-legacy") and "aiosessions migrate" in line for line in mixed)
    repaired = run("fsck", migrated, "--repair", ok=None)
    assert repaired.returncode == 3
    assert repaired.stdout.splitlines()[-1].endswith(
        "2 problems, 1 repaired; 1 that --repair cannot fix (each line says what to do)"
    )
    alone = run("fsck", migrated, "--repair", ok=None)
    assert alone.returncode == 3
    assert alone.stdout.splitlines()[-1].endswith(
        "59 sessions ok, 1 problem, 0 repaired; 1 that --repair cannot fix (each line says what to do)"
    )
    report = json.loads(run("fsck", migrated, "--json", ok=None).stdout)
    assert [(p["kind"], p["repairable"]) for p in report["problems"]] == [("stale-legacy", False)]


def test_one_session_is_one_session(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps({"agent:main:one": {"updatedAt": 1}}))
    assert run("ls", path).stdout.splitlines()[-1] == "1 session"
    assert "would migrate 1 session (" in run("migrate", path, "--dry-run").stdout
    out = run("prune", path, "--max-entries", "0").stdout
    assert out.splitlines()[-1] == "removed 1 of 1 session (0 stale, 1 over the cap); 0 left"
    assert run("fsck", path).stdout.strip().endswith("0 sessions ok, 0 problems")


def test_prune_on_a_read_only_store_says_the_sessions_are_still_there(migrated: Path) -> None:
    state = migrated.parent
    subprocess.run(["chmod", "-R", "a-w", str(state)], check=True)
    try:
        failed = run("prune", migrated, "--max-entries", "10", "--yes", ok=None, read_only_user=True)
        assert failed.returncode == 1, failed.stderr
        assert "could not remove 50 of the 50 sessions it chose" in failed.stderr
        assert "still in the store, unchanged (0 removed)" in failed.stderr
        assert "lost" not in failed.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(state)], check=True)
    assert len(json.loads(run("ls", migrated, "--json").stdout)) == 60


# -- errors for scripts ----------------------------------------------------------------------------


def test_json_errors_are_json_objects_on_stdout(tmp_path: Path, legacy: Path) -> None:
    missing = tmp_path / "nope.json"
    for command in ("ls", "migrate", "prune", "fsck"):
        extra = ["--max-entries", "1"] if command == "prune" else []
        result = run(command, missing, "--json", *extra, ok=None)
        assert result.returncode == 1
        error = json.loads(result.stdout)["error"]
        assert error["command"] == command and error["status"] == 1, error
        assert "no session store" in error["message"] and error["type"], error
        assert result.stderr.startswith(f"aiosessions {command}: error: ")  # and the line for people
    usage = run("prune", legacy, "--json", ok=None)
    assert usage.returncode == 2
    assert json.loads(usage.stdout)["error"] == {
        "command": "prune",
        "type": "UsageError",
        "message": "give --older-than, --max-entries or both",
        "status": 2,
    }
    bad = run("ls", legacy, "--json", "--limit", "many", ok=None)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["type"] == "UsageError"
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("[1, 2]")
    error = json.loads(run("ls", corrupt, "--json", ok=None).stdout)["error"]
    assert error["type"] == "CorruptSessionError" and error["where"] == str(corrupt)
    assert not run("ls", corrupt, ok=None).stdout  # without --json: nothing on stdout


# -- wrong paths -----------------------------------------------------------------------------------


def test_a_path_inside_a_store_is_an_error_naming_the_store(migrated: Path) -> None:
    store = migrated.with_name("sessions.d")
    before = sorted(p.name for p in store.iterdir())
    for inside in (store / "FORMAT", store / ".locks", store / "nothing-here.json"):
        line = fails("ls", inside, match=f"is inside the directory store {store}: give the store itself")
        assert str(migrated) in line
    fails("migrate", store / "FORMAT", match="is inside the directory store")
    assert sorted(p.name for p in store.iterdir()) == before  # no .FORMAT.lock, nothing new


def test_a_missing_path_names_what_is_there(tmp_path: Path, migrated: Path) -> None:
    store = migrated.with_name("sessions.d")
    fails("ls", migrated.with_name("bot.json"), match=f"stores there may be: {store}")
    fails("migrate", tmp_path / "nope.json", match="no session store")
    fails("ls", tmp_path / "no" / "such.json", match=f"({tmp_path / 'no'} does not exist)")
    assert not (tmp_path / ".nope.lock").exists() and not (tmp_path / "no").exists()


def test_ls_names_the_sessions_it_cannot_read(migrated: Path) -> None:
    store = migrated.with_name("sessions.d")
    broken = sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))[:3]
    for folder in broken:
        (folder / "meta.json").write_text("[]")
    listed = run("ls", migrated, "--json")
    assert len(json.loads(listed.stdout)) == 57
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 4, listed.stderr
    for folder in broken:
        assert any(str(folder) in line and "is not a valid entry" in line for line in warnings[:3])
    assert warnings[-1].startswith("aiosessions ls: warning: 3 sessions could not be read and are not listed")


# -- unreadable sessions and confirmations -----------------------------------------------------


def break_sessions(migrated: Path, count: int) -> list[str]:
    """Make ``count`` sessions' meta.json unreadable; return their folders' names."""
    store = migrated.with_name("sessions.d")
    folders = sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))[:count]
    for folder in folders:
        (folder / "meta.json").write_text("[not an object]")
    return [folder.name for folder in folders]


def test_export_goes_on_without_unreadable_sessions_only_when_told(migrated: Path, tmp_path: Path) -> None:
    names = break_sessions(migrated, 2)
    refused = fails("export", migrated, match="2 sessions cannot be read")
    assert "--skip-corrupt" in refused and "nothing was exported" in refused
    assert not run("export", migrated, ok=None).stdout

    exported = run("export", migrated, "--skip-corrupt")
    assert len(json.loads(exported.stdout)) == 58
    warnings = exported.stderr.splitlines()
    assert all(any(name in line for line in warnings) for name in names), exported.stderr
    assert warnings[-1].startswith("aiosessions export: warning: 2 sessions could not be read and are left")
    target = tmp_path / "back.json"
    to_file = run("export", migrated, "-o", target, "--skip-corrupt")
    assert "exported 58 sessions" in to_file.stderr and len(json.loads(target.read_bytes())) == 58


def test_prune_goes_on_without_unreadable_sessions_only_when_told(migrated: Path) -> None:
    store = migrated.with_name("sessions.d")
    names = break_sessions(migrated, 2)

    def on_disk() -> int:
        return len([p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")])

    dry = run("prune", migrated, "--max-entries", "50", "--dry-run", ok=None)
    assert dry.returncode == 1, dry.stderr  # the real prune would refuse: said by the status
    assert dry.stdout.splitlines()[-1] == (
        "would remove 8 of 58 sessions (0 stale, 8 over the cap); 50 left; 2 unreadable"
    )
    assert sum(line.startswith("unread  ") for line in dry.stdout.splitlines()) == 2
    assert "a real prune would refuse" in dry.stderr and "--skip-corrupt" in dry.stderr
    report = json.loads(run("prune", migrated, "--max-entries", "50", "--dry-run", "--json", ok=None).stdout)
    assert report["would_succeed"] is False and len(report["unreadable"]) == 2 and report["blockers"]
    assert run("prune", migrated, "--max-entries", "50", "--dry-run", "--skip-corrupt").returncode == 0

    fails("prune", migrated, "--max-entries", "50", match="2 sessions cannot be read")
    assert on_disk() == 60  # nothing was removed

    done = run("prune", migrated, "--max-entries", "50", "--skip-corrupt")
    assert done.stdout.splitlines()[-1].startswith("removed 8 of 58 sessions")
    assert all(any(name in line for line in done.stderr.splitlines()) for name in names), done.stderr
    assert "left alone" in done.stderr
    assert on_disk() == 52  # the 50 newest, and the two unreadable ones, untouched


def test_a_prune_of_many_asks_first_on_a_terminal(migrated: Path) -> None:
    def count() -> int:
        return len(json.loads(run("ls", migrated, "--json").stdout))

    status, out = run_in_terminal("prune", migrated, "--max-entries", "10", answer="n")
    assert status == 1 and "remove 50 of the 60 sessions" in out and "[y/N]" in out
    assert "not confirmed; nothing was removed" in out and count() == 60

    # Without a terminal to ask, many deletions need --yes (a script says what it wants).
    refused = fails("prune", migrated, "--max-entries", "10", match="pass --yes to prune that many")
    assert "stdin is not a terminal" in refused and count() == 60

    status, out = run_in_terminal("prune", migrated, "--max-entries", "10", answer="y")
    assert status == 0 and "removed 50 of 60 sessions" in out and count() == 10
    few = run("prune", migrated, "--max-entries", "5")  # 10 or fewer: no question
    assert few.stdout.splitlines()[-1].startswith("removed 5 of 10") and count() == 5
    assert run("prune", migrated, "--max-entries", "0", "--yes").returncode == 0 and count() == 0


# -- migrate --dry-run checks what the real run needs ---------------------------------------------


def test_migrate_dry_run_status_says_whether_the_real_run_would_succeed(legacy: Path) -> None:
    state = legacy.parent
    dry = run("migrate", legacy, "--dry-run")
    assert "the real migration would go through" in dry.stdout
    assert json.loads(run("migrate", legacy, "--dry-run", "--json").stdout)["would_succeed"] is True

    # A folder this user may not write: the dry run says so, and the real run agrees.
    before = sorted(os.listdir(state))
    state.chmod(0o555)
    try:
        refused = run("migrate", legacy, "--dry-run", ok=None, read_only_user=True)
        assert refused.returncode == 1, refused.stdout
        assert f"migrate would fail: {state} is not writable by this user" in refused.stdout
        as_json = run("migrate", legacy, "--dry-run", "--json", ok=None, read_only_user=True)
        report = json.loads(as_json.stdout)
        assert report["would_succeed"] is False and "not writable" in report["blockers"][0]
        real = run("migrate", legacy, "--no-fsync", ok=None, read_only_user=True)
        assert real.returncode == 1 and "Permission denied" in real.stderr
    finally:
        state.chmod(0o755)
    assert sorted(os.listdir(state)) == before  # neither run left anything

    # Something in the way of the new store: a folder the real run will not overwrite.
    (state / "sessions.d").mkdir()
    (state / "sessions.d" / "notes.txt").write_text("mine")
    blocked = run("migrate", legacy, "--dry-run", ok=None)
    assert blocked.returncode == 1 and "is not empty: migrate will not overwrite it" in blocked.stdout
    fails("migrate", legacy, "--no-fsync", match="is not empty")


# -- reading writes nothing ------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and mtime (ns)."""
    found = {}
    for path in [folder, *folder.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.parametrize("kind", ["legacy", "directory"])
def test_commands_that_read_write_nothing_even_on_a_read_only_store(legacy: Path, kind: str) -> None:
    if kind == "directory":
        run("migrate", legacy, "--no-fsync")
    state = legacy.parent
    key = "agent:main:signal:group:x/Y+z==15"
    subprocess.run(["chmod", "-R", "a-w", str(state)], check=True)
    before = snapshot(state)
    try:
        for command in (
            ("ls", legacy),
            ("ls", legacy, "--json", "-n", "3"),
            ("show", legacy, key),
            ("export", legacy),
            ("export", legacy, "--skip-corrupt"),
            ("prune", legacy, "--max-entries", "5", "--dry-run"),
            ("fsck", legacy),
        ):
            result = run(*command, read_only_user=True)
            assert result.stdout, command
        dry = run("migrate", legacy, "--dry-run", ok=None, read_only_user=True)
        if kind == "legacy":  # the real run would need to write here: the dry run says so
            assert dry.returncode == 1 and "is not writable by this user" in dry.stdout
        else:
            assert dry.returncode == 0 and dry.stdout.startswith("already migrated")
        assert snapshot(state) == before  # no lock file, no sweep, nothing touched
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(state)], check=True)


def test_rewriting_a_legacy_file_keeps_its_permissions(legacy: Path, tmp_path: Path) -> None:
    legacy.chmod(0o644)  # say, the gateway's file, read by a backup job of another user
    strict = subprocess.run(  # a service's umask that would strip the others' read
        [str(BIN), "prune", str(legacy), "--max-entries", "55"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o077),
        check=False,
    )
    assert strict.returncode == 0, strict.stderr
    assert len(json.loads(legacy.read_bytes())) == 55  # rewritten ...
    assert legacy.stat().st_mode & 0o777 == 0o644  # ... with the permissions it had

    target = tmp_path / "back.json"
    target.write_text("{}")
    target.chmod(0o640)
    run("export", legacy, "-o", target)
    assert len(json.loads(target.read_bytes())) == 55 and target.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "fresh.json"
    run("export", legacy, "-o", fresh)
    assert fresh.stat().st_mode & 0o777 == 0o600  # a new file is private, as every store file
