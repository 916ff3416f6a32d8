"""Storage backends: one protocol, a directory-per-session store and the legacy JSON file."""

from __future__ import annotations

from ._base import Backend as Backend
from ._base import BatchResult as BatchResult
from ._base import Write as Write
from ._directory import DirectoryBackend as DirectoryBackend
from ._json import JsonBackend as JsonBackend

__all__ = ["Backend", "BatchResult", "DirectoryBackend", "JsonBackend", "Write"]
