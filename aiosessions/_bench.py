"""``aiosessions bench``: the built-in quick comparison with the legacy ``sessions.json``.

This module is the library's own benchmark: it needs nothing but the standard
library and aiosessions (the full comparison with SQLite, diskcache and the
rest is ``python -m benchmarks`` in the source tree, which imports the workload
generator, the legacy contender and the measures from here, so both measure the
same thing the same way).

With no arguments it generates an OpenClaw-shaped store of about 650 sessions
and 80 MB (the size of the store that made OpenClaw stall) in a temporary
folder, then measures the same operations through the same async code against

- **legacy JSON done the way OpenClaw did it**: the whole file parsed on the
  first read (and again whenever it changed on disk), the whole file rewritten,
  indented by 2, on every save, under one global lock, with no write-behind; the
  parsing and rewriting run inline on the event loop, as ``JSON.parse`` and
  ``JSON.stringify`` did in the JavaScript original;
- **aiosessions**, a directory store with its default write-behind queue;

and prints each figure beside the legacy one as a ratio. Every figure comes from
this one run on this machine; none is hard-coded.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import gc
import itertools
import json
import math
import os
import platform
import random
import shutil
import statistics
import string
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import msgspec

from ._recency import bounded

__all__ = [
    "DEFAULT_SEED",
    "AiosessionsContender",
    "Contender",
    "LagProbe",
    "LegacyJsonContender",
    "Summary",
    "generate_sessions",
    "main",
    "paced_workload",
    "zipf_sampler",
]

#: The seed of every generated store and workload unless ``--seed`` says otherwise.
DEFAULT_SEED = 20_260_005

#: The headline store: the ``sessions.json`` reported to take seconds per change.
HEADLINE_SESSIONS = 650
HEADLINE_BYTES = 80_000_000
#: Store sizes of the open + get + close row: opening must cost the same at both (issue 9.9).
OPEN_SIZES = (100, 100_000)

# -- the workload generator ---------------------------------------------------------------

_EPOCH_MS = 1_762_000_000_000  # November 2025: when the generated sessions were last active
_CHANNELS = ("telegram", "slack", "signal", "discord", "matrix", "whatsapp", "imessage", "webchat")
_PEERS = ("james", "li.wei", "o'brien", "maría", "zoë", "admin", "user_", "+155555501", "Ünal", "dev-ops")
_MODELS = (("anthropic", "claude-opus-4-6"), ("openai", "gpt-5.2"), ("google", "gemini-3-pro"))
_THINKING = ("high", "off", "low", "medium")
_WORDS = (
    *("skill", "description", "text", "tool", "call", "returns", "the", "result", "of", "a", "user"),
    *("session", "when", "asked", "to", "search", "files", "in", "workspace", "run", "command"),
    *("summarise", "thread", "memory", "flush", "agent", "channel", "reply", "with", "json", "schema"),
    *("parameters", "required", "optional", "string", "number", "boolean", "array", "object"),
)

Sessions = dict[str, dict[str, Any]]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def make_key(rng: random.Random, index: int) -> str:
    """One session key of a kind seen in real OpenClaw stores (unique by ``index``)."""
    kind = rng.random()
    agent = "main" if rng.random() < 0.85 else rng.choice(("ops", "research"))
    peer = f"{rng.choice(_PEERS)}{index}"
    if kind < 0.16:
        return f"agent:{agent}:subagent:{_uuid(rng)}"
    if kind < 0.30:
        job = f"{rng.getrandbits(32):08x}"
        return f"agent:main:cron:{job}:run:{_uuid(rng)}" if rng.random() < 0.8 else f"agent:main:cron:{job}"
    if kind < 0.55:
        channel = rng.choice(_CHANNELS)
        account = ":default" if rng.random() < 0.3 else ""
        return f"agent:{agent}:{channel}{account}:direct:{peer}"
    if kind < 0.67:
        return f"agent:main:telegram:group:-100{_digits(rng, 10)}:topic:{index}"
    if kind < 0.79:
        return f"agent:main:slack:channel:c0b0ak{_digits(rng, 6)}:thread:{_digits(rng, 9)}.{_digits(rng, 6)}"
    if kind < 0.89:
        return f"agent:main:matrix:channel:!room{index}:example.org:thread:$AbC{index}:example.org"
    group = rng.choice(("AbCdEf==", "x/Y+z==", "Qk9UUw+/=="))
    return f"agent:main:signal:group:{group}{index}"


class _Text:
    """Deterministic filler text for embedded prompts, sliced from one pool.

    It holds newlines and quotes, so that encoding it costs escapes as real
    prompts do.
    """

    def __init__(self, rng: random.Random, size: int = 1 << 18) -> None:
        parts: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(_WORDS)
            sep = "\n" if rng.random() < 0.03 else ' "' if rng.random() < 0.01 else " "
            parts.append(word + sep)
            length += len(word) + len(sep)
        self._pool = "".join(parts)

    def take(self, rng: random.Random, n: int) -> str:
        pool = self._pool
        chunks = []
        while n > 0:
            start = rng.randrange(0, len(pool) // 2)
            piece = pool[start : start + min(n, len(pool) - start)]
            chunks.append(piece)
            n -= len(piece)
        return "".join(chunks)


def make_entry(rng: random.Random, key: str, index: int, text: _Text, blob_chars: int) -> dict[str, Any]:
    """One entry in the shape of OpenClaw's: nested origin/deliveryContext, unknown fields.

    ``blob_chars`` characters of embedded prompt go into ``skillsSnapshot`` (and a
    ``systemPromptReport``), the fields that made real entries large.
    """
    parts = key.split(":")
    channel = parts[2]
    chat_type = "group" if "direct" not in parts and ("group" in parts or "channel" in parts) else "direct"
    provider, model = rng.choice(_MODELS)
    session_id = _uuid(rng)
    updated_at = _EPOCH_MS - rng.randrange(0, 30 * 86_400_000)
    inputs = rng.randrange(1_000, 1_000_000)
    outputs = rng.randrange(100, 50_000)
    entry: dict[str, Any] = {
        "sessionId": session_id,
        "updatedAt": updated_at,
        "sessionFile": f"{session_id}.jsonl",
        "systemSent": rng.random() < 0.7,
        "abortedLastRun": rng.random() < 0.1,
        "chatType": chat_type,
        "thinkingLevel": rng.choice(_THINKING),
        "inputTokens": inputs,
        "outputTokens": outputs,
        "totalTokens": rng.randrange(outputs, inputs + outputs + 1),
        "totalTokensFresh": rng.random() < 0.8,
        "cacheRead": rng.randrange(0, 60_000),
        "cacheWrite": rng.randrange(0, 10_000),
        "estimatedCostUsd": round(rng.random() * 2, 4),
        "modelProvider": provider,
        "model": model,
        "contextTokens": 200_000,
        "compactionCount": rng.randrange(0, 6),
        "displayName": rng.choice(("James", "Li Wei", "Zoë", "María", "+15555550123", "ops bot")),
        "channel": channel,
        "origin": {
            "label": "someone",
            "provider": channel,
            "surface": channel,
            "chatType": chat_type,
            "from": f"{channel}:{_digits(rng, 10)}",
            "to": f"{channel}:{_digits(rng, 10)}",
            "accountId": "default",
        },
        "deliveryContext": {
            "channel": channel,
            "to": f"{channel}:{_digits(rng, 10)}",
            "accountId": "default",
        },
        "lastChannel": channel,
        "lastTo": f"{channel}:{_digits(rng, 10)}",
        "lastAccountId": "default",
    }
    if "thread" in parts or "topic" in parts:
        entry["lastThreadId"] = parts[-1] if "topic" in parts else f"{_digits(rng, 9)}.{_digits(rng, 6)}"
    if rng.random() < 0.35:
        entry["pluginExtensions"] = {"memory": {"lastFlushAt": updated_at - 3_600_000, "hash": _uuid(rng)}}
        entry["lastInteractionAt"] = updated_at - rng.randrange(0, 3_600_000)
        entry["pinnedAt"] = None
    if rng.random() < 0.25:
        entry["cliSessionIds"] = {"claude": _uuid(rng), "codex": _uuid(rng)}
    if blob_chars > 0:
        skills = [{"name": f"skill{i}", "primaryEnv": "TOKEN"} for i in range(rng.randrange(4, 24))]
        report_chars = blob_chars // 8
        entry["skillsSnapshot"] = {
            "prompt": "<available_skills>"
            + text.take(rng, blob_chars - report_chars)
            + "</available_skills>",
            "skills": skills,
            "version": 1,
        }
        entry["systemPromptReport"] = {
            "systemPromptChars": blob_chars * 3,
            "workspaceFiles": [{"path": f"f{i}.md", "chars": rng.randrange(100, 10_000)} for i in range(4)],
            "injected": text.take(rng, report_chars),
        }
    return entry


def _entry_size(rng: random.Random, blob_fraction: float) -> int:
    """Bytes an entry should have: mostly 1-12 KB (log-uniform), a few 40-150 KB blobs."""
    if rng.random() < blob_fraction:
        return rng.randrange(40_000, 150_000)
    return int(math.exp(rng.uniform(math.log(1_000), math.log(12_000))))


#: A bare entry (no embedded prompt) is about this many bytes of compact JSON.
_BARE_ENTRY = 1_000


def generate_sessions(
    count: int,
    *,
    seed: int = DEFAULT_SEED,
    blob_fraction: float = 0.05,
    target_bytes: int | None = None,
) -> Sessions:
    """A store of ``count`` OpenClaw-shaped sessions, the same for the same arguments.

    Entry sizes are mixed as in real stores: most 1-12 KB, ``blob_fraction`` of
    them 40-150 KB. With ``target_bytes`` every entry carries an embedded
    snapshot sized (around the mean) so that the legacy file, indented by 2, is
    about ``target_bytes`` long: the reported 80 MB store of 650 sessions
    averages 123 KB per entry.
    """
    rng = random.Random(seed)
    text = _Text(rng)
    keys = [make_key(rng, i) for i in range(count)]
    if target_bytes is None:
        sizes = [_entry_size(rng, blob_fraction) for _ in range(count)]
    else:
        weights = [rng.uniform(0.3, 1.7) for _ in range(count)]
        total = sum(weights)
        sizes = [max(_BARE_ENTRY, int(target_bytes * w / total)) for w in weights]
    sessions: Sessions = {}
    for index, (key, size) in enumerate(zip(keys, sizes, strict=True)):
        sessions[key] = make_entry(rng, key, index, text, max(0, size - _BARE_ENTRY))
    if target_bytes is not None:
        # One correction pass: the filler's escapes and the indentation are not
        # known in advance; lengthen or shorten each prompt by the mean shortfall.
        shortfall = (target_bytes - len(encode_legacy(sessions))) // max(1, count)
        for entry in sessions.values():
            prompt = entry["skillsSnapshot"]["prompt"]
            if shortfall > 0:
                entry["skillsSnapshot"]["prompt"] = prompt + text.take(rng, shortfall)
            else:
                entry["skillsSnapshot"]["prompt"] = prompt[: max(40, len(prompt) + shortfall)]
    return sessions


def headline_sessions(seed: int = DEFAULT_SEED) -> Sessions:
    """The headline store: about 650 sessions and 80 MB in one ``sessions.json``."""
    return generate_sessions(HEADLINE_SESSIONS, seed=seed, target_bytes=HEADLINE_BYTES)


_encoder = msgspec.json.Encoder()


def encode_legacy(sessions: Sessions) -> bytes:
    """The legacy file as OpenClaw writes it: one JSON object, indented by 2."""
    return msgspec.json.format(_encoder.encode(sessions), indent=2) + b"\n"


def write_legacy_file(path: Path, sessions: Sessions) -> int:
    """Write ``sessions`` as a legacy ``sessions.json``; return its size in bytes."""
    data = encode_legacy(sessions)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


def zipf_sampler(count: int, rng: random.Random, *, s: float = 1.1) -> Callable[[], int]:
    """Draw indexes ``0 .. count-1`` with Zipf weights 1/(rank+1)**s: a few sessions are busy."""
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** s for rank in range(count)))
    total = cumulative[-1]

    def draw() -> int:
        return min(count - 1, bisect.bisect_left(cumulative, rng.random() * total))

    return draw


#: The members :func:`touch` changes.
TOUCHED = ("updatedAt", "inputTokens", "totalTokens")


def touch(now_ms: int, tokens: int) -> Callable[[dict[str, Any] | None], dict[str, Any]]:
    """The update a bot makes after each message: bump recency and token counters.

    A new dict each call (never mutating its argument), because aiosessions may
    re-apply an update function to another process's newer value.
    """

    def fn(entry: dict[str, Any] | None) -> dict[str, Any]:
        base = entry if entry is not None else {"sessionId": "new"}
        return {
            **base,
            "updatedAt": now_ms,
            "inputTokens": int(base.get("inputTokens") or 0) + tokens,
            "totalTokens": int(base.get("totalTokens") or 0) + tokens,
        }

    return fn


# -- contenders: one small async interface ------------------------------------------------

UpdateFn = Callable[[Any], Any]


class Contender(Protocol):
    """What the workload drives; every store under test is wrapped in one of these.

    Entries are plain JSON objects (``dict``) for every contender, so each one
    does the same decoding and encoding work per call.
    """

    #: Short name used in tables and result files.
    name: str
    #: Whether a returned write is on disk (fsync) or may still sit in memory.
    fsync: bool
    #: Whether it keeps the whole store in memory (then "cold" means a new instance per read).
    whole_file: bool

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, key: str) -> Any: ...
    async def set(self, key: str, value: dict[str, Any]) -> None: ...
    async def update(self, key: str, fn: UpdateFn) -> Any: ...
    async def delete(self, key: str) -> bool: ...
    async def newest(self, n: int) -> list[str]: ...
    async def flush(self) -> None: ...


def _recency(item: tuple[str, Any]) -> int:
    """Sort key of "newest first": ``updatedAt`` (never a bool), unknown as 0."""
    at = bounded(item[1].get("updatedAt")) if isinstance(item[1], dict) else None
    return 0 if at is None else at


class LegacyJsonContender:
    """``sessions.json`` handled the way OpenClaw's ``store.ts`` handled it, with the
    fastest JSON codec Python has.

    - A read parses the whole file when it is not cached or changed on disk
      (mtime and size), then answers from the parsed object.
    - An update takes the global lock, re-reads and re-parses the whole file
      inside it (OpenClaw's ``updateSessionStore`` does, so as not to clobber
      another process's write), applies the change, renders the whole store
      indented by 2 and writes it to a tmp file renamed over the original.
    - Parsing and rendering run inline on the event loop, as ``JSON.parse`` and
      ``JSON.stringify`` do in Node; file reads and writes go to a worker thread,
      as ``fs.promises`` does.

    Kinder than the original in three ways, so the ratios are not inflated:
    msgspec instead of ``JSON5.parse``, a read returns the cached entry instead
    of a ``structuredClone`` of the whole store, and the store written by an
    update stays cached (OpenClaw dropped its cache on every save).
    """

    whole_file = True

    def __init__(self, path: Path, *, fsync: bool = False, name: str = "legacy JSON") -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.name = name
        self._lock = anyio.Lock()
        self._cache: dict[str, Any] | None = None
        self._signature: tuple[int, int] | None = None
        self._decoder = msgspec.json.Decoder()

    async def open(self) -> None:
        self._cache, self._signature = None, None  # loaded lazily on the first read, as OpenClaw does

    async def close(self) -> None:
        self._cache = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def _load(self, *, skip_cache: bool = False) -> dict[str, Any]:
        signature = self._stat()
        if not skip_cache and self._cache is not None and signature == self._signature:
            return self._cache
        data = await anyio.to_thread.run_sync(self.path.read_bytes) if signature else b"{}"
        store: dict[str, Any] = self._decoder.decode(data)  # inline, like JSON.parse
        self._cache, self._signature = store, signature
        return store

    async def get(self, key: str) -> Any:
        return (await self._load()).get(key)

    async def _mutate(self, key: str, fn: UpdateFn) -> Any:
        async with self._lock:
            with _flock(self.path.with_name(f".{self.path.name}.lock")):
                store = await self._load(skip_cache=True)
                result = fn(store.get(key))
                if result is None:
                    store.pop(key, None)
                else:
                    store[key] = result
                data = encode_legacy(store)  # inline, like JSON.stringify(store, null, 2)
                self._signature = await anyio.to_thread.run_sync(_replace_file, self.path, data, self.fsync)
                self._cache = store
        return result

    async def set(self, key: str, value: dict[str, Any]) -> None:
        await self._mutate(key, lambda _: value)

    async def update(self, key: str, fn: UpdateFn) -> Any:
        return await self._mutate(key, fn)

    async def delete(self, key: str) -> bool:
        existed = key in await self._load()
        await self._mutate(key, lambda _: None)
        return existed

    async def newest(self, n: int) -> list[str]:
        store = await self._load()
        return [key for key, _ in sorted(store.items(), key=_recency, reverse=True)[:n]]

    async def flush(self) -> None:
        pass  # every change was written before its call returned


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace_file(path: Path, data: bytes, fsync: bool) -> tuple[int, int]:
    """tmp + rename, as OpenClaw's saveSessionStore (plus fsync when asked)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


class AiosessionsContender:
    """An aiosessions store opened with the given options, holding ``dict`` entries."""

    whole_file = False

    def __init__(
        self,
        path: Path,
        *,
        name: str = "aiosessions",
        fsync: bool = False,
        flush_interval: float = 0.05,
        mode: str | None = None,
        **options: Any,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.fsync = fsync
        self.flush_interval = flush_interval
        self._options = dict(options, fsync=fsync, flush_interval=flush_interval, mode=mode)
        # The legacy JSON mode loads the whole file when it opens: "cold" is a new instance.
        self.whole_file = mode == "json"
        self._stack: contextlib.AsyncExitStack | None = None
        self.store: Any = None

    async def open(self) -> None:
        from . import open_store

        self._stack = contextlib.AsyncExitStack()
        self.store = await self._stack.enter_async_context(
            open_store(self.path, entry_type=dict, **self._options)
        )

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def get(self, key: str) -> Any:
        return await self.store.get(key)

    async def set(self, key: str, value: dict[str, Any]) -> None:
        await self.store.set(key, value)

    async def update(self, key: str, fn: UpdateFn) -> Any:
        return await self.store.update(key, fn)

    async def delete(self, key: str) -> bool:
        return bool(await self.store.delete(key))

    async def newest(self, n: int) -> list[str]:
        return [key for key, _ in await self.store.newest(n)]  # from the store's recency index

    async def flush(self) -> None:
        await self.store.flush()


# -- measuring ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, by linear interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    """Latencies of one measure (seconds), or a throughput (``ops`` in ``seconds``)."""

    samples: int
    p50: float = math.nan
    p99: float = math.nan
    mean: float = math.nan
    max: float = math.nan
    seconds: float = math.nan
    ops: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, durations: Sequence[float], *, seconds: float | None = None, **extra: Any) -> Summary:
        total = sum(durations) if seconds is None else seconds
        return cls(
            samples=len(durations),
            p50=percentile(durations, 50),
            p99=percentile(durations, 99),
            mean=statistics.fmean(durations) if durations else math.nan,
            max=max(durations) if durations else math.nan,
            seconds=total,
            ops=len(durations),
            extra=dict(extra),
        )

    @property
    def rate(self) -> float:
        """Operations per second (throughput measures)."""
        return self.ops / self.seconds if self.seconds and self.seconds > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rate"] = self.rate
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}


async def timed(
    op: Callable[[int], Awaitable[Any]],
    count: int,
    *,
    budget: float,
    before: Callable[[int], Awaitable[Any]] | None = None,
    minimum: int = 3,
) -> Summary:
    """Call ``op(i)`` up to ``count`` times, timing each call; stop early past ``budget`` s.

    ``before(i)``, untimed, prepares each call (a bot reads a session before it
    updates it).
    """
    durations: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        if before is not None:
            await before(i)
        t0 = time.perf_counter()
        await op(i)
        durations.append(time.perf_counter() - t0)
        if len(durations) >= minimum and time.perf_counter() - start > budget:
            break
    return Summary.of(durations, truncated=len(durations) < count, planned=count)


class LagProbe:
    """A ticker task that wants to run every ``interval`` seconds and records how late it runs.

    Its lateness is what every other task on the loop (an HTTP handler, a bot's
    next update) waits extra while the store blocks the loop. A tick late by ``L``
    also stands for the ticks the stall swallowed, due ``interval``, ``2 * interval``
    ... after it and late by ``L - interval``, ``L - 2 * interval`` ...: without them a
    loop blocked for 600 ms would count once among thousands of punctual ticks, and a
    store that stalls the loop rarely but long would look better than one that never
    does (coordinated omission: the ticker, like a client, stops asking while it waits).
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lateness: list[float] = []
        self.ticks = 0

    async def run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval
            await anyio.sleep(self.interval)
            late = max(0.0, time.perf_counter() - due)
            self.ticks += 1
            self.lateness.append(late)
            swallowed = late - self.interval
            while swallowed > 0:
                self.lateness.append(swallowed)
                swallowed -= self.interval

    def summary(self) -> Summary:
        return Summary.of(self.lateness, ticks=self.ticks)


@contextlib.asynccontextmanager
async def lag_probe(interval: float = 0.001) -> AsyncIterator[LagProbe]:
    """Run a :class:`LagProbe` for the duration of the block."""
    probe = LagProbe(interval)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(probe.run)
        try:
            yield probe
        finally:
            tasks.cancel_scope.cancel()


async def mixed_workload(
    contender: Contender,
    keys: Sequence[str],
    *,
    seed: int,
    tasks: int = 100,
    duration: float = 3.0,
    max_ops: int = 1_000_000,
    read_share: float = 0.8,
) -> tuple[Summary, Summary]:
    """A bot's traffic: ``tasks`` concurrent handlers, Zipf-distributed keys, 80% reads.

    Runs for ``duration`` seconds (or ``max_ops`` operations), then flushes; the
    throughput counts the flush. Returns (throughput, event-loop lag).
    """
    rng = random.Random(seed)
    draw = zipf_sampler(len(keys), rng)
    now_ms = _EPOCH_MS + 1
    ops = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def handler() -> None:
        nonlocal ops
        while ops < max_ops and time.perf_counter() < deadline:
            ops += 1
            key = keys[draw()]
            t0 = time.perf_counter()
            if rng.random() < read_share:
                await contender.get(key)
            else:
                await contender.update(key, touch(now_ms + ops, 17))
            latencies.append(time.perf_counter() - t0)

    async with lag_probe() as probe:
        start = time.perf_counter()
        # Handlers still queued behind a slow store when time is up are cancelled;
        # only completed calls count.
        with anyio.move_on_after(duration):
            async with anyio.create_task_group() as group:
                for _ in range(tasks):
                    group.start_soon(handler)
        await contender.flush()
        seconds = time.perf_counter() - start
    lag = probe.summary()
    throughput = Summary.of(latencies, seconds=seconds, tasks=tasks, read_share=read_share)
    return throughput, lag


async def paced_workload(
    make: Callable[[], Contender],
    keys: Sequence[str],
    *,
    rate: float,
    seconds: float,
    seed: int,
    tasks: int = 100,
) -> tuple[Summary, Summary]:
    """The mixed workload at a fixed offered load (Poisson arrivals over ``tasks`` handlers).

    What an asyncio server embedding the store feels at a realistic load: the
    event-loop lag then shows how long the store blocks the loop, not how many
    of the benchmark's own busy tasks are queued ahead of the ticker (at full
    speed, 100 tasks each doing 100 us of work make every task wait ~10 ms per
    round whatever the store). Returns (operations, event-loop lag).
    """
    rng = random.Random(seed)
    draw = zipf_sampler(len(keys), rng)
    contender = make()
    per_task = rate / tasks
    latencies: list[float] = []
    now_ms = _EPOCH_MS + 1_000_000
    counter = 0

    async def handler() -> None:
        nonlocal counter
        while True:
            await anyio.sleep(rng.expovariate(per_task))
            counter += 1
            key = keys[draw()]
            t0 = time.perf_counter()
            if rng.random() < 0.8:
                await contender.get(key)
            else:
                await contender.update(key, touch(now_ms + counter, 3))
            latencies.append(time.perf_counter() - t0)

    await contender.open()
    try:
        await contender.get(keys[0])
        async with lag_probe() as probe:
            start = time.perf_counter()
            with anyio.move_on_after(seconds):
                async with anyio.create_task_group() as group:
                    for _ in range(tasks):
                        group.start_soon(handler)
            await contender.flush()
            elapsed = time.perf_counter() - start
        return Summary.of(latencies, seconds=elapsed, offered_rate=rate), probe.summary()
    finally:
        await contender.close()


# -- the machine ---------------------------------------------------------------------------------


def describe_machine(folder: Path) -> dict[str, Any]:
    """What the figures depend on: CPUs, memory, the filesystem of ``folder``, versions."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as meminfo:
            total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        info["memory_gib"] = round(total_kb / 1024 / 1024, 1)
    with contextlib.suppress(OSError, ValueError), open("/proc/cpuinfo") as cpuinfo:
        info["cpu"] = next(line for line in cpuinfo if line.startswith("model name")).split(":", 1)[1].strip()
    info["filesystem"] = _filesystem_of(folder)
    info["packages"] = _versions(("aiosessions", "anyio", "msgspec"))
    return info


def _filesystem_of(folder: Path) -> str:
    """The type of the filesystem holding ``folder`` (what ``df -T`` says), from /proc/mounts."""
    try:
        target = os.path.realpath(folder)
        best, kind = "", "unknown"
        with open("/proc/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                inside = target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")
                if len(parts) >= 3 and inside and len(parts[1]) >= len(best):
                    best, kind = parts[1], f"{parts[2]} ({parts[0]} on {parts[1]})"
        return kind
    except OSError:
        return "unknown"


def _versions(names: Sequence[str]) -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


# -- formatting ---------------------------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
    """``1.23 s``, ``45.6 ms``, ``789 µs``: three significant figures."""
    if seconds is None or math.isnan(seconds):
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale or unit == "µs":
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    raise AssertionError("unreachable")


def format_rate(rate: float | None) -> str:
    if rate is None or math.isnan(rate):
        return "n/a"
    return f"{rate:,.0f} ops/s" if rate >= 100 else f"{rate:.3g} ops/s"


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.3g} {unit}" if unit != "B" else f"{size:.0f} B"
        size /= 1000
    raise AssertionError("unreachable")


def format_ratio(ratio: float | None) -> str:
    if ratio is None or math.isnan(ratio) or math.isinf(ratio):
        return "n/a"
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.3g}×"  # noqa: RUF001


def format_comparison(ratio: float | None) -> str:
    """How many times better (``ratio`` > 1) or worse (< 1) one figure is than another, in words.

    ``ratio`` is already oriented so that above 1 is better (faster, more operations, less
    lag); a ratio below 1 is written as its inverse and "worse" (3.34 times worse, never
    0.299 times less); within 2% of 1 it is "about the same".
    """
    if ratio is None or math.isnan(ratio) or ratio <= 0:
        return "n/a"
    if math.isinf(ratio):
        return "∞ better"
    if ratio == 1:
        return "same"
    if 1 / 1.02 < ratio < 1.02:
        return "about the same"  # not "1 times worse": within 2% is noise on any machine
    return f"{format_ratio(ratio)} better" if ratio > 1 else f"{format_ratio(1 / ratio)} worse"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, the first column left-aligned and the others right-aligned."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)),
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


class Progress:
    """Where the benchmark is: plain lines on stderr, or a rich progress bar when rich
    is installed and stderr is a terminal (rich stays optional)."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.done = 0
        self.quiet = quiet
        self._started = time.perf_counter()
        self._rich: Any = None
        self._task: Any = None
        if not quiet and sys.stderr.isatty():
            try:
                from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as RichProgress
            except ImportError:
                pass
            else:
                self._rich = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True
                )
                self._rich.start()
                self._task = self._rich.add_task("starting", total=total)

    def step(self, label: str) -> None:
        """Announce the next step."""
        self.done += 1
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done - 1, description=label)
        else:
            elapsed = time.perf_counter() - self._started
            print(f"[{self.done}/{self.total} {elapsed:5.1f}s] {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=self.total)
            self._rich.stop()
            self._rich = None


# -- write cost: what an update costs against what it changes (issue 14) ---------------------


@dataclass
class WriteCostSettings:
    """The write-cost measures: small vs large entries, three durabilities, SQLite."""

    sessions: int = 200
    #: Entry sizes compared (bytes of compact JSON): an ordinary entry and one with an embedded blob.
    small: int = 2_000
    large: int = 120_000
    samples: int = 200
    #: Seconds each latency measure may take at most.
    budget: float = 10.0
    #: Distinct keys written durably by ``tasks`` concurrent tasks, ``rounds`` times per
    #: contender, the contenders taking turns (the median round is reported).
    distinct: int = 1_000
    tasks: int = 100
    rounds: int = 3
    seed: int = DEFAULT_SEED


def sized_sessions(count: int, size: int, *, seed: int) -> Sessions:
    """``count`` OpenClaw-shaped sessions of about ``size`` bytes each (the blob makes the size)."""
    rng = random.Random(seed)
    text = _Text(rng)
    sessions: Sessions = {}
    for i in range(count):
        key = make_key(rng, i)
        bare = len(_encoder.encode(make_entry(random.Random(i), key, i, text, 0)))
        sessions[key] = make_entry(rng, key, i, text, max(0, size - bare - 800))
    return sessions


class _Sqlite:
    """One SQLite database (WAL, one row per session) driven from a single worker thread,
    as aiosqlite does: ``synchronous=FULL`` with fsync (every commit durable), ``NORMAL``
    without."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        import sqlite3

        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute("CREATE TABLE IF NOT EXISTS s (key TEXT PRIMARY KEY, json BLOB NOT NULL)")
        self._thread = anyio.CapacityLimiter(1)

    def close(self) -> None:
        self._db.close()

    def _fill(self, sessions: Sessions) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT OR REPLACE INTO s VALUES (?, ?)", ((k, _encoder.encode(v)) for k, v in sessions.items())
        )
        self._db.execute("COMMIT")

    async def fill(self, sessions: Sessions) -> None:
        await anyio.to_thread.run_sync(self._fill, sessions, limiter=self._thread)

    def _update(self, key: str, fn: UpdateFn) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT json FROM s WHERE key = ?", (key,)).fetchone()
            value = fn(None if row is None else msgspec.json.decode(row[0]))
            self._db.execute("INSERT OR REPLACE INTO s VALUES (?, ?)", (key, _encoder.encode(value)))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def update(self, key: str, fn: UpdateFn) -> None:
        await anyio.to_thread.run_sync(self._update, key, fn, limiter=self._thread)

    def _set(self, key: str, data: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO s VALUES (?, ?)", (key, data))  # one commit each

    async def set(self, key: str, value: dict[str, Any]) -> None:
        data = _encoder.encode(value)
        await anyio.to_thread.run_sync(self._set, key, data, limiter=self._thread)


def _plain_loop(folder: Path, entries: Sequence[bytes], fsync: bool, samples: int) -> Summary:
    """The floor: synchronous tmp write + rename (+ fsync of file and folder) of ``entries``,
    each replacing a file already on disk, as an update replaces a session's ``meta.json``.

    Renaming onto a file whose blocks are on disk costs more than creating a name (ext4
    frees the old blocks and, without fsync, starts writing the new file back: 2-3x on
    this machine's disk), so each file is written and fsynced first, untimed.
    """
    paths = [folder / f"s{i}" / "meta.json" for i in range(min(samples, len(entries)))]
    for i, path in enumerate(paths):
        path.parent.mkdir(exist_ok=True)
        _replace_file(path, entries[i], fsync=True)
    durations = []
    for i in range(samples):
        path = paths[i % len(paths)]
        t0 = time.perf_counter()
        _replace_file(path, entries[i % len(entries)], fsync)
        durations.append(time.perf_counter() - t0)
    return Summary.of(durations)


async def _distinct_writes(
    write: Callable[[str, dict[str, Any]], Awaitable[Any]],
    keys: Sequence[str],
    value: dict[str, Any],
    tasks: int,
    flush: Callable[[], Awaitable[Any]],
) -> Summary:
    """``tasks`` tasks write each key once (``value`` with the key's own marker), then ``flush``."""
    started = time.perf_counter()

    async def worker(part: Sequence[str]) -> None:
        for key in part:
            await write(key, {**value, "sessionId": key})

    async with anyio.create_task_group() as tg:
        for t in range(tasks):
            tg.start_soon(worker, keys[t::tasks])
    await flush()
    return Summary(samples=len(keys), seconds=time.perf_counter() - started, ops=len(keys))


def _chosen(keys: Sequence[str], settings: WriteCostSettings) -> tuple[list[str], list[str]]:
    """The sessions the update rows change, the same for every contender: ``samples`` drawn at
    random (a session may come again), and each session once (a first change by member)."""
    rng = random.Random(settings.seed)
    picks = [rng.choice(keys) for _ in range(settings.samples)]
    return picks, rng.sample(keys, min(len(keys), settings.samples))


async def _update_costs(
    store: Any,
    keys: Sequence[str],
    into: dict[str, Any],
    name: str,
    label: str,
    settings: WriteCostSettings,
    *,
    by_member: bool,
) -> None:
    """Time one-field updates of ``keys`` in ``store`` into ``into[name][label]``, each after an
    untimed read; with ``by_member``, the same change by ``update_members()`` too: a session's
    first change (each session once) and again (a session its previous message changed)."""
    picks, firsts = _chosen(keys, settings)
    now_ms = _EPOCH_MS + 10

    async def read(i: int, keys: list[str] = picks) -> None:
        await store.get(keys[i])

    async def update(i: int) -> None:
        await store.update(picks[i], touch(now_ms + i, 5))

    async def by_members(i: int, keys: list[str] = picks) -> None:
        await store.update_members(keys[i], TOUCHED, touch(now_ms + i, 5))

    async def read_and_update(i: int) -> None:
        await read(i)
        await by_members(i)

    samples, budget = settings.samples, settings.budget
    into.setdefault(name, {})[label] = await timed(update, samples, budget=budget, before=read)
    if not by_member:
        return
    # Like the update above, the first change starts from sessions written, not from the
    # changes update() left pending (a session whose last change came from update() is
    # split by a scan: its bytes were encoded whole).
    await store.flush()
    into.setdefault(f"{name}, update_members", {})[label] = await timed(
        functools.partial(by_members, keys=firsts),
        len(firsts),
        budget=budget,
        before=functools.partial(read, keys=firsts),
    )
    into.setdefault(f"{name}, update_members again", {})[label] = await timed(
        by_members, samples, budget=budget, before=read_and_update
    )


async def measure_write_cost(settings: WriteCostSettings, progress: Progress, folder: Path) -> dict[str, Any]:
    """One-field updates of small vs large entries at every durability, the plain loop that
    writes the same bytes, durable distinct-key writes and one update against SQLite."""
    from . import open_store

    results: dict[str, Any] = {"settings": asdict(settings), "update": {}, "plain": {}, "sqlite": {}}
    now_ms = _EPOCH_MS + 10
    durabilities = (
        ("write-behind", 0.05, True),
        ("write-through", 0.0, False),
        ("write-through +fsync", 0.0, True),
    )
    for label, size in (("small", settings.small), ("large", settings.large)):
        sessions = sized_sessions(settings.sessions, size, seed=settings.seed)
        keys = list(sessions)
        encoded = [_encoder.encode(touch(now_ms, 5)(v)) for v in sessions.values()]
        results[f"{label}_bytes"] = int(statistics.fmean(len(e) for e in encoded))
        path = folder / label / "sessions.json"
        path.parent.mkdir(parents=True)
        async with open_store(path, entry_type=dict, fsync=False) as store:
            for key, value in sessions.items():
                await store.set(key, value)
        for name, interval, fsync in durabilities:
            progress.step(f"{name}: update one field of a {format_bytes(size)} entry")
            async with open_store(path, entry_type=dict, fsync=fsync, flush_interval=interval) as store:
                await _update_costs(store, keys, results["update"], name, label, settings, by_member=True)
                journaling = getattr(store.backend, "_journal_wanted", None)
                results["journal"] = bool(journaling is not None and journaling())
        for fsync in (False, True):
            plain = folder / f"plain-{label}-{fsync}"
            plain.mkdir()
            results["plain"].setdefault("+fsync" if fsync else "", {})[
                label
            ] = await anyio.to_thread.run_sync(_plain_loop, plain, encoded, fsync, min(settings.samples, 100))
        if label == "small":
            picks = _chosen(keys, settings)[0]
            for fsync in (False, True):
                progress.step(f"SQLite {'FULL' if fsync else 'NORMAL'}: update one field")
                db = _Sqlite(folder / f"sqlite-{fsync}.db", fsync=fsync)
                try:
                    await db.fill(sessions)
                    row: dict[str, Any] = {}

                    async def sqlite_update(i: int, db: _Sqlite = db, picks: list[str] = picks) -> None:
                        await db.update(picks[i], touch(now_ms + i, 5))

                    row["update"] = await timed(sqlite_update, settings.samples, budget=settings.budget)
                    results["sqlite"]["FULL" if fsync else "NORMAL"] = row
                finally:
                    db.close()
            progress.step(f"durable distinct-key writes, SQLite FULL and ours, {settings.rounds} rounds")
            rounds = await _distinct_rounds(settings, folder / "sqlite-distinct.db", path, sessions[keys[0]])
            results["sqlite"]["FULL"]["distinct"] = rounds.pop("SQLite FULL")
            results["distinct"] = rounds
    return results


async def _distinct_rounds(
    settings: WriteCostSettings, database: Path, path: Path, value: dict[str, Any]
) -> dict[str, Summary]:
    """Durable distinct-key writes of SQLite (``FULL``) and of the store each way, in rounds in
    which the contenders take turns (a disk shared with other programs drifts); each one's
    median round."""
    from . import open_store
    from ._barrier import BarrierMode
    from .backends import _directory

    # The same writes as the store makes them durable here (through the journal, where it is
    # taken), behind the syncfs barrier, and fsynced per file: what each way saves.
    ours: tuple[tuple[str, float, BarrierMode, Literal["auto", "on", "off"]], ...] = (
        ("write-behind +fsync", 0.05, _directory.BARRIER, _directory.JOURNAL_MODE),
        ("write-behind +fsync, syncfs barrier", 0.05, "syncfs", "off"),
        ("write-behind +fsync, per-file fsync", 0.05, "fsync", "off"),
        ("write-through +fsync", 0.0, _directory.BARRIER, _directory.JOURNAL_MODE),
    )
    runs: dict[str, list[Summary]] = {}
    db = _Sqlite(database, fsync=True)
    try:
        for round_ in range(settings.rounds):
            keys = [f"new:{round_}:sqlite:{i}" for i in range(settings.distinct)]
            runs.setdefault("SQLite FULL", []).append(
                await _distinct_writes(db.set, keys, value, settings.tasks, anyio.lowlevel.checkpoint)
            )
            for name, interval, barrier, journal in ours:
                default = _directory.BARRIER, _directory.JOURNAL_MODE
                _directory.BARRIER, _directory.JOURNAL_MODE = barrier, journal
                try:
                    options: dict[str, Any] = {"fsync": True, "flush_interval": interval}
                    async with open_store(path, entry_type=dict, **options) as store:
                        keys = [f"new:{round_}:{name}:{i}" for i in range(settings.distinct)]
                        runs.setdefault(name, []).append(
                            await _distinct_writes(store.set, keys, value, settings.tasks, store.flush)
                        )
                finally:
                    _directory.BARRIER, _directory.JOURNAL_MODE = default
    finally:
        db.close()
    return {name: sorted(done, key=lambda s: s.rate)[len(done) // 2] for name, done in runs.items()}


def write_cost_rows(results: dict[str, Any]) -> list[list[str]]:
    """The printed rows: each update small vs large, against the plain loop and SQLite."""
    rows: list[list[str]] = []
    plain = results["plain"]
    for name, row in results["update"].items():
        small, large = row["small"].p50, row["large"].p50
        floor = plain["+fsync" if "+fsync" in name else ""]
        vs_plain = (
            ""
            if name.startswith("write-behind")
            else (f"{format_ratio(small / floor['small'].p50)} / {format_ratio(large / floor['small'].p50)}")
        )
        rows.append(
            [
                f"update one field, {name}",
                format_seconds(small),
                format_seconds(large),
                format_ratio(large / small),
                vs_plain,
            ]
        )
    for tag in ("", "+fsync"):
        p = plain[tag]
        rows.append(
            [
                f"plain loop, tmp + rename {tag}".rstrip(),
                format_seconds(p["small"].p50),
                format_seconds(p["large"].p50),
                format_ratio(p["large"].p50 / p["small"].p50),
                "",
            ]
        )
    return rows


def write_cost_sqlite_rows(results: dict[str, Any]) -> list[list[str]]:
    """aiosessions against SQLite (WAL) at equal durability, from the same run."""
    sqlite, update, distinct = results["sqlite"], results["update"], results["distinct"]
    rows = []
    for ours, theirs in (("write-through", "NORMAL"), ("write-through +fsync", "FULL")):
        a, b = update[ours]["small"].p50, sqlite[theirs]["update"].p50
        rows.append(
            [
                f"one update, {ours} vs SQLite {theirs}",
                format_seconds(a),
                format_seconds(b),
                format_ratio(b / a),
            ]
        )
    # What any one-file-per-session layout is held to: the plain loop replacing the file.
    for tag, theirs in (("", "NORMAL"), ("+fsync", "FULL")):
        a, b = results["plain"][tag]["small"].p50, sqlite[theirs]["update"].p50
        rows.append(
            [
                f"the plain loop (tmp + rename{' +fsync' if tag else ''}) vs SQLite {theirs}",
                format_seconds(a),
                format_seconds(b),
                format_ratio(b / a),
            ]
        )
    for ours in distinct:
        a, b = distinct[ours].rate, sqlite["FULL"]["distinct"].rate
        rows.append(
            [
                f"durable distinct-key writes/s, {ours} vs SQLite FULL",
                format_rate(a),
                format_rate(b),
                format_ratio(a / b),
            ]
        )
    return rows


def write_cost_report(results: dict[str, Any]) -> str:
    s = results["settings"]
    return "\n".join(
        [
            f"write cost: {s['sessions']} sessions of ~{format_bytes(results['small_bytes'])} and "
            f"~{format_bytes(results['large_bytes'])}, p50 of one call (seed {s['seed']})",
            "",
            render_table(
                ["", "small", "large", "large / small", "vs plain loop of small (small / large)"],
                write_cost_rows(results),
            ),
            "",
            render_table(
                ["", "aiosessions", "SQLite", "aiosessions speed vs SQLite"], write_cost_sqlite_rows(results)
            ),
            f"distinct-key writes: {s['distinct']:,} keys by {s['tasks']} tasks, the median of "
            f"{s['rounds']} rounds taking turns; durable batches here "
            + ("go through the batch journal" if results.get("journal") else "do not take the journal"),
        ]
    )


async def run_write_cost(
    settings: WriteCostSettings, *, folder: Path | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Measure the write cost in a temporary folder (under ``folder`` if given)."""
    progress = Progress(12, quiet=quiet)
    try:
        if folder is not None:
            await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="aiosessions-writes-", dir=folder))
        try:
            results = await measure_write_cost(settings, progress, work)
            results["machine"] = describe_machine(work)
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, work, True)
    finally:
        progress.close()
    return results


async def run_redis_write_cost(
    settings: WriteCostSettings, url: str, *, quiet: bool = False
) -> dict[str, Any]:
    """The same one-field updates on the Redis backend at ``url``: small vs large entries,
    write-behind and write-through (large members stored apart, as in a directory store).

    The sessions live under a fresh prefix of their own, removed afterwards with every key
    it named; nothing else on the server is touched. A standalone server (not a cluster).
    """
    from . import open_store
    from .backends._redis import RedisBackend, _hide_password

    results: dict[str, Any] = {"settings": asdict(settings), "update": {}, "server": _hide_password(url)}
    progress = Progress(6, quiet=quiet)
    try:
        for label, size in (("small", settings.small), ("large", settings.large)):
            sessions = sized_sessions(settings.sessions, size, seed=settings.seed)
            keys = list(sessions)
            sizes = [len(_encoder.encode(value)) for value in sessions.values()]
            results[f"{label}_bytes"] = int(statistics.fmean(sizes))
            prefix = f"aiosessions-bench-{uuid.uuid4().hex[:12]}"
            try:
                progress.step(f"Redis: writing {len(keys)} sessions of {format_bytes(size)}")
                async with open_store(RedisBackend.from_url(url, prefix=prefix), entry_type=dict) as store:
                    for key, value in sessions.items():
                        await store.set(key, value)
                for name, interval in (("write-behind", 0.05), ("write-through", 0.0)):
                    progress.step(f"Redis, {name}: update one field of a {format_bytes(size)} entry")
                    backend = RedisBackend.from_url(url, prefix=prefix)
                    async with open_store(backend, entry_type=dict, flush_interval=interval) as store:
                        into = results["update"]
                        await _update_costs(store, keys, into, name, label, settings, by_member=True)
                        if interval == 0.0:
                            sent = await _bytes_received_per_update(store, keys[0], url)
                            results.setdefault("bytes_per_update", {})[label] = sent
            finally:
                await _drop_redis_store(url, prefix)
    finally:
        progress.close()
    return results


async def _bytes_received_per_update(store: Any, key: str, url: str, calls: int = 50) -> float:
    """Bytes the server received per write-through ``update_members()`` of one field of ``key``
    (its ``total_net_input_bytes``: on a shared server, other clients' traffic counts too)."""
    from redis import asyncio as aioredis

    from .backends._redis import _split_url

    def touch(members: Any) -> dict[str, Any]:
        return {"updatedAt": (members or {}).get("updatedAt", 0) + 1}

    client = aioredis.from_url(_split_url(url)[0])
    try:
        before = (await client.info("stats"))["total_net_input_bytes"]
        for _ in range(calls):
            await store.update_members(key, ["updatedAt"], touch)
        after = (await client.info("stats"))["total_net_input_bytes"]
    finally:
        await client.aclose()
    return float(after - before) / calls


async def _drop_redis_store(url: str, prefix: str) -> None:
    """Remove every key of the store named ``prefix`` (``{prefix}:format`` and ``{prefix/N}:…``)."""
    from redis import asyncio as aioredis

    from .backends._redis import _split_url

    client = aioredis.from_url(_split_url(url)[0])
    try:
        for pattern in (f"{{{prefix}}}*", f"{{{prefix}/*"):
            names = [name async for name in client.scan_iter(match=pattern, count=1000)]
            if names:
                await client.unlink(*names)
    finally:
        await client.aclose()


def redis_write_cost_report(results: dict[str, Any]) -> str:
    rows = [
        [
            f"update one field, {name}",
            format_seconds(row["small"].p50),
            format_seconds(row["large"].p50),
            format_ratio(row["large"].p50 / row["small"].p50),
        ]
        for name, row in results["update"].items()
    ]
    s = results["settings"]
    return "\n".join(
        [
            f"write cost on Redis ({results['server']}): {s['sessions']} sessions of "
            f"~{format_bytes(results['small_bytes'])} and ~{format_bytes(results['large_bytes'])}, "
            f"p50 of one call (seed {s['seed']})",
            "",
            render_table(["", "small", "large", "large / small"], rows),
            *(
                [
                    "",
                    "bytes the server received per write-through update_members(): "
                    f"{format_bytes(sent['small'])} (small), {format_bytes(sent['large'])} (large)",
                ]
                if (sent := results.get("bytes_per_update"))
                else []
            ),
        ]
    )


# -- the built-in benchmark -----------------------------------------------------------------------


@dataclass
class QuickSettings:
    """What ``aiosessions bench`` measures and how long it may take."""

    sessions: int = HEADLINE_SESSIONS
    target_bytes: int | None = HEADLINE_BYTES
    seed: int = DEFAULT_SEED
    #: fsync in both stores, as the library does by default (a returned write is on disk).
    fsync: bool = True
    flush_interval: float = 0.05
    #: Seconds of mixed workload per contender.
    duration: float = 3.0
    #: Seconds the legacy store may spend on each latency measure (its calls take ~1 s each).
    legacy_budget: float = 5.0
    samples: int = 300
    #: Offered load (operations per second) while the event-loop lag is measured.
    paced_rate: float = 500.0
    folder: Path | None = None
    #: Measure a copy of this store (a legacy ``sessions.json`` or a directory store) instead
    #: of a generated one. It is only read.
    source: Path | None = None
    #: The fsync settings to measure, one run each (``--fsync both``: on, then off).
    fsync_runs: tuple[bool, ...] = ()
    #: Store sizes of the open + get + close row, and samples per size.
    open_sizes: tuple[int, ...] = OPEN_SIZES
    open_samples: int = 1000

    def runs(self) -> tuple[bool, ...]:
        return self.fsync_runs or (self.fsync,)


@dataclass
class Material:
    """The legacy file measured (generated, or a copy of the user's) and the keys to use."""

    data: bytes
    #: Keys of entries that are JSON objects under a valid key (the workload's sessions).
    keys: list[str]
    #: What it is, for the report: "generated, seed N" or "a copy of PATH".
    origin: str
    #: Entries of the file left out of the workload (invalid keys, values that are not objects).
    left_out: int = 0


async def prepare(settings: QuickSettings, progress: Progress) -> Material:
    """Generate the store to measure, or read the user's (``settings.source``), once per run."""
    if settings.source is None:
        progress.step(f"generating {settings.sessions} sessions (seed {settings.seed})")
        count, seed, size = settings.sessions, settings.seed, settings.target_bytes
        sessions = await anyio.to_thread.run_sync(
            lambda: generate_sessions(count, seed=seed, target_bytes=size)
        )
        data = await anyio.to_thread.run_sync(encode_legacy, sessions)
        return Material(data, list(sessions), f"generated, seed {settings.seed}")
    progress.step(f"reading {settings.source} (only reading: the measures run on copies)")
    data, unreadable = await read_store(settings.source)
    entries = await anyio.to_thread.run_sync(_decode_entries, data, str(settings.source))
    keys = [key for key, raw in entries.items() if _usable(key, raw)]
    if not keys:
        raise ValueError(f"{settings.source} holds no session to measure (no entry is a JSON object)")
    left_out = len(entries) - len(keys) + unreadable
    return Material(data, keys, f"a copy of {settings.source}", left_out=left_out)


async def read_store(path: Path) -> tuple[bytes, int]:
    """The legacy-format bytes of the store at ``path``, read without changing anything, and
    how many of its sessions could not be read (left out).

    A legacy ``sessions.json`` is read as it is; a directory store is exported (every entry
    it can read, as ``aiosessions export --skip-corrupt`` writes them).
    """
    from ._fs import FileSystem
    from ._layout import StorePaths, detect_mode
    from ._migrate import export_bytes

    paths = StorePaths.of(path)
    mode = await anyio.to_thread.run_sync(detect_mode, FileSystem(), paths)
    if mode == "directory":
        unreadable: list[object] = []
        return await export_bytes(path, on_corrupt=unreadable.append), len(unreadable)
    return await anyio.Path(paths.file).read_bytes(), 0


def _decode_entries(data: bytes, where: str) -> dict[str, msgspec.Raw]:
    from .backends._json import decode_legacy

    return decode_legacy(data, where)


def _usable(key: str, raw: msgspec.Raw) -> bool:
    from ._keys import validate_key

    try:
        validate_key(key)
    except ValueError:
        return False
    return bytes(memoryview(raw)[:1]) == b"{"


async def _build_stores(folder: Path, data: bytes) -> tuple[Path, Path, int, float]:
    """The legacy file and a directory store migrated from a copy of it."""
    from . import migrate

    legacy = folder / "legacy" / "sessions.json"
    directory = folder / "directory" / "sessions.json"
    for path in (legacy, directory):
        await anyio.to_thread.run_sync(shutil.rmtree, path.parent, True)
        path.parent.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(path.write_bytes, data)
    started = time.perf_counter()
    # A user's file may hold entries a directory store cannot (they stay in the legacy copy).
    await migrate(directory, fsync=False, skip_invalid=True)
    return legacy, directory, len(data), time.perf_counter() - started


async def measure_pair(
    settings: QuickSettings, progress: Progress, folder: Path, material: Material, *, fsync: bool
) -> dict[str, Any]:
    """Every figure of one ``aiosessions bench`` table (one fsync setting), measured in ``folder``."""
    keys = material.keys
    label = f"fsync {'on' if fsync else 'off'}"
    progress.step(f"{label}: writing sessions.json and migrating a copy to a directory store")
    legacy_path, directory_path, size, migration = await _build_stores(folder, material.data)
    gc.collect()
    rng = random.Random(settings.seed + 1)
    update_keys = [rng.choice(keys) for _ in range(settings.samples)]
    cold_keys = rng.sample(keys, min(len(keys), settings.samples))
    # issue 14's rows: each session changed once per row, its first change by member.
    first_keys = rng.sample(keys, min(len(keys), settings.samples))
    now_ms = _EPOCH_MS + 10

    def legacy() -> Contender:
        return LegacyJsonContender(legacy_path, fsync=fsync)

    def ours() -> Contender:
        return AiosessionsContender(directory_path, fsync=fsync, flush_interval=settings.flush_interval)

    results: dict[str, Any] = {"fsync": fsync, "migration_seconds": migration, "measures": {}}
    measures: dict[str, dict[str, Any]] = results["measures"]
    for make, budget in ((legacy, settings.legacy_budget), (ours, 30.0)):
        contender = make()
        row: dict[str, Any] = {}
        measures[contender.name] = row

        progress.step(f"{label}: {contender.name}: update one session")
        await contender.open()
        try:
            await contender.get(update_keys[0])

            async def update(i: int, c: Contender = contender) -> None:
                await c.update(update_keys[i], touch(now_ms + i, 5))

            async def read(i: int, c: Contender = contender) -> None:
                await c.get(update_keys[i])

            row["update"] = await timed(update, settings.samples, budget=budget, before=read)
            if isinstance(contender, AiosessionsContender):
                row.update(await _ways_to_update(contender.store, first_keys, budget, now_ms))
            else:
                # The legacy store has one way: every update rewrites the file before it returns.
                for measure in _UPDATE_WAYS:
                    row[measure] = row["update"]
            await contender.flush()
        finally:
            await contender.close()

        progress.step(f"{label}: {contender.name}: read one session cold")
        if contender.whole_file:

            async def cold_read(i: int, make: Callable[[], Contender] = make) -> None:
                fresh = make()
                await fresh.open()
                try:
                    await fresh.get(cold_keys[i])
                finally:
                    await fresh.close()

            row["cold_read"] = await timed(cold_read, len(cold_keys), budget=budget)
        else:
            fresh = make()
            await fresh.open()
            try:

                async def first_read(i: int, c: Contender = fresh) -> None:
                    await c.get(cold_keys[i])

                row["cold_read"] = await timed(first_read, len(cold_keys), budget=budget)
            finally:
                await fresh.close()

        progress.step(
            f"{label}: {contender.name}: mixed workload, 100 tasks, 80% reads, {settings.duration:g} s"
        )
        await contender.open()
        try:
            await contender.get(keys[0])  # loaded, as in a running gateway
            row["mixed"], row["mixed_lag"] = await mixed_workload(
                contender, keys, seed=settings.seed, duration=settings.duration
            )
        finally:
            await contender.close()

        progress.step(f"{label}: {contender.name}: event-loop lag at {settings.paced_rate:g} ops/s")
        row["paced"], row["lag"] = await paced_workload(
            make, keys, rate=settings.paced_rate, seconds=settings.duration, seed=settings.seed
        )
    results["bytes"] = size
    return results


#: The other ways aiosessions updates a session, each against the legacy store's one update.
_UPDATE_WAYS = ("update_members", "update_through", "update_members_through")


async def _ways_to_update(store: Any, keys: Sequence[str], budget: float, now_ms: int) -> dict[str, Summary]:
    """The same change by member (``update_members``) and written through (``durable=True``):
    issue 14's rows, each after an untimed read of the session as the other updates."""

    async def read(i: int) -> None:
        await store.get(keys[i])

    async def by_members(i: int, durable: bool = False) -> None:
        await store.update_members(keys[i], TOUCHED, touch(now_ms + i, 5), durable=durable)

    async def through(i: int) -> None:
        await store.update(keys[i], touch(now_ms + i, 5), durable=True)

    async def by_members_through(i: int) -> None:
        await by_members(i, durable=True)

    out = {}
    for measure, call in zip(_UPDATE_WAYS, (by_members, through, by_members_through), strict=True):
        await store.flush()  # each starts from sessions on disk, not from another's pending changes
        out[measure] = await timed(call, len(keys), budget=budget, before=read)
    return out


# -- opening a store (issue 9.9) ---------------------------------------------------------------


#: Iterations of the floor's loop per sample.
_FLOOR_LOOP = 20


async def measure_open(folder: Path, sessions: int, *, samples: int = 1000) -> dict[str, Any]:
    """``open_store`` + ``get`` of one session + close, against the physical floor: open, read
    and decode that session's ``meta.json`` in a plain synchronous loop.

    On a directory store of ``sessions`` small sessions made in ``folder`` (page cache warm,
    as for a bot that reopens its store). Each sample times a loop of the floor, then one
    open + get + close, so that a busy machine weighs on both alike; the ratio is of the
    medians.
    """
    from . import migrate, open_store
    from ._keys import encode_key
    from .backends import DirectoryBackend

    path = folder / f"open-{sessions}" / "sessions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {
        f"agent:main:telegram:direct:{i}": {"sessionId": f"s{i:08x}", "updatedAt": _EPOCH_MS + i}
        for i in range(sessions)
    }
    await anyio.to_thread.run_sync(path.write_bytes, msgspec.json.encode(entries))
    del entries
    await migrate(path, fsync=False)
    key = f"agent:main:telegram:direct:{sessions // 2}"
    meta = str(path.with_name("sessions.d") / encode_key(key) / "meta.json")
    decoder = msgspec.json.Decoder()
    floors: list[float] = []
    opens: list[float] = []
    backends: list[float] = []
    for sample in range(samples + 20):  # the first 20: warming up (and the new store's first sweep)
        started = time.perf_counter()
        for _ in range(_FLOOR_LOOP):
            fd = os.open(meta, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 65536)  # as the library reads: a 1 MiB buffer costs an mmap
            finally:
                os.close(fd)
            decoder.decode(data)
        middle = time.perf_counter()
        async with open_store(path, entry_type=dict) as store:
            await store.get(key)
        opened = time.perf_counter()
        # The same through the backend alone: what the store's own machinery adds is the rest.
        backend = DirectoryBackend(path)
        await backend.open()
        try:
            decoder.decode(await backend.read(key) or b"")
        finally:
            await backend.aclose()
        if sample >= 20:
            floors.append((middle - started) / _FLOOR_LOOP)
            opens.append(opened - middle)
            backends.append(time.perf_counter() - opened)
    low, high, part = Summary.of(floors), Summary.of(opens), Summary.of(backends)
    return {
        "sessions": sessions,
        "floor": low,
        "open": high,
        "ratio": high.p50 / low.p50,
        "backend": part,
        "backend_ratio": part.p50 / low.p50,
    }


def open_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The rows of the open table: per store size, the store, the backend alone, the floor."""
    return [
        [
            f"{row['sessions']:,} sessions",
            f"{format_seconds(row['open'].p50)} ({format_ratio(row['ratio'])})",
            f"{format_seconds(row['backend'].p50)} ({format_ratio(row['backend_ratio'])})",
            format_seconds(row["floor"].p50),
        ]
        for row in results
    ]


#: The rows of the printed table: label, measure, statistic, whether lower is better.
_ROWS = (
    ("update one session, p50", "update", "p50", True),
    ("update one session, p99", "update", "p99", True),
    ("update one session by member (update_members), p50", "update_members", "p50", True),
    ("update one session written through (durable=True), p50", "update_through", "p50", True),
    ("update one session by member written through, p50", "update_members_through", "p50", True),
    ("read one session cold, p50", "cold_read", "p50", True),
    ("mixed workload throughput", "mixed", "rate", False),
    ("event-loop lag p99 at {paced} ops/s", "lag", "p99", True),
    ("event-loop lag p99 at full speed", "mixed_lag", "p99", True),
)


def ratio_rows(results: dict[str, Any], run: dict[str, Any]) -> list[list[str]]:
    """The rows of one printed table: legacy, aiosessions, and how many times better or worse."""
    legacy, ours = run["measures"]["legacy JSON"], run["measures"]["aiosessions"]
    rows: list[list[str]] = []
    for label, measure, stat, lower_is_better in _ROWS:
        a, b = getattr(legacy[measure], stat), getattr(ours[measure], stat)
        fmt = format_seconds if stat != "rate" else format_rate
        # Oriented so that above 1 means aiosessions is better: less time, more operations.
        top, bottom = (a, b) if lower_is_better else (b, a)
        ratio = top / bottom if bottom else math.inf
        label = label.format(paced=f"{results['paced_rate']:g}")
        rows.append([label, fmt(a), fmt(b), format_comparison(ratio)])
    return rows


async def run_quick(settings: QuickSettings, *, quiet: bool = False) -> dict[str, Any]:
    """Prepare a store (generated, or a copy of ``settings.source``), measure legacy JSON and
    aiosessions once per fsync setting, and return the figures."""
    runs = settings.runs()
    progress = Progress(1 + len(runs) * (1 + 2 * 4) + len(settings.open_sizes), quiet=quiet)
    try:
        if settings.folder is not None:
            settings.folder.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="aiosessions-bench-", dir=settings.folder))
        else:
            folder = Path(tempfile.mkdtemp(prefix="aiosessions-bench-"))
        try:
            material = await prepare(settings, progress)
            results: dict[str, Any] = {
                "sessions": len(material.keys),
                "bytes": len(material.data),
                "origin": material.origin,
                "left_out": material.left_out,
                "seed": settings.seed,
                "flush_interval": settings.flush_interval,
                "paced_rate": settings.paced_rate,
                "runs": [],
            }
            for fsync in runs:
                results["runs"].append(await measure_pair(settings, progress, folder, material, fsync=fsync))
            results["open"] = []
            for size in settings.open_sizes:
                progress.step(f"aiosessions: open + get one session + close, {size:,} sessions")
                results["open"].append(await measure_open(folder, size, samples=settings.open_samples))
            results["machine"] = describe_machine(folder)
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, folder, True)
    finally:
        progress.close()
    return results


#: ``--fsync`` choices: the fsync settings each one measures, in order.
FSYNC_CHOICES = {"on": (True,), "off": (False,), "both": (True, False)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``aiosessions bench`` (shared with the CLI's sub-command)."""
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="PATH",
        help="measure a copy of your own store (a sessions.json, or a directory store) instead of a "
        "generated one; PATH is only read",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=None,
        metavar="N",
        help=f"sessions to generate (default {HEADLINE_SESSIONS}, about 80 MB)",
    )
    parser.add_argument(
        "--megabytes",
        type=float,
        default=None,
        metavar="MB",
        help="size of the generated sessions.json (default 80 with the default sessions; "
        "otherwise entries of 1-12 KB with a few 40-150 KB blobs)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run: 100 sessions, about 2 MB, short budgets"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--fsync",
        choices=tuple(FSYNC_CHOICES),
        nargs="?",
        const="on",
        default="on",
        help="fsync every write in both stores: on (default, as the library does), off, or both "
        "(one table each)",
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="seconds of mixed workload per store (3)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to make the temporary stores (say, on the disk your store lives on)",
    )
    parser.add_argument(
        "--open-sizes",
        default=None,
        metavar="N,N",
        help="store sizes of the open + get + close row (default 100,100000; --quick: 100,1000; "
        "empty: skip it)",
    )
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--writes",
        action="store_true",
        help="instead: what one update costs on 2 KB vs 120 KB entries at each durability, "
        "against a plain tmp + rename loop and SQLite (about a minute; --quick for a tiny run)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="with --writes: measure the Redis backend on this server instead of files (the "
        "sessions go under a fresh prefix, removed afterwards; a standalone server)",
    )


def settings_from(args: argparse.Namespace) -> QuickSettings:
    runs = FSYNC_CHOICES[args.fsync]
    settings = QuickSettings(seed=args.seed, fsync=runs[0], fsync_runs=runs, folder=args.dir)
    if args.source is not None and (args.sessions is not None or args.megabytes is not None):
        raise ValueError("--from measures your store as it is: it takes no --sessions or --megabytes")
    settings.source = args.source
    if args.quick:
        settings.sessions, settings.target_bytes = 100, 2_000_000
        settings.duration, settings.legacy_budget, settings.samples = 0.5, 0.5, 50
        settings.paced_rate = 200.0
        settings.open_sizes, settings.open_samples = (100, 1000), 100
    if args.sessions is not None:
        settings.sessions = args.sessions
        settings.target_bytes = None
    if args.megabytes is not None:
        settings.target_bytes = int(args.megabytes * 1_000_000)
    if args.duration is not None:
        settings.duration = args.duration
    if args.open_sizes is not None:
        settings.open_sizes = tuple(int(n) for n in args.open_sizes.split(",") if n)
    return settings


_FSYNC_WORDS = {
    True: "fsync on in both stores (the library's default: a write that returned is on disk)",
    False: "fsync off in both stores (a write that returned may still be in the OS cache)",
}


def report(results: dict[str, Any]) -> str:
    """The printed result: what was measured, on what, and one table per fsync setting."""
    machine = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    lines = [
        f"aiosessions bench: {results['sessions']:,} sessions, "
        f"{format_bytes(results['bytes'])} sessions.json ({results['origin']})",
        f"machine: {machine['cpus']} CPUs, {machine.get('memory_gib', '?')} GiB, {machine['filesystem']}, "
        f"{machine['python']}, {packages}",
    ]
    left_out = results.get("left_out", 0)
    if left_out:
        what = (
            "1 entry that is not a JSON object"
            if left_out == 1
            else f"{left_out} entries that are not JSON objects"
        )
        lines.append(
            f"left out of the workload: {what} under a valid key (kept in the legacy copy; "
            "`aiosessions fsck` names them)"
        )
    lag_worse = False
    for run in results["runs"]:
        rows = ratio_rows(results, run)
        lag_worse = lag_worse or rows[-1][-1].endswith("worse")
        header = ["", "legacy JSON", "aiosessions", "aiosessions is"]
        lines += ["", _FSYNC_WORDS[run["fsync"]], render_table(header, rows)]
    lines += [
        "",
        "legacy JSON: the whole file parsed inline on the loop when it changed and inside every update,",
        "rewritten indented by 2 on every save, one global lock (as OpenClaw's store.ts did).",
        f"aiosessions: directory store, write-behind every {results['flush_interval'] * 1000:g} ms; "
        "a cold read is one not in the library's cache",
        "(the OS page cache is warm for both).",
    ]
    if lag_worse:
        lines += [
            "At full speed 100 tasks never wait, so a ticker waits behind their turns whatever the store",
            "does; the paced row is what a server at a steady load feels.",
        ]
    if results.get("open"):
        lines += [
            "",
            "Opening a store (page cache warm), against the floor: open, read and decode the",
            "session's meta.json in a plain synchronous loop; backend alone: DirectoryBackend",
            "open + read + close, without the store's queue and background tasks (medians).",
            render_table(
                ["open + get one session + close", "open_store (ratio)", "backend alone (ratio)", "floor"],
                open_rows(results["open"]),
            ),
        ]
    lines += [
        "Figures of one run on this machine: run it twice before trusting a small ratio.",
        "The whole comparison (SQLite, diskcache, the disk): python -m benchmarks (source tree).",
    ]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Summary):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


async def run_command(args: argparse.Namespace) -> int:
    """``aiosessions bench``: measure, print the table, optionally write JSON."""
    if getattr(args, "writes", False):
        if getattr(args, "source", None) is not None or args.sessions is not None or args.megabytes:
            raise ValueError(
                "--writes generates its own stores: it takes no --from, --sessions or --megabytes"
            )
        costs = WriteCostSettings(seed=args.seed)
        if args.quick:
            costs.sessions, costs.samples, costs.distinct, costs.budget = 20, 20, 100, 1.0
        if args.redis is not None:
            results = await run_redis_write_cost(costs, args.redis, quiet=args.quiet)
            print(redis_write_cost_report(results))
        else:
            results = await run_write_cost(costs, folder=args.dir, quiet=args.quiet)
            print(write_cost_report(results))
    elif getattr(args, "redis", None) is not None:
        raise ValueError("--redis goes with --writes: the comparison with the legacy file is about files")
    else:
        results = await run_quick(settings_from(args), quiet=args.quiet)
        print(report(results))
    if args.json:
        data = json.dumps(_jsonable(results), indent=2) + "\n"
        await anyio.Path(args.json).write_text(data, encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``aiosessions bench`` on its own (``python -m aiosessions._bench``)."""
    parser = argparse.ArgumentParser(prog="aiosessions bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return anyio.run(run_command, args)


if __name__ == "__main__":
    raise SystemExit(main())
