"""Redis tests outside an asyncio test: the recency code's order, and trio."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiosessions import open_store
from aiosessions.backends._redis import decode_member, recency_code

recency = st.one_of(st.none(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70))
keys = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8
)


@given(st.lists(st.tuples(recency, keys), min_size=1, max_size=30))
def test_the_recency_code_sorts_newest_first_then_by_key(pairs: list[tuple[int | None, str]]) -> None:
    members = sorted({recency_code(at) + key.encode() for at, key in pairs})
    decoded = [decode_member(member) for member in members]
    assert decoded == sorted(
        {(key, at) for at, key in pairs}, key=lambda pair: (pair[1] is None, -(pair[1] or 0), pair[0])
    )


def test_trio_is_refused_at_once_with_a_clear_error(redis_url: str) -> None:
    async def main() -> None:
        async with open_store(redis_url):
            pass

    with pytest.raises(RuntimeError, match="asyncio only"):
        anyio.run(main, backend="trio")


def test_import_aiosessions_does_not_import_redis() -> None:
    import subprocess
    import sys

    code = (
        "import sys, aiosessions, aiosessions.backends; "
        "assert not [m for m in sys.modules if m == 'redis' or m.startswith('redis.')], 'redis imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
