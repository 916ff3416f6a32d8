"""The exceptions raised by aiosessions.

Every error the library raises on purpose derives from one root, so ``except
SessionStoreError`` catches them all; where an error resembles a builtin it
subclasses that builtin too::

    SessionStoreError
    ├── InvalidKeyError        (also ValueError)   a key that cannot name a session
    ├── InvalidEntryError      (also ValueError)   an entry the store could not give back
    ├── CorruptSessionError                        a stored entry that does not decode; says where
    ├── StoreFormatError                           not a store, or a store of another format/version
    ├── StoreClosedError                           the store was used after aclose()
    ├── LockTimeoutError       (also TimeoutError) a cross-process lock was not acquired in time
    ├── MigrationError                             migrate() refused or failed; nothing was lost
    └── StoreIOError           (also OSError)      the storage (a disk or a server) failed; says where
        └── FlushError                             queued changes could not be written; lists the keys

Errors raised because of another exception are raised ``from`` it, so the
original cause stays in the traceback.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Mapping

__all__ = [
    "CorruptSessionError",
    "FlushError",
    "InvalidEntryError",
    "InvalidKeyError",
    "LockTimeoutError",
    "MigrationError",
    "SessionStoreError",
    "StoreClosedError",
    "StoreFormatError",
    "StoreIOError",
]


class SessionStoreError(Exception):
    """The root of every error aiosessions raises on purpose."""


class InvalidKeyError(SessionStoreError, ValueError):
    """A session key the store cannot accept: not a str, empty, NUL, a lone surrogate, or too long."""

    def __init__(self, key: object, problem: str) -> None:
        self.key = key
        self.problem = problem
        shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
        super().__init__(f"invalid session key {shown}: {problem}")


class InvalidEntryError(SessionStoreError, ValueError):
    """An entry the store refuses because it could not give it back: too large, nested too deep.

    Raised by ``set()`` and ``update()`` before anything is written.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"the entry for session {key!r} was not stored: {problem}")


class CorruptSessionError(SessionStoreError):
    """A stored entry (or file) could not be decoded; only the session it holds is affected.

    ``where`` says where it is stored: a file's path, or a server and key; ``path``
    is the same value under its 0.1 name. ``key`` names the session when known.
    """

    def __init__(
        self, message: str, *, where: str | None = None, key: str | None = None, path: str | None = None
    ) -> None:
        self.where: str = where if where is not None else (path or "")
        self.key = key
        super().__init__(message)

    @property
    def path(self) -> str:
        """The same as :attr:`where` (its name in 0.1, when every store was a file)."""
        return self.where


class StoreFormatError(SessionStoreError):
    """A path that is not an aiosessions store of a format and version this release reads."""


class StoreClosedError(SessionStoreError):
    """The store was used after it was closed."""


class LockTimeoutError(SessionStoreError, TimeoutError):
    """A cross-process lock was held by someone else for longer than the timeout."""


class MigrationError(SessionStoreError):
    """Migration refused or failed; the legacy file is still authoritative.

    ``problems`` maps each key that could not be migrated to the reason.
    """

    def __init__(self, message: str, *, problems: Mapping[str, str] | None = None) -> None:
        self.problems: dict[str, str] = dict(problems or {})
        super().__init__(message)


class StoreIOError(SessionStoreError, OSError):
    """The storage failed: a disk (full, I/O error, permission...) or a server (down, refused).

    ``where`` names the file or server; ``errno`` and ``filename`` are those of the
    underlying :class:`OSError` when a file is involved (``errno`` is EIO for a
    file error without one, None for a server); ``key`` names the session when
    there is one.
    """

    def __init__(
        self,
        err: int | None,
        message: str,
        filename: str | None = None,
        *,
        key: str | None = None,
        where: str | None = None,
    ) -> None:
        if err is None and where is None:
            err = _errno.EIO
        super().__init__(err, message, filename)
        self.key = key
        self.where = where if where is not None else filename

    def __str__(self) -> str:
        text = str(self.strerror)
        if self.filename is not None and str(self.filename) not in text:
            text = f"{text}: {self.filename}"
        return text


class FlushError(StoreIOError):
    """Queued changes could not be written to disk; they are kept and retried.

    ``failures`` maps each key that failed to the exception of its last attempt;
    ``unwritten`` counts every change still waiting.
    """

    def __init__(self, message: str, *, failures: Mapping[str, BaseException], unwritten: int) -> None:
        self.failures: dict[str, BaseException] = dict(failures)
        self.unwritten = unwritten
        first = next(iter(self.failures.values()), None)
        err = first.errno if isinstance(first, OSError) else None
        filename = first.filename if isinstance(first, OSError) else None
        super().__init__(err, message, filename, where=getattr(first, "where", None))


def io_error(exc: OSError, action: str, *, key: str | None = None, path: str | None = None) -> StoreIOError:
    """Translate an OSError at the library boundary into a StoreIOError naming file and key.

    ``path`` is the absolute path the failed step worked on (a session's ``meta.json``,
    the store file): errors of calls on a descriptor (write, fsync, flock) carry no file
    name at all, and calls relative to a folder descriptor carry only the relative name,
    which is shown beside it.
    """
    if isinstance(exc, StoreIOError):
        return exc
    what = f"{action} failed"
    if key is not None:
        what += f" for session {key!r}"
    reason = exc.strerror or exc.__class__.__name__
    filename = exc.filename if isinstance(exc.filename, str) else None
    if path is not None and (filename is None or not filename.startswith("/")):
        if filename is not None and filename != path:
            reason += f" (at {filename})"
        filename = path
    message = f"{what}: {reason}" + (f": {filename}" if filename else "")
    error = StoreIOError(exc.errno, message, filename, key=key)
    # Many of these are returned in a batch result and raised later, away from the
    # `except`: the cause is attached here, not left to `raise ... from`.
    error.__cause__ = exc
    return error
