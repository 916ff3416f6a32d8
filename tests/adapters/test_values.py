"""The value codec of the bot adapters: what is kept exactly, and what is refused clearly."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiosessions.adapters._values import UnsupportedValueError, ValueCodec

CODEC = ValueCodec()


def through_json(value: Any) -> Any:
    """Encode, write as JSON bytes (as the store does), read back, decode."""
    return CODEC.decode(msgspec.json.decode(msgspec.json.encode(CODEC.encode(value, "value"))))


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (== alone says 1 == 1.0 == True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes(timezones=st.none() | st.just(dt.timezone.utc) | st.timezones())
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
)
hashable = st.recursive(
    scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=4
)
values = st.recursive(
    scalars | hashable,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(), inner, max_size=4)
        | st.dictionaries(hashable, inner, max_size=4)
        | st.sets(hashable, max_size=4)
    ),
    max_leaves=8,
)


@given(values)
def test_values_come_back_equal_and_of_the_same_types(value: Any) -> None:
    assert same(through_json(value), value)


def test_the_documented_forms_are_readable_json() -> None:
    assert CODEC.encode({"a": [1, "x", None, True, 1.5]}, "v") == {"a": [1, "x", None, True, 1.5]}
    assert CODEC.encode((1, 2), "v") == {"$tuple": [1, 2]}
    assert CODEC.encode({1: "a"}, "v") == {"$dict": [[1, "a"]]}
    assert CODEC.encode({"$tuple": 1}, "v") == {"$dict": [["$tuple", 1]]}
    assert CODEC.encode({"b", "a"}, "v") == {"$set": ["a", "b"]}
    assert CODEC.encode(dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc), "v") == {
        "$datetime": "2024-05-01T12:00:00+00:00"
    }
    berlin = dt.datetime(2024, 10, 27, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=1)
    assert CODEC.encode(berlin, "v") == {"$datetime": ["2024-10-27T02:30:00", "Europe/Berlin", 1]}
    back = through_json(berlin)
    assert (
        back.tzinfo is ZoneInfo("Europe/Berlin") and back.fold == 1 and back.utcoffset() == berlin.utcoffset()
    )
    assert CODEC.encode(float("nan"), "v") == {"$float": "nan"}
    assert CODEC.encode(2**70, "v") == {"$int": str(2**70)}
    assert through_json(decimal.Decimal("1.10")).as_tuple() == decimal.Decimal("1.10").as_tuple()
    assert through_json(bytearray(b"\x00\xff")) == bytearray(b"\x00\xff")
    assert type(through_json(bytearray(b"x"))) is bytearray
    assert through_json(uuid.UUID(int=7)) == uuid.UUID(int=7)


def test_enum_members_are_kept_as_their_values() -> None:
    class State(enum.IntEnum):
        ASKING = 1

    class Color(enum.Enum):
        RED = "red"

    back = through_json({State.ASKING: Color.RED})
    assert back == {1: "red"} and hash(State.ASKING) in {hash(k) for k in back}


def test_sets_are_written_in_one_order_whatever_the_hash_seed() -> None:
    assert (
        CODEC.encode({"b", "c", "a"}, "v") == CODEC.encode({"c", "a", "b"}, "v") == {"$set": ["a", "b", "c"]}
    )


class Custom:
    pass


class Shifting(dt.tzinfo):
    """A zone without a fixed offset that is neither a ZoneInfo nor a datetime.timezone."""

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta | None:
        return None if when is None else dt.timedelta(hours=when.month % 2)


@pytest.mark.parametrize(
    ("value", "where", "kind"),
    [
        ({"cart": [1, Custom()]}, "user_data['cart'][1]", "Custom"),
        ({(1, Custom()): 1}, "user_data key (1, ", "Custom"),
        ({"f": len}, "user_data['f']", "builtin_function_or_method"),
        ({"t": dt.datetime(2024, 1, 1, tzinfo=Shifting())}, "user_data['t']", "datetime"),
    ],
)
def test_what_cannot_be_kept_is_refused_with_where_it_is(value: Any, where: str, kind: str) -> None:
    with pytest.raises(UnsupportedValueError, match=kind) as caught:
        CODEC.encode(value, "user_data")
    assert str(caught.value).startswith(where), caught.value
    assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize("data", [{"$nope": 1}, {"$tuple": 5}, {"$datetime": "yesterday"}])
def test_unknown_or_malformed_tags_raise_value_error(data: Any) -> None:
    with pytest.raises(ValueError, match=r"\$"):
        CODEC.decode(data)
