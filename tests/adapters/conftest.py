"""Fixtures of the adapters' tests: each runs on every backend the store has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aiosessions.adapters._common import StoreHandle


class Place:
    """Where one test's store lives: ``target`` and ``options`` as ``open_store`` takes them."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.path = tmp_path / "sessions.json"
        self.target: Any = self.path
        self.options: dict[str, Any] = {"fsync": False}
        if backend == "json":
            self.options["mode"] = "json"

    def handle(self, **options: Any) -> StoreHandle:
        """A handle that opens this place's store on first use."""
        return StoreHandle(self.target, what="a test", options={**self.options, **options})


@pytest.fixture(params=["directory", "json"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    return Place(str(request.param), tmp_path)
