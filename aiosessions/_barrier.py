"""One durability barrier per batch: where ``syncfs(2)`` can stand in for per-file fsyncs,
and when it is cheaper.

A durable batch written file by file costs two fsyncs per key (the tmp file before its
rename, the folder after it). ``syncfs`` writes back and commits everything of one
filesystem in one call, so a batch staged as tmp files, made durable by one ``syncfs``,
renamed, and made durable by a second ``syncfs`` costs two calls whatever its number of
keys (see docs/durability.md). Two conditions, checked here:

- **It must report failures.** Before Linux 5.8 ``syncfs`` returned 0 even when write-back
  failed, so a failed barrier would pass for a durable batch; from 5.8 it returns the
  error (``errseq`` on the superblock, seen once per open file description).
- **The filesystem must honour it** with a commit of data and names in the order asked:
  the local journalling or copy-on-write filesystems and tmpfs (nothing to commit). Not
  network or FUSE filesystems (NFS, SMB, 9p, virtiofs, sshfs), where what ``syncfs``
  does is the server's or the daemon's business, and not overlayfs (its ``syncfs`` of
  the upper layer is what Docker gives, but not checked here): those keep per-file fsync.

It is also a cost: ``syncfs`` writes back every dirty page of the whole filesystem,
other programs' too. On a busy shared disk one call took 0.3-40 ms here, against ~1 ms
per fsync; so the backend picks per batch whichever its running averages say is cheaper
(:class:`BarrierPolicy`), and one call never costs more than the batch it replaces by
much, whatever else is writing.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Final, Literal

__all__ = ["BarrierMode", "BarrierPolicy", "syncfs_filesystem"]

BarrierMode = Literal["auto", "syncfs", "fsync"]

#: Filesystems whose ``syncfs`` commits data and names (Linux >= 5.8 also reports errors).
SYNCFS_FILESYSTEMS: Final = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs"})
_MIN_KERNEL: Final = (5, 8)


def _kernel_at_least(release: str, wanted: tuple[int, int]) -> bool:
    found = re.match(r"(\d+)\.(\d+)", release)
    return found is not None and (int(found[1]), int(found[2])) >= wanted


def syncfs_filesystem(device: int, *, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem on ``device`` (``st_dev``) when ``syncfs`` may serve as
    the barrier of a durable batch there; None otherwise."""
    if not sys.platform.startswith("linux") or not _kernel_at_least(os.uname().release, _MIN_KERNEL):
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                # ID parent major:minor root mountpoint options [optional...] - type source super
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and "-" in fields:
                    kind = fields[fields.index("-") + 1]
                    return kind if kind in SYNCFS_FILESYSTEMS else None
    except OSError:
        return None
    return None


class BarrierPolicy:
    """Per durable batch: one ``syncfs`` barrier, or fsyncs per file, whichever is cheaper.

    Running averages (exponential, weight ``ALPHA``) of what a batch cost per key with
    per-file fsyncs, and per key plus the two ``syncfs`` calls with the barrier. A batch of
    ``n`` keys takes the barrier when ``n * per_key_barrier + syncfs_cost`` is below
    ``n * per_key_fsync``. The barrier is tried on the first batch big enough to matter
    and again every ``REPROBE`` batches it lost, so one slow call (another program
    flushing gigabytes) does not rule it out for good.
    """

    ALPHA: Final = 0.2
    #: Smaller durable batches always fsync per file: a barrier would not pay off.
    MIN_BATCH: Final = 8
    REPROBE: Final = 32

    def __init__(self, mode: BarrierMode, available: bool) -> None:
        self.mode: BarrierMode = mode if available or mode == "fsync" else "fsync"
        self.per_key_fsync = 0.0015  # seconds; replaced by what this store measures
        self.per_key_barrier: float | None = None
        self.syncfs_cost: float | None = None
        self._declined = 0

    def use_barrier(self, keys: int) -> bool:
        if self.mode != "auto":
            return self.mode == "syncfs"
        if keys < self.MIN_BATCH:
            return False
        if self.syncfs_cost is None or self.per_key_barrier is None:
            return True
        if keys * self.per_key_barrier + self.syncfs_cost < keys * self.per_key_fsync:
            return True
        self._declined += 1
        if self._declined >= self.REPROBE:
            self._declined = 0
            return True
        return False

    def fsynced(self, seconds: float, keys: int) -> None:
        """A durable batch of ``keys`` written with per-file fsyncs took ``seconds``."""
        if keys:
            self.per_key_fsync += self.ALPHA * (seconds / keys - self.per_key_fsync)

    def barriered(self, seconds: float, syncfs_seconds: float, keys: int) -> None:
        """A durable batch written with the barrier took ``seconds``, its syncfs calls part."""
        per_key = max(0.0, seconds - syncfs_seconds) / max(1, keys)
        if self.syncfs_cost is None or self.per_key_barrier is None:
            self.syncfs_cost, self.per_key_barrier = syncfs_seconds, per_key
            return
        self.syncfs_cost += self.ALPHA * (syncfs_seconds - self.syncfs_cost)
        self.per_key_barrier += self.ALPHA * (per_key - self.per_key_barrier)
