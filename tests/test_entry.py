"""Entry codecs (aiosessions._entry): every member of a stored entry survives decode -> encode.

Real entries carry fields no schema knows and fields whose type changed between
releases; the codecs must keep both, JSON-equal, through any change to a known field.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import UNSET, UnsetType

from aiosessions import Entry, SessionEntry
from aiosessions._entry import MAX_NESTING, _depth, codec_for, recency_of, storable

SESSION = codec_for(SessionEntry)
DICT = codec_for(dict)
# JSON name -> attribute name of every typed field of SessionEntry.
KNOWN = {f.encode_name: f.name for f in msgspec.structs.fields(SessionEntry) if f.name != "extra"}


class MyEntry(Entry, kw_only=True):
    """A user's own entry type, all fields optional as the Entry docstring advises."""

    name: str | UnsetType = UNSET
    count: int = 0


class Strict(Entry, kw_only=True):
    """A user's entry type with a required field."""

    name: str
    count: int = 0
    when: int = 0


class Frozen(Entry, frozen=True, kw_only=True):  # type: ignore[misc]
    """A user's immutable entry type."""

    name: str | UnsetType = UNSET


class Plain(msgspec.Struct, kw_only=True):
    """A plain msgspec Struct: msgspec's own rules apply."""

    name: str = ""
    count: int = 0


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: like ==, except that true/false never equal 1/0.

    A number equals a number of the same value (``3`` and ``3.0`` are one JSON
    number), so an int written back as a float is fine; an altered value is not.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def roundtrip(codec: Any, member: dict[str, Any]) -> Any:
    """Encode ``member`` as JSON, decode with ``codec``, encode again and parse."""
    return json.loads(codec.encode(codec.decode(json.dumps(member).encode())))


def test_json_equal_tells_booleans_from_numbers() -> None:
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not json_equal({"a": True}, {"a": 1})
    assert not json_equal([0], [False])
    assert not json_equal({"a": 1}, {"a": 1, "b": None})
    assert not json_equal(9007199254740993, 9007199254740992.0)


# -- the OpenClaw fixture -----------------------------------------------------------


def test_fixture_has_the_unknown_fields_it_should(openclaw_sessions: dict[str, Any]) -> None:
    """The fixture must keep exercising unknown members, or the tests below prove less."""
    members = {name for entry in openclaw_sessions.values() for name in entry}
    for name in ("pluginExtensions", "lastInteractionAt", "pinnedAt", "cliSessionIds"):
        assert name in members
        assert name not in KNOWN
    assert any(entry.get("pinnedAt", 0) is None for entry in openclaw_sessions.values())


def test_fixture_entries_roundtrip(openclaw_sessions: dict[str, Any]) -> None:
    assert len(openclaw_sessions) >= 10
    for key, member in openclaw_sessions.items():
        data = json.dumps(member).encode()
        entry = SESSION.decode(data)
        assert isinstance(entry, SessionEntry)
        # Known members are typed attributes, unknown ones are in extra, by JSON name.
        for name, value in member.items():
            if name in KNOWN:
                assert json_equal(msgspec.to_builtins(getattr(entry, KNOWN[name])), value), (key, name)
                assert name not in entry.extra
            else:
                assert json_equal(entry.extra[name], value), (key, name)
        assert set(entry.extra) == set(member) - set(KNOWN)
        assert json_equal(json.loads(SESSION.encode(entry)), member), key
        assert recency_of(data) == member["updatedAt"]
        assert json_equal(roundtrip(DICT, member), member)


def test_changing_a_known_field_keeps_every_other(openclaw_sessions: dict[str, Any]) -> None:
    for key, member in openclaw_sessions.items():
        entry = SESSION.decode(json.dumps(member).encode())
        by_replace = msgspec.structs.replace(entry, updated_at=member["updatedAt"] + 1, model="gpt-x")
        entry.updated_at = member["updatedAt"] + 1
        entry.model = "gpt-x"
        expected = {**member, "updatedAt": member["updatedAt"] + 1, "model": "gpt-x"}
        assert json_equal(json.loads(SESSION.encode(entry)), expected), key
        assert json_equal(json.loads(SESSION.encode(by_replace)), expected), key


def test_setting_none_and_unset() -> None:
    entry = SESSION.decode(b'{"sessionId":"s","label":"x","model":"m","zz":1}')
    entry.label = None
    entry.model = UNSET
    entry.channel = "telegram"
    assert json.loads(SESSION.encode(entry)) == {
        "sessionId": "s",
        "label": None,
        "channel": "telegram",
        "zz": 1,
    }


# -- presence and odd types ---------------------------------------------------------


def test_presence_survives() -> None:
    data = b'{"systemSent":false,"inputTokens":0,"label":null,"abortedLastRun":null,"estimatedCostUsd":0.0}'
    entry = SESSION.decode(data)
    assert entry.system_sent is False
    assert entry.input_tokens == 0
    assert entry.label is None
    assert entry.aborted_last_run is None
    assert entry.estimated_cost_usd == 0.0
    # Absent stays absent: no default appears on the way back.
    assert entry.session_id is UNSET
    assert entry.updated_at is UNSET
    assert entry.model is UNSET
    assert entry.extra == {}
    assert json_equal(json.loads(SESSION.encode(entry)), json.loads(data))
    assert SESSION.encode(SessionEntry()) == b"{}"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("updatedAt", "1700000000000"),
        ("updatedAt", 1700000000000.0),
        ("updatedAt", True),
        ("updatedAt", None),
        ("updatedAt", {"ms": 1}),
        ("inputTokens", 1.5),
        ("inputTokens", "12"),
        ("systemSent", "yes"),
        ("systemSent", 1),
        ("origin", [1, 2]),
        ("lastThreadId", 1.5),
        ("estimatedCostUsd", "0.1"),
        ("estimatedCostUsd", 9007199254740993),  # an int a float cannot hold exactly
        ("estimatedCostUsd", 10**400),
        ("sessionId", 42),
    ],
)
def test_odd_types_survive(name: str, value: Any) -> None:
    member = {"sessionId": "s1", "model": "m", "unknownThing": [1, {"a": None}], name: value}
    data = json.dumps(member).encode()
    entry = SESSION.decode(data)
    attribute = getattr(entry, KNOWN[name])
    if name == "updatedAt" and value is None:
        assert attribute is UNSET  # updated_at is not optional: null is odd
    if name in entry.extra:
        assert attribute is UNSET
        assert type(entry.extra[name]) is type(value) and entry.extra[name] == value
    else:
        pytest.fail(f"{name}={value!r} was taken as {attribute!r}, not kept verbatim")
    # One odd member does not make the others odd.
    if name != "sessionId":
        assert entry.session_id == "s1"
        assert "sessionId" not in entry.extra
    if name != "model":
        assert entry.model == "m"
    assert json_equal(json.loads(SESSION.encode(entry)), member)
    # A change elsewhere keeps the odd value verbatim; setting the field replaces it.
    entry.label = "new"
    assert json_equal(json.loads(SESSION.encode(entry)), {**member, "label": "new"})
    if name == "updatedAt":
        assert recency_of(data) is None
        assert recency_of(SESSION.encode(entry)) is None
        entry.updated_at = 5
        assert json.loads(SESSION.encode(entry))["updatedAt"] == 5
        assert recency_of(SESSION.encode(entry)) == 5


def test_int_for_a_float_field_is_typed() -> None:
    """JavaScript writes 3.0 as 3: that is still a cost, read as a float."""
    entry = SESSION.decode(b'{"estimatedCostUsd":3}')
    assert entry.estimated_cost_usd == 3.0
    assert isinstance(entry.estimated_cost_usd, float)
    assert json.loads(SESSION.encode(entry)) == {"estimatedCostUsd": 3}


def test_recency_of() -> None:
    assert recency_of(b'{"updatedAt":1762503055453,"x":[1]}') == 1762503055453
    assert recency_of(b'{"updatedAt":0}') == 0
    assert recency_of(b'{"x":1}') is None
    assert recency_of(b"{}") is None
    assert recency_of(b'{"updatedAt":false}') is None
    assert recency_of(b'{"updatedAt":1.5}') is None
    assert recency_of(b'{"updatedAt":null}') is None


def test_a_member_named_extra_is_kept() -> None:
    values: list[Any] = [{"a": 1}, 5, None, "x", []]
    for value in values:
        member = {"sessionId": "s", "extra": value, "other": 1}
        entry = SESSION.decode(json.dumps(member).encode())
        assert entry.extra == {"extra": value, "other": 1}
        assert json_equal(json.loads(SESSION.encode(entry)), member)


# -- other entry types ----------------------------------------------------------------


def test_user_entry_subclass_keeps_unknown_and_odd_members() -> None:
    codec = codec_for(MyEntry)
    member = {"name": "n", "count": 3, "zz": {"deep": [1, 2]}, "extra": 1}
    entry = codec.decode(json.dumps(member).encode())
    assert isinstance(entry, MyEntry)
    assert (entry.name, entry.count) == ("n", 3)
    assert entry.extra == {"zz": {"deep": [1, 2]}, "extra": 1}
    entry.count = 4
    assert json_equal(json.loads(codec.encode(entry)), {**member, "count": 4})
    odd = codec.decode(b'{"name":"n","count":"three"}')
    assert (odd.name, odd.count, odd.extra) == ("n", 0, {"count": "three"})
    # count reads its default, 0, yet the odd value is what is written back ...
    assert json.loads(codec.encode(odd)) == {"name": "n", "count": "three"}
    odd.name = "m"
    assert json.loads(codec.encode(odd)) == {"name": "m", "count": "three"}
    # ... until the field is given a value of its own.
    odd.count = 4
    assert json.loads(codec.encode(odd)) == {"name": "m", "count": 4}
    # A field left at a non-UNSET default is written: it is a value, not an absence.
    assert json.loads(codec.encode(MyEntry())) == {"count": 0}


def test_entry_subclass_with_a_required_field() -> None:
    codec = codec_for(Strict)
    entry = codec.decode(b'{"name":"n","count":5,"when":"odd","zz":1}')
    # The odd member does not push the good ones into extra.
    assert (entry.name, entry.count, entry.when) == ("n", 5, 0)
    assert entry.extra == {"when": "odd", "zz": 1}
    assert json.loads(codec.encode(entry)) == {"name": "n", "count": 5, "when": "odd", "zz": 1}
    replaced = msgspec.structs.replace(entry, when=7)
    assert json.loads(codec.encode(replaced)) == {"name": "n", "count": 5, "when": 7, "zz": 1}
    with pytest.raises(msgspec.ValidationError, match="name"):
        codec.decode(b'{"count":5}')
    with pytest.raises(msgspec.ValidationError, match="name"):
        codec.decode(b'{"name":1}')


def test_frozen_entry_subclass() -> None:
    codec = codec_for(Frozen)
    entry = codec.decode(b'{"name":"n","zz":[1],"other":null}')
    assert entry.name == "n" and entry.extra == {"zz": [1], "other": None}
    changed = msgspec.structs.replace(entry, name="m")
    assert json.loads(codec.encode(changed)) == {"name": "m", "zz": [1], "other": None}


def test_plain_struct_codec_follows_msgspec() -> None:
    codec = codec_for(Plain)
    entry = codec.decode(b'{"name":"a","count":1,"zz":2}')
    assert entry == Plain(name="a", count=1)
    assert json.loads(codec.encode(entry)) == {"name": "a", "count": 1}
    with pytest.raises(msgspec.ValidationError):
        codec.decode(b'{"count":"one"}')


def test_dict_codec() -> None:
    assert DICT.entry_type is dict
    member = {"a": [1, 2.5, None, True], "b": {"c": "é"}, "extra": 1}
    assert json_equal(roundtrip(DICT, member), member)


def test_codec_for_is_cached() -> None:
    assert codec_for(SessionEntry) is SESSION
    assert codec_for(dict) is DICT
    assert codec_for(Plain) is codec_for(Plain)
    assert SESSION.entry_type is SessionEntry


@pytest.mark.parametrize("entry_type", [int, str, list, object, None, "SessionEntry", Exception])
def test_codec_for_rejects_other_types(entry_type: Any) -> None:
    with pytest.raises(TypeError):
        codec_for(entry_type)


@pytest.mark.parametrize(
    ("entry_type", "value"),
    [
        (SessionEntry, {"sessionId": "s"}),
        (SessionEntry, MyEntry()),
        (SessionEntry, None),
        (MyEntry, SessionEntry()),
        (Plain, {"name": "a"}),
        (Plain, SessionEntry()),
        (dict, SessionEntry()),
        (dict, [1, 2]),
        (dict, "x"),
    ],
)
def test_encoding_a_wrong_type_raises_type_error(entry_type: Any, value: Any) -> None:
    with pytest.raises(TypeError):
        codec_for(entry_type).encode(value)


@pytest.mark.parametrize("entry_type", [SessionEntry, MyEntry, Plain, dict])
@pytest.mark.parametrize(
    "data", [b"[]", b"[{}]", b'"text"', b"1", b"1.5", b"null", b"true", b"\xff\xfe", b"", b"{", b'{"a":1}x']
)
def test_non_object_json_is_a_decode_error(entry_type: Any, data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        codec_for(entry_type).decode(data)
    with pytest.raises(msgspec.DecodeError):
        recency_of(data)


# -- arbitrary JSON objects ---------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Member names: SessionEntry's own (so typed fields meet values of every type), "extra", anything.
MEMBER_NAMES = st.sampled_from([*KNOWN, "extra"]) | st.text(max_size=12)
JSON_OBJECTS = st.dictionaries(MEMBER_NAMES, JSON_VALUES, max_size=12)


@settings(max_examples=300, deadline=None)
@given(JSON_OBJECTS)
def test_arbitrary_objects_roundtrip(member: dict[str, Any]) -> None:
    assert json_equal(roundtrip(SESSION, member), member)
    assert json_equal(roundtrip(DICT, member), member)


@settings(max_examples=100, deadline=None)
@given(JSON_OBJECTS, st.integers(0, 2**53), st.text(max_size=8))
def test_arbitrary_objects_survive_a_change(member: dict[str, Any], updated: int, model: str) -> None:
    entry = msgspec.structs.replace(SESSION.decode(json.dumps(member).encode()), updated_at=updated)
    entry.model = model
    expected = {**member, "updatedAt": updated, "model": model}
    assert json_equal(json.loads(SESSION.encode(entry)), expected)
    assert recency_of(SESSION.encode(entry)) == updated


# -- storable(): the nesting check ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab\n\u00e9'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[{"\\k'), inner, max_size=3)
    ),
    max_leaves=40,
)


def reference_depth(value: Any) -> int:
    """The nesting of a Python value, counted on the value itself."""
    if isinstance(value, list):
        return 1 + max(map(reference_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(reference_depth, value.values()), default=0)
    return 0


@given(json_values)
def test_depth_counts_levels_not_brackets_in_strings(value: Any) -> None:
    assert _depth(msgspec.json.encode(value)) == reference_depth(value)


@pytest.mark.parametrize("torn", [b"[" * 300, b"]" * 300 + b"[" * 300, b'{"a":[' * 200 + b"}" * 150])
def test_storable_of_torn_json_returns(torn: bytes) -> None:
    """A cut-short meta.json (unbalanced brackets) is answered, not looped over."""
    storable(torn + b'"' + b"x" * 600, 1 << 30)


@pytest.mark.parametrize("levels", [MAX_NESTING - 1, MAX_NESTING, MAX_NESTING + 1, 1000])
def test_storable_refuses_only_entries_nested_too_deep(levels: int) -> None:
    inner = levels - 1  # the entry's own object is a level
    deep = '{"[{":' * (inner // 2) + "[" * (inner - inner // 2) + "1" + "]" * (inner - inner // 2)
    data = b'{"prose":"' + b"[{" * 2000 + b'","deep":' + (deep + "}" * (inner // 2)).encode() + b"}"
    problem = storable(data, 1 << 30)
    if levels <= MAX_NESTING:
        assert problem is None
    else:
        assert problem is not None and f"nests {levels} levels" in problem
