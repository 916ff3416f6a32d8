"""The ``aiosessions`` command: look inside a store, migrate it, keep it tidy.

Installed as a console script (``aiosessions``) and runnable as
``python -m aiosessions``. Only this module and ``_bench`` (for the options of
``bench``) import :mod:`argparse`, and :mod:`rich` (the ``cli`` extra) only
inside the functions that draw a table or a progress bar on a terminal;
``import aiosessions`` imports neither. Without
rich, or when the output is not a terminal, the output is plain text.

Exit status: 0 success; 1 an error (one line on stderr); 2 a usage error;
3 ``fsck`` found problems that are still there; 4 ``fsck --repair`` found
problems and repaired every one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import msgspec

from . import __version__, _bench
from ._copy import CopyReport, copy_store
from ._defaults import DEFAULT_LOCK_TIMEOUT
from ._errors import CorruptSessionError, SessionStoreError
from ._fs import FileSystem
from ._layout import FORMAT_FILE, StorePaths, detect_mode
from ._maintenance import FsckReport, PruneReport, fsck, prune, unreadable_sessions
from ._migrate import MigrationReport, export_bytes, export_json, migrate
from ._recency import bounded
from ._store import open_store
from ._targets import is_redis_url
from .backends import DirectoryBackend

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PROBLEMS = 3
EXIT_REPAIRED = 4

_pretty = msgspec.json.Encoder()


class CommandError(Exception):
    """An error the command reports in one line (exit status 1)."""


# -- paths ------------------------------------------------------------------------------------


def _store_path(arg: str) -> Path:
    """The store file a command-line PATH names.

    ``X/sessions.json`` and ``X/sessions.d`` name the store directly; a folder
    holding ``sessions.json`` or ``sessions.d/`` names the store inside it. A path
    inside a directory store (``sessions.d/FORMAT``) is an error naming the store.
    """
    path = Path(arg)
    store = _enclosing_store(path)
    if store is not None:
        raise CommandError(
            f"{arg} is inside the directory store {store}: give the store itself "
            f"({store} or {store.with_suffix('.json')})"
        )
    if path.is_dir() and path.suffix != ".d":
        if (path / "sessions.json").exists() or (path / "sessions.d").is_dir():
            return path / "sessions.json"
        raise CommandError(
            f"{arg} is a folder that holds no sessions.json or sessions.d/: give the store file "
            f"(e.g. {Path(arg, 'sessions.json')}){_stores_in(path)}"
        )
    return path


def _enclosing_store(path: Path) -> Path | None:
    """The directory store (a ``.d`` folder with a FORMAT marker) that ``path`` lies inside."""
    for folder in path.absolute().parents:
        if folder.suffix == ".d" and (folder / FORMAT_FILE).is_file():
            return _shown(folder, path)
    return None


def _shown(path: Path, given: Path) -> Path:
    """``path`` in the form the user gave ``given``: absolute, or relative to the current folder."""
    if given.is_absolute():
        return path
    relative = Path(os.path.relpath(path))
    return path if relative.parts[:1] == ("..",) else relative


def _stores_in(folder: Path) -> str:
    """A hint naming what in ``folder`` looks like a store ("" when nothing does)."""
    try:
        found = sorted(
            entry
            for entry in folder.iterdir()
            if not entry.name.startswith(".")
            and (
                (entry.suffix == ".json" and entry.is_file())
                or (entry.suffix == ".d" and (entry / FORMAT_FILE).is_file())
            )
        )
    except OSError:
        return ""
    if not found:
        return ""
    shown = ", ".join(str(entry) for entry in found[:5]) + (" …" if len(found) > 5 else "")
    return f"; stores there may be: {shown}"


async def _existing_store(arg: str) -> Path:
    """The store at PATH, which must exist (commands never create one)."""
    path = _store_path(arg)
    paths = StorePaths.of(path)
    mode = await anyio.to_thread.run_sync(detect_mode, FileSystem(), paths)
    if mode is None:
        if paths.directory.is_dir():
            raise CommandError(
                f"{paths.directory} has no FORMAT marker: it is not an aiosessions store "
                "(a half-made migration? run `aiosessions fsck` on it)"
            )
        folder = _shown(paths.file.parent, Path(arg))
        hint = _stores_in(folder) if folder.is_dir() else f" ({folder} does not exist)"
        raise CommandError(f"no session store at {arg}: no such file or directory{hint}")
    return path


def _open_to_read(path: Path) -> Any:
    """The store at ``path`` opened by a command that only reads: it writes nothing.

    No change is queued, and the background sweep of orphaned tmp files (a write) is
    off: ``tmp_max_age`` is infinite. A directory store of an earlier format version is
    read as it is, not moved forward (``aiosessions migrate`` does that).
    """
    paths = StorePaths.of(path)
    if (paths.directory / FORMAT_FILE).is_file():  # a directory store: the caller checked the marker
        backend = DirectoryBackend(paths, create=False, tmp_max_age=float("inf"), upgrade=False)
        return open_store(backend, entry_type=dict, flush_interval=3600, fsync=False)
    return open_store(path, entry_type=dict, flush_interval=3600, fsync=False, tmp_max_age=float("inf"))


# -- output helpers ---------------------------------------------------------------------------


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rich() -> Any:
    """The rich package, or None when it is not installed (the ``cli`` extra)."""
    try:
        import rich
    except ImportError:
        return None
    return rich


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(_pretty.encode(value), indent=2).decode("utf-8") + "\n")


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return str(ms)


def _age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    seconds = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _ProgressBar:
    """A progress bar on stderr when it is a terminal (rich's if installed); silent otherwise."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._shown = -1
        self._rich: Any = None
        self._task: Any = None
        self._enabled = _is_terminal(sys.stderr)
        if self._enabled and _rich() is not None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._rich = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._rich is not None:
            if self._task is None:
                self._rich.start()
                self._task = self._rich.add_task(self._label, total=total)
            self._rich.update(self._task, completed=done)
            return
        percent = 100 * done // total if total else 100
        if percent != self._shown:
            self._shown = percent
            filled = percent * 30 // 100
            sys.stderr.write(f"\r{self._label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.stop()
        elif self._enabled and self._shown >= 0:
            sys.stderr.write("\n")


# -- commands ---------------------------------------------------------------------------------


def _summary(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    at = entry.get("updatedAt")
    row: dict[str, Any] = {"key": key, "updatedAt": bounded(at)}
    for name in ("sessionId", "displayName", "channel", "chatType", "model", "totalTokens"):
        if name in entry:
            row[name] = entry[name]
    return row


def _plural(n: int, noun: str) -> str:
    """``1 session``, ``2 sessions``, ``1 entry``, ``3 entries``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


#: At most this many unreadable sessions are named one per line; the rest are counted.
_NAMED = 20


def _warn_unreadable(command: str, unreadable: dict[str, str], what: str) -> None:
    """Name the sessions that could not be read on stderr (never leave them out silently)."""
    if not unreadable:
        return
    for reason in list(unreadable.values())[:_NAMED]:
        print(f"aiosessions {command}: warning: {reason}", file=sys.stderr)
    more = len(unreadable) - _NAMED
    print(
        f"aiosessions {command}: warning: {_plural(len(unreadable), 'session')} could not be read "
        f"and {'is' if len(unreadable) == 1 else 'are'} {what}"
        + (f" ({more} more not named here)" if more > 0 else "")
        + "; `aiosessions fsck` lists them, `aiosessions fsck --repair` quarantines them",
        file=sys.stderr,
    )


async def cmd_ls(args: argparse.Namespace) -> int:
    path = await _existing_store(args.path)
    rows: list[dict[str, Any]] = []
    async with _open_to_read(path) as store:
        unreadable: dict[str, CorruptSessionError] = {}
        if args.limit is not None and not args.prefix:
            # The store's index says which are the newest: only those are read.
            total = await store.count()
            for key, _ in await store.newest(args.limit):
                try:
                    entry = await store.get(key)
                except CorruptSessionError as exc:
                    unreadable[key] = exc
                    continue
                if entry is not None:  # else deleted meanwhile
                    rows.append(_summary(key, entry))
        else:
            # One unreadable entry must not hide the others: skip it, and say so.
            async for key, entry in store.items(args.prefix, skip_corrupt=True):
                rows.append(_summary(key, entry))
            unreadable = await unreadable_sessions(store, {row["key"] for row in rows}, args.prefix)
            total = len(rows)
    _warn_unreadable("ls", _reasons(list(unreadable.values())), "not listed")
    rows.sort(key=lambda r: (r["updatedAt"] is None, -(r["updatedAt"] or 0), r["key"]))
    if args.limit is not None:
        rows = rows[: args.limit]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    now_ms = int(time.time() * 1000)
    table = [
        (
            _when(r["updatedAt"]),
            _age(r["updatedAt"], now_ms),
            "" if r.get("totalTokens") is None else str(r["totalTokens"]),
            str(r.get("model") or ""),
            str(r.get("displayName") or ""),
            r["key"],
        )
        for r in rows
    ]
    footer = f"{_plural(total, 'session')}" + (
        f" (showing the newest {len(rows)})" if len(rows) < total else ""
    )
    _print_sessions(table, footer)
    return EXIT_OK


# -- the table of ls --------------------------------------------------------------------------

_HEADERS = ("UPDATED (UTC)", "AGE", "TOKENS", "MODEL", "NAME", "KEY")
#: The last column, KEY, is never cut: a key must be copyable into `show`. When the
#: terminal is too narrow, MODEL and NAME are shortened first (down to this many cells),
#: then whole columns give way, in this order.
_SHORTEST = {3: 8, 4: 8}
_GIVE_WAY = (4, 3, 2, 0, 1)
_GAP = 2


def _cells_plain(text: str) -> int:
    """How many terminal cells ``text`` takes (wide East Asian characters take two)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text
    )


def _fit_columns(
    rows: Sequence[Sequence[str]], width: int, cells: Callable[[str], int]
) -> tuple[list[int], list[int]]:
    """Which columns of the ls table to show, and how wide, on a terminal ``width`` cells wide.

    Every key is shown whole: other columns are shortened, then dropped, to make room;
    a key longer than the terminal alone is wrapped, never cut.
    """
    natural = [max([cells(h)] + [cells(row[i]) for row in rows]) for i, h in enumerate(_HEADERS)]
    shown = list(range(len(_HEADERS)))
    for dropped in range(len(_GIVE_WAY) + 1):
        shown = [i for i in range(len(_HEADERS)) if i not in _GIVE_WAY[:dropped]]
        widths = list(natural)
        excess = sum(widths[i] for i in shown) + _GAP * (len(shown) - 1) - width
        for i, shortest in _SHORTEST.items():
            if excess > 0 and i in shown:
                cut = min(excess, max(0, widths[i] - shortest))
                widths[i] -= cut
                excess -= cut
        if excess <= 0:
            return shown, widths
    return shown, natural


def _cut(text: str, width: int, cells: Callable[[str], int]) -> str:
    """``text`` shortened with "…" to at most ``width`` cells (and padded to exactly that)."""
    if cells(text) > width:
        while text and cells(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - cells(text))


def _print_sessions(table: Sequence[Sequence[str]], footer: str) -> None:
    """The ls table: rich's on a terminal when installed, plain text otherwise."""
    terminal = _is_terminal(sys.stdout)
    if terminal and _rich() is not None:
        from rich.cells import cell_len
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Keys are data, not markup: ":thread:" is no emoji and "[b]" no style here.
        console = Console(markup=False, emoji=False, highlight=False)
        shown, widths = _fit_columns(table, console.width, cell_len)
        grid = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1), show_edge=False)
        for i in shown:
            if i == len(_HEADERS) - 1:
                room = console.width - sum(widths[j] + _GAP for j in shown if j != i)
                grid.add_column(_HEADERS[i], overflow="fold", min_width=min(widths[i], max(1, room)))
            else:
                grid.add_column(_HEADERS[i], width=widths[i], no_wrap=True, overflow="ellipsis")
        for line in table:
            grid.add_row(*(Text(line[i]) for i in shown))
        console.print(grid)
        console.print(_hidden_note(shown, console.width) + footer)
        return
    width = shutil.get_terminal_size().columns if terminal else sys.maxsize
    shown, widths = _fit_columns(table, width, _cells_plain)
    for line in (_HEADERS, *table):
        cells = [_cut(line[i], widths[i], _cells_plain) for i in shown[:-1]]
        sys.stdout.write((" " * _GAP).join([*cells, line[shown[-1]]]) + "\n")
    sys.stdout.write(_hidden_note(shown, width) + footer + "\n")


def _hidden_note(shown: list[int], width: int) -> str:
    hidden = [_HEADERS[i] for i in range(len(_HEADERS)) if i not in shown]
    if not hidden:
        return ""
    return f"(left out to fit {width} columns: {', '.join(hidden)})\n"


async def cmd_show(args: argparse.Namespace) -> int:
    path = await _existing_store(args.path)
    async with _open_to_read(path) as store:
        entry = await store.get(args.key)
    if entry is None:
        raise CommandError(f"no session {args.key!r} in {args.path}")
    _print_json(entry)
    return EXIT_OK


def _report_dict(report: Any) -> dict[str, Any]:
    fields = {name: getattr(report, name) for name in report.__dataclass_fields__}
    return msgspec.to_builtins(fields)  # type: ignore[no-any-return]


async def cmd_migrate(args: argparse.Namespace) -> int:
    path = await _existing_store(args.path)
    bar = _ProgressBar("migrating")
    try:
        report = await migrate(
            path,
            skip_invalid=args.skip_invalid,
            dry_run=args.dry_run,
            fsync=not args.no_fsync,
            progress=bar,
            lock_timeout=args.lock_timeout,
        )
    finally:
        bar.close()
    if args.json:
        _print_json(
            {**_report_dict(report), **({"would_succeed": not report.blockers} if args.dry_run else {})}
        )
    else:
        _describe_migration(report, skip_invalid=args.skip_invalid)
    for warning in report.warnings:
        print(f"aiosessions migrate: warning: {warning}", file=sys.stderr)
    # A dry run's status says whether the real run would go through.
    return EXIT_ERROR if report.blockers else EXIT_OK


def _describe_migration(report: MigrationReport, *, skip_invalid: bool) -> None:
    out = sys.stdout
    if report.already_migrated:
        out.write(f"already migrated: {report.directory} is the store\n")
        if report.backup:
            out.write(f"moved the old {Path(report.source).name} aside to {report.backup}\n")
        elif report.dry_run and report.bytes:
            out.write(f"would move {report.source} aside (it is no longer read)\n")
        _describe_blockers(report)
        return
    if report.dry_run:
        out.write(
            f"dry run: would migrate {_plural(report.entries, 'session')} ({_size(report.bytes)}) "
            f"from {report.source} into {report.directory}; nothing was written\n"
        )
    else:
        out.write(
            f"migrated {_plural(report.entries, 'session')} ({_size(report.bytes)}) from {report.source} "
            f"into {report.directory} in {report.seconds:.2f} s\n"
        )
        out.write(f"the legacy file is kept as {report.backup}\n")
    if report.problems:
        entries = _plural(len(report.problems), "entry")
        if report.dry_run and not skip_invalid:
            out.write(f"{entries} cannot be migrated:\n")
        else:
            left_out = "left out" if not report.dry_run else "would leave out"
            out.write(f"{left_out} {entries} (they stay in the legacy file):\n")
        for key, reason in report.problems.items():
            out.write(f"  {key!r}: {reason}\n")
    _describe_blockers(report)


def _describe_blockers(report: MigrationReport) -> None:
    for blocker in report.blockers:
        sys.stdout.write(f"migrate would fail: {blocker}\n")
    if report.dry_run and not report.blockers:
        sys.stdout.write(
            "the real migration would go through (permissions, free space and the file checked)\n"
        )


async def cmd_export(args: argparse.Namespace) -> int:
    path = await _existing_store(args.path)
    skipped: list[CorruptSessionError] = []
    on_corrupt = skipped.append if args.skip_corrupt else None
    if args.output is None:
        data = await export_bytes(path, on_corrupt=on_corrupt)
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        count = await export_json(path, args.output, fsync=not args.no_fsync, on_corrupt=on_corrupt)
        print(f"exported {_plural(count, 'session')} to {args.output}", file=sys.stderr)
    _warn_unreadable("export", _reasons(skipped), "left out of the export")
    return EXIT_OK


def _reasons(errors: Sequence[CorruptSessionError]) -> dict[str, str]:
    return {error.key or error.where: _one_line(error) for error in errors}


def _copy_target(arg: str) -> str:
    """A URL as it is; a path as the store file it names (like the other commands' PATH)."""
    if is_redis_url(arg):
        return arg
    return str(_store_path(arg))


async def cmd_copy(args: argparse.Namespace) -> int:
    bar = _ProgressBar("copying")
    try:
        report = await copy_store(
            _copy_target(args.source), _copy_target(args.destination), delete=args.delete, progress=bar
        )
    finally:
        bar.close()
    if args.json:
        _print_json(_report_dict(report))
    else:
        _describe_copy(report, delete=args.delete)
    return EXIT_ERROR if report.problems else EXIT_OK


def _describe_copy(report: CopyReport, *, delete: bool) -> None:
    out = sys.stdout
    out.write(
        f"copied {report.copied} of {report.sessions} sessions from {report.source} to "
        f"{report.destination} in {report.seconds:.2f} s ({report.unchanged} already there)\n"
    )
    if report.extra and delete:
        out.write(f"deleted {report.deleted} sessions the source does not have\n")
    elif report.extra:
        out.write(
            f"{report.extra} sessions of the destination are not in the source "
            "(kept; --delete deletes them)\n"
        )
    if report.problems:
        out.write(f"could not copy {len(report.problems)} sessions (run again once fixed):\n")
        for key, reason in report.problems.items():
            out.write(f"  {key!r}: {reason}\n")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``90s``, ``2w`` (or combined, ``1d12h``) in seconds."""
    parts = re.fullmatch(r"(?:\d+(?:\.\d+)?[smhdw])+", text.strip().lower())
    if parts is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number and a unit (s, m, h, d, w), e.g. 30d or 12h"
        )
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text.lower()))


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


#: A real prune that would remove more sessions than this asks first (or needs --yes).
CONFIRM_ABOVE = 10


async def cmd_prune(args: argparse.Namespace) -> int:
    path = await _existing_store(args.path)

    async def confirm(plan: PruneReport) -> bool:
        count = len(plan.removed)
        if args.yes or count <= CONFIRM_ABOVE:
            return True
        what = f"remove {count} of the {plan.total} sessions of {plan.path}"
        if not _is_terminal(sys.stdin):
            raise CommandError(
                f"prune would {what}: pass --yes to prune that many without asking (stdin is not "
                "a terminal, so there is no one to ask); --dry-run lists them"
            )
        oldest = [*plan.stale, *plan.capped][:5]
        sys.stderr.write("".join(f"  {key}\n" for key in oldest) + (f"  … and {count - len(oldest)} more\n"))
        sys.stderr.write(f"{what}? [y/N] ")
        sys.stderr.flush()
        answer = await anyio.to_thread.run_sync(sys.stdin.readline)
        return answer.strip().lower() in ("y", "yes")

    report = await prune(
        path,
        older_than=args.older_than,
        max_entries=args.max_entries,
        dry_run=args.dry_run,
        skip_corrupt=args.skip_corrupt,
        confirm=confirm,
        fsync=not args.no_fsync,
    )
    declined = report.dry_run and not args.dry_run
    # A dry run says whether the real one would go through: it would refuse unreadable
    # sessions unless told to leave them alone.
    blockers = []
    if report.unreadable and not args.skip_corrupt:
        blockers.append(
            f"{_plural(len(report.unreadable), 'session')} cannot be read: a real prune would refuse "
            "(pass --skip-corrupt to leave them alone, or run `aiosessions fsck --repair`)"
        )
    if args.json:
        extra: dict[str, Any] = {"removed": list(report.removed), "kept": report.kept}
        if args.dry_run:
            extra.update(would_succeed=not blockers, blockers=blockers)
        if declined:
            extra["declined"] = True
        _print_json({**_report_dict(report), **extra})
    else:
        _describe_prune(report)
    if declined:
        print("aiosessions prune: not confirmed; nothing was removed", file=sys.stderr)
        return EXIT_ERROR
    if report.unreadable and not blockers:
        left = await _reasons_of(path, report.unreadable)
        _warn_unreadable("prune", left, "left alone")
    for blocker in blockers:
        print(f"aiosessions prune: {blocker}", file=sys.stderr)
    return EXIT_ERROR if blockers else EXIT_OK


async def _reasons_of(path: Path, keys: Sequence[str]) -> dict[str, str]:
    """Why each of ``keys`` cannot be read (the store's own error message)."""
    reasons = {}
    async with _open_to_read(path) as store:
        for key in keys:
            try:
                await store.get(key)
            except (SessionStoreError, OSError) as exc:
                reasons[key] = _one_line(exc)
    return reasons


def _describe_prune(report: PruneReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    for key in report.stale:
        if key not in report.spared:
            print(f"stale   {key}")
    for key in report.capped:
        if key not in report.spared:
            print(f"capped  {key}")
    for key in report.spared:
        print(f"kept    {key} (updated meanwhile)")
    for key in report.unreadable:
        print(f"unread  {key} (cannot be read: left alone)")
    print(
        f"{verb} {len(report.removed)} of {_plural(report.total, 'session')} "
        f"({len(set(report.stale) - set(report.spared))} stale, "
        f"{len(set(report.capped) - set(report.spared))} over the cap); {report.kept} left"
        + (f"; {len(report.unreadable)} unreadable" if report.unreadable else "")
    )


async def cmd_bench(args: argparse.Namespace) -> int:
    if args.source is not None:
        # A wrong path is explained here as for every command; the benchmark reads a copy.
        args.source = await _existing_store(str(args.source))
    return await _bench.run_command(args)


async def cmd_fsck(args: argparse.Namespace) -> int:
    path = _store_path(args.path)
    report = await fsck(path, repair=args.repair)
    if args.json:
        _print_json(
            {
                **_report_dict(report),
                "problems": [
                    {
                        "kind": p.kind,
                        "path": p.path,
                        "detail": p.detail,
                        "action": p.action,
                        "repairable": p.repairable,
                    }
                    for p in report.problems
                ],
                "ok": report.ok,
            }
        )
    else:
        _describe_fsck(report)
    if report.ok:
        return EXIT_OK
    return EXIT_PROBLEMS if report.unrepaired else EXIT_REPAIRED


def _describe_fsck(report: FsckReport) -> None:
    for p in report.problems:
        action = f"  -> {p.action}" if p.action else ""
        print(f"{p.kind:<17} {p.path}: {p.detail}{action}")
    found = len(report.problems)
    summary = f"{report.path}: {_plural(report.sessions, 'session')} ok, {_plural(found, 'problem')}"
    left = len(report.unrepaired)
    fixable = len(report.repairable)
    if report.repair and found:
        summary += f", {found - left} repaired"
        if left:
            summary += f"; {left} that --repair cannot fix (each line says what to do)"
    elif fixable and fixable == found:
        summary += f" (run with --repair to fix {'it' if found == 1 else 'them'})"
    elif fixable:
        summary += f" (--repair fixes {fixable}; the other lines say what to do)"
    elif found:
        summary += f" (--repair cannot fix {'it' if found == 1 else 'them'}: each line says what to do)"
    print(summary)


# -- the parser -------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

#: The commands whose ``--json`` prints JSON on stdout: their errors are JSON objects too.
_JSON_COMMANDS = ("ls", "migrate", "prune", "fsck")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors also reported as a JSON object when ``--json`` was asked for."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            _print_json_error(self.prog.split()[-1], "UsageError", message, EXIT_USAGE)
        super().error(message)


def _print_json_error(command: str, kind: str, message: str, status: int, **about: Any) -> None:
    """The error object ``--json`` promises, on stdout where the JSON output would have been."""
    error = {"command": command, "type": kind, "message": message, "status": status}
    error.update({name: value for name, value in about.items() if value is not None})
    _print_json({"error": error})


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON output (looked at before parsing it)."""
    options = list(argv[: argv.index("--")] if "--" in argv else argv)
    return bool(options) and options[0] in _JSON_COMMANDS and "--json" in options


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiosessions",
        description="Inspect, migrate and maintain aiosessions session stores.",
        epilog="PATH is the store file (state/sessions.json), its directory store "
        "(state/sessions.d) or the folder holding them. Exit status: 0 ok, 1 error, 2 usage, "
        "3 fsck found problems, 4 fsck repaired every problem it found.",
    )
    parser.add_argument("--version", action="version", version=f"aiosessions {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, run: Command, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        p.set_defaults(run=run, parser=p)
        return p

    p = command("ls", cmd_ls, "list sessions, newest first", "List the sessions of a store, newest first.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--limit", "-n", type=_count, metavar="N", help="show only the N newest")
    p.add_argument("--prefix", default="", metavar="PREFIX", help="only sessions whose key starts with it")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")

    p = command("show", cmd_show, "print one session as JSON", "Print one session's entry as pretty JSON.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("key", metavar="KEY")

    p = command(
        "migrate",
        cmd_migrate,
        "move a legacy sessions.json into a directory store",
        "Move a legacy sessions.json into the directory store beside it (crash-safe; run it "
        "again after any failure). The legacy file is kept as "
        "sessions.json.pre-directory-migration.<timestamp>.",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--dry-run", action="store_true", help="check everything, write nothing")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="leave out entries that cannot be migrated (they stay in the backup) instead of refusing",
    )
    p.add_argument("--no-fsync", action="store_true", help="do not fsync (only for throwaway copies)")
    p.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command(
        "export",
        cmd_export,
        "write every session into one legacy JSON file",
        "Write every session into one legacy sessions.json-format file (the way back).",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync FILE")
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="leave out sessions that cannot be read (each is named on stderr) instead of refusing",
    )

    p = command(
        "copy",
        cmd_copy,
        "copy every session into another store (a Redis URL, a folder, a legacy file)",
        "Copy every session of SOURCE into DESTINATION: a store PATH or a redis://, rediss:// or "
        "unix:// URL (?prefix=NAME), either way round. Sessions already there with the same "
        "bytes are skipped, so an interrupted copy resumes when run again, and a last run after "
        "stopping the bot copies only what changed since. Run it while the bot writes to SOURCE, "
        "never while it writes to DESTINATION.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("destination", metavar="DESTINATION")
    p.add_argument("--delete", action="store_true", help="also delete sessions the source does not have")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command(
        "prune",
        cmd_prune,
        "remove old sessions",
        "Remove sessions not updated for a while, then all but the newest N (as OpenClaw's "
        "session maintenance does). Sessions without an updatedAt are never stale, and are "
        "the first to go when capping.",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--older-than", type=parse_duration, metavar="AGE", help="e.g. 30d, 12h, 2w")
    p.add_argument("--max-entries", type=_count, metavar="N", help="keep at most the N newest")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only list what would be removed; exit 1 if the real prune would refuse",
    )
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="leave sessions that cannot be read alone (each is named) instead of refusing",
    )
    p.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help=f"remove more than {CONFIRM_ABOVE} sessions without asking (required without a terminal)",
    )
    p.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command(
        "fsck",
        cmd_fsck,
        "check a store's files (and repair them)",
        "Check every file of a store: orphaned tmp files, corrupt meta.json, undecodable "
        "folder names, a missing or wrong FORMAT marker. --repair removes orphans and moves "
        "corrupt files into <stem>.d/.quarantine/ (it never deletes data). Exits 3 when "
        "problems remain, 4 when all were repaired.",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed safely")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command(
        "bench",
        cmd_bench,
        "compare with the legacy sessions.json on a generated store",
        "Generate an OpenClaw-shaped store in a temporary folder (or copy yours, --from PATH) and "
        "compare the legacy sessions.json with the directory store: updating one session (whole, by "
        "member with update_members, and written through), a cold read, a mixed workload and the "
        "event loop's lag, with fsync on (the library's default) "
        "unless told otherwise. Prints both figures and how many times better or worse "
        "aiosessions is.",
    )
    _bench.add_arguments(p)  # the options and the run belong to the benchmark module
    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = _wants_json(arguments)
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "prune" and args.older_than is None and args.max_entries is None:
        args.parser.error("give --older-than, --max-entries or both")
    if args.command == "bench" and args.source is not None and (args.sessions or args.megabytes):
        args.parser.error("--from measures your store as it is: it takes no --sessions or --megabytes")
    if args.command == "bench" and args.redis is not None and not args.writes:
        args.parser.error("--redis goes with --writes: the comparison with the legacy file is about files")
    run: Command = args.run
    try:
        return anyio.run(run, args)
    except KeyboardInterrupt:
        print("aiosessions: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away: not an error; keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (CommandError, SessionStoreError, OSError, ValueError) as exc:
        if _Parser.json_errors:
            _print_json_error(
                args.command,
                type(exc).__name__,
                _one_line(exc),
                EXIT_ERROR,
                key=getattr(exc, "key", None),
                where=getattr(exc, "where", None) or getattr(exc, "filename", None),
            )
        print(f"aiosessions {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
