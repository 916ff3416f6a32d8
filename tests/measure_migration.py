"""Measure migrate() on a generated ~50 MB store: time and peak memory (not a test).

    python tests/measure_migration.py [--mb 50] [--seed 7] [--no-fsync]

Generates an OpenClaw-shaped sessions.json (every 10th entry carries a 40-150 KB
blob) in a temporary folder, then runs the migration in a fresh child process
and reports its wall time and peak RSS (``VmHWM``, else ``getrusage``), next to the
RSS of an identical child that only imports aiosessions and reads the file, so
the migration's own share is visible. Prints a Markdown table row set for
docs/benchmarks.md. ``tests/test_migrate.py`` runs a small version of the
memory check as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from aiosessions.backends._json import encode_legacy

CHILD = r"""
import json, sys, time
import anyio
import aiosessions
sys.path.insert(0, sys.argv[4])
from measure_migration import peak_rss_kb

path, action, fsync = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
started = time.perf_counter()
if action == "migrate":
    report = anyio.run(lambda: aiosessions.migrate(path, fsync=fsync))
    entries = report.entries
else:
    data = open(path, "rb").read()
    entries = 0
seconds = time.perf_counter() - started
peak_kb = peak_rss_kb()
print(json.dumps({"seconds": seconds, "peak_kb": peak_kb, "entries": entries}))
"""


_CHANNELS = ("telegram", "slack", "discord", "signal", "matrix", "whatsapp", "imessage")
_WORDS = (
    *("skill", "tool", "call", "result", "user", "session", "search", "files", "workspace", "run"),
    *("command", "summarise", "thread", "memory", "flush", "agent", "channel", "reply", "json"),
    *("schema", "parameters", "required", "optional", "string", "number"),
)


def generate_sessions(count: int, *, seed: int, blob_every: int = 10) -> dict[str, dict[str, Any]]:
    """OpenClaw-shaped sessions (keys and fields as in the shared fixture); every
    ``blob_every``-th carries a 40-150 KB blob. Deterministic for a seed."""
    rng = random.Random(seed)
    sessions: dict[str, dict[str, Any]] = {}
    now = 1_762_500_000_000
    for i in range(count):
        channel = _CHANNELS[i % len(_CHANNELS)]
        kind = ("direct", "group", "cron", "subagent")[rng.randrange(4)]
        if kind == "cron":
            key = f"agent:main:cron:{rng.getrandbits(32):08x}:run:{_uuid(rng)}"
        elif kind == "subagent":
            key = f"agent:main:subagent:{_uuid(rng)}"
        elif channel == "matrix":
            key = f"agent:main:matrix:channel:!room{i}:example.org:thread:$AbC{i}:example.org"
        elif channel == "signal":
            key = f"agent:main:signal:group:x/Y+z=={i}"
        else:
            key = f"agent:main:{channel}:{kind}:user{i}"
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(200, 1200)))
        entry: dict[str, Any] = {
            "sessionId": _uuid(rng),
            "updatedAt": now - rng.randrange(0, 90 * 86_400_000),
            "sessionFile": f"{_uuid(rng)}.jsonl",
            "systemSent": rng.random() < 0.5,
            "abortedLastRun": False,
            "chatType": "group" if kind == "group" else "direct",
            "thinkingLevel": rng.choice(("high", "low", "off")),
            "inputTokens": rng.randrange(10**6),
            "outputTokens": rng.randrange(10**5),
            "totalTokens": rng.randrange(10**6),
            "estimatedCostUsd": round(rng.random() * 5, 4),
            "modelProvider": "anthropic",
            "model": rng.choice(("claude-opus-4-6", "gpt-5.2", "gemini-3-pro")),
            "displayName": f"user{i}",
            "channel": channel,
            "origin": {"provider": channel, "chatType": kind, "from": f"{channel}:{rng.getrandbits(40)}"},
            "deliveryContext": {"channel": channel, "to": f"{channel}:{rng.getrandbits(40)}"},
            "skillsSnapshot": {"prompt": words, "version": 1},
            "pinnedAt": None,
        }
        if blob_every and i % blob_every == blob_every - 1:
            size = rng.randrange(40_000, 150_000)
            entry["systemPromptReport"] = {
                "text": "".join(rng.choice(_WORDS) + " " for _ in range(size // 6))
            }
        sessions[key] = entry
    return sessions


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB.

    ``VmHWM`` where Linux has it: ``getrusage``'s ``ru_maxrss`` survives exec, so a
    child starts with its parent's peak, and would hide a small migration.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def build(folder: Path, megabytes: float, seed: int) -> tuple[Path, int, int]:
    """Write a legacy store of about ``megabytes`` MB; return its path, size and entry count."""
    per_entry = len(encode_legacy(_raw(generate_sessions(200, seed=seed)))) / 200
    count = max(10, int(megabytes * 1e6 / per_entry))
    sessions = generate_sessions(count, seed=seed)
    path = folder / "sessions.json"
    data = encode_legacy(_raw(sessions))
    path.write_bytes(data)
    return path, len(data), count


def _raw(sessions: dict[str, dict[str, object]]) -> dict[str, msgspec.Raw]:
    return {key: msgspec.Raw(msgspec.json.encode(entry)) for key, entry in sessions.items()}


def child(path: Path, action: str, fsync: bool) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), action, "1" if fsync else "0", str(Path(__file__).parent)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--build-in", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_in:
        # Generating takes far more memory than migrating, and a child inherits its
        # parent's peak RSS across fork+exec: build in a process of its own.
        _, size, count = build(Path(args.build_in), args.mb, args.seed)
        print(json.dumps({"size": size, "count": count}))
        return
    fsync = not args.no_fsync
    with tempfile.TemporaryDirectory(prefix="aiosessions-migration-", dir=Path.cwd()) as tmp:
        built = subprocess.run(
            [sys.executable, __file__, "--mb", str(args.mb), "--seed", str(args.seed), "--build-in", tmp],
            check=True,
            capture_output=True,
            text=True,
        )
        size, count = json.loads(built.stdout).values()
        path = Path(tmp) / "sessions.json"
        baseline = child(path, "read", fsync)
        result = child(path, "migrate", fsync)
    mb = size / 1e6
    peak = result["peak_kb"] / 1024
    base = baseline["peak_kb"] / 1024
    system = f"{platform.machine()}, {platform.system()} {platform.release()}"
    print(f"machine: {system}, Python {platform.python_version()}, {os.cpu_count()} cores")
    print(f"store: {count} sessions, {mb:.1f} MB (seed {args.seed}), fsync={'on' if fsync else 'off'}")
    print(f"migrate: {result['seconds']:.2f} s, peak RSS {peak:.0f} MiB")
    print(f"import aiosessions + read the file: peak RSS {base:.0f} MiB")
    print(f"migration's own share: {peak - base:.0f} MiB = {(peak - base) * 1.048576 / mb:.2f}x the file")


if __name__ == "__main__":
    main()
