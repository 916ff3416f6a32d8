"""``python -m aiosessions``: the same command line as the ``aiosessions`` script."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main())
