"""aiosessions: an async store for chat-bot session metadata, one folder per session.

::

    async with aiosessions.open_store("state/sessions.json") as store:
        await store.set("agent:main:telegram:direct:42", SessionEntry(session_id="s1"))
        entry = await store.get("agent:main:telegram:direct:42")
"""

from __future__ import annotations

from ._copy import CopyReport as CopyReport
from ._copy import copy_store as copy_store
from ._entry import Entry as Entry
from ._entry import SessionEntry as SessionEntry
from ._errors import CorruptSessionError as CorruptSessionError
from ._errors import FlushError as FlushError
from ._errors import InvalidEntryError as InvalidEntryError
from ._errors import InvalidKeyError as InvalidKeyError
from ._errors import LockTimeoutError as LockTimeoutError
from ._errors import MigrationError as MigrationError
from ._errors import SessionStoreError as SessionStoreError
from ._errors import StoreClosedError as StoreClosedError
from ._errors import StoreFormatError as StoreFormatError
from ._errors import StoreIOError as StoreIOError
from ._fs import FileSystem as FileSystem
from ._maintenance import FsckProblem as FsckProblem
from ._maintenance import FsckReport as FsckReport
from ._maintenance import PruneReport as PruneReport
from ._maintenance import fsck as fsck
from ._maintenance import prune as prune
from ._migrate import MigrationReport as MigrationReport
from ._migrate import export_json as export_json
from ._migrate import migrate as migrate
from ._store import DELETE as DELETE
from ._store import SessionStore as SessionStore
from ._store import open_store as open_store
from ._writebehind import StoreStatistics as StoreStatistics

__version__ = "0.1.0"

__all__ = [
    "CopyReport",
    "CorruptSessionError",
    "DELETE",
    "Entry",
    "FileSystem",
    "FlushError",
    "FsckProblem",
    "FsckReport",
    "InvalidEntryError",
    "InvalidKeyError",
    "LockTimeoutError",
    "MigrationError",
    "MigrationReport",
    "PruneReport",
    "SessionEntry",
    "SessionStore",
    "SessionStoreError",
    "StoreClosedError",
    "StoreFormatError",
    "StoreIOError",
    "StoreStatistics",
    "copy_store",
    "export_json",
    "fsck",
    "migrate",
    "open_store",
    "prune",
]
