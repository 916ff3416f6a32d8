"""The defaults of every option, in one place (the store and the backends share them)."""

from __future__ import annotations

#: Seconds a change may wait in memory before its batch is written.
DEFAULT_FLUSH_INTERVAL = 0.05
#: Seconds to wait for another process's lock.
DEFAULT_LOCK_TIMEOUT = 10.0
#: Seconds ``aclose()`` waits for the final flush.
DEFAULT_CLOSE_TIMEOUT = 30.0
DEFAULT_MAX_PENDING_KEYS = 10_000
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
#: The largest entry the store accepts (and reads back).
DEFAULT_MAX_ENTRY_BYTES = 16 * 1024 * 1024
#: Bytes of recently used entries a directory store keeps: ~500 OpenClaw sessions of 123 KB.
#: (16 MiB held ~130, and a gateway's active sessions did not fit: docs/benchmarks.md.)
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: Seconds the bytes a backend last read, validated or wrote of a key serve as the base of the
#: next write-behind ``update()`` of it without asking the disk or server again (its
#: compare-and-swap still checks them: a stale base costs a retry, never an update).
BASE_TTL = 1.0
#: Seconds after which a tmp file is an orphan.
DEFAULT_TMP_MAX_AGE = 15 * 60.0
