"""What a store target names: a Redis URL, or else a file path (or a backend object).

One place decides, so ``open_store``, ``copy_store`` and the command line agree; the
Redis backend is imported only when a URL asks for it (``import aiosessions`` needs
no redis client).
"""

from __future__ import annotations

import importlib
from typing import Any

from .backends._base import Backend

__all__ = ["is_redis_url", "redis_backend"]


def is_redis_url(target: object) -> bool:
    """Whether ``target`` is a URL the Redis backend opens (``redis://``, ``rediss://``, ``unix://``)."""
    return isinstance(target, str) and target.split("://", 1)[0].lower() in ("redis", "rediss", "unix")


def redis_backend(url: str, **options: Any) -> Backend:
    """The (unopened) Redis backend for ``url``; a clear ImportError without the redis extra."""
    try:
        module = importlib.import_module("aiosessions.backends._redis")
    except ImportError as exc:
        shown = url.split("@")[-1]  # never show a password
        raise ImportError(
            f'opening {shown!r} needs the Redis backend: pip install "aiosessions[redis]"'
        ) from exc
    backend: Backend = module.RedisBackend.from_url(url, **options)
    return backend
