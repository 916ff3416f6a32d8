"""Storage backends: the public protocol, the directory store and the legacy JSON file.

Hand any of them, or your own implementation of :class:`Backend`, to
:func:`aiosessions.open_store`::

    from aiosessions.backends import DirectoryBackend

    async with open_store(DirectoryBackend("state/sessions.json", lock_timeout=5)) as store:
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._base import Backend as Backend
from ._base import BatchResult as BatchResult
from ._base import Write as Write
from ._directory import DirectoryBackend as DirectoryBackend
from ._json import JsonBackend as JsonBackend

if _TYPE_CHECKING:  # for type checkers and the API reference; at run time, see __getattr__
    from ._redis import RedisBackend as RedisBackend

# RedisBackend is public too, but imported on first use (below): `import aiosessions`
# must not import redis-py, which is an optional extra. It is left out of __all__ so
# that `from aiosessions.backends import *` does not need it either.
__all__ = ["Backend", "BatchResult", "DirectoryBackend", "JsonBackend", "Write"]


def __getattr__(name: str) -> _Any:
    if name == "RedisBackend":
        from ._redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
