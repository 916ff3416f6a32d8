"""Storage backends: the public protocol, the directory store and the legacy JSON file.

Hand any of them, or your own implementation of :class:`Backend`, to
:func:`aiosessions.open_store`::

    from aiosessions.backends import DirectoryBackend

    async with open_store(DirectoryBackend("state/sessions.json", lock_timeout=5)) as store:
        ...
"""

from __future__ import annotations

from ._base import Backend as Backend
from ._base import BatchResult as BatchResult
from ._base import Write as Write
from ._directory import DirectoryBackend as DirectoryBackend
from ._json import JsonBackend as JsonBackend

__all__ = ["Backend", "BatchResult", "DirectoryBackend", "JsonBackend", "Write"]
