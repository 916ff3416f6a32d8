"""Splitting an entry into a small meta.json and content-addressed blobs, and joining it back:
byte for byte, member order kept, small entries and non-objects untouched."""

from __future__ import annotations

import hashlib
import json
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessions._bench import generate_sessions, sized_sessions
from aiosessions._parts import (
    BLOB_MIN,
    ENTRY_MIN,
    PARTS,
    join,
    join_members,
    references,
    split,
    split_members,
    views,
)
from aiosessions._parts import members as slices_of

encode = msgspec.json.encode


def test_a_large_entry_keeps_its_small_members_in_meta_and_joins_back_byte_for_byte() -> None:
    for key, entry in sized_sessions(20, 121_000, seed=3).items():
        data = encode(entry)
        meta, blobs = split(data)
        assert len(meta) < 3_000, key  # only the fields that change
        assert {hashlib.sha256(b).hexdigest() for b in blobs.values()} == set(blobs)
        assert join(meta, blobs) == data
        names = [name for name, _, _ in references(meta) or []]
        assert "skillsSnapshot" in names
        whole = json.loads(meta)
        assert whole["updatedAt"] == entry["updatedAt"] and "skillsSnapshot" not in whole


def test_small_entries_and_non_objects_stay_whole() -> None:
    for entry in generate_sessions(50, seed=4, blob_fraction=0).values():
        data = encode(entry)
        if len(data) < ENTRY_MIN:
            assert split(data) == (data, {})
            assert references(data) is None and join(data, {}) == data
    array = encode([1, "x" * ENTRY_MIN])
    assert split(array) == (array, {})


def test_an_entrys_own_parts_member_is_always_stored_apart() -> None:
    data = encode({"a": 1, PARTS: [["x", 0, "0" * 64]], "b": 2})
    meta, blobs = split(data)
    assert list(blobs.values()) == [b'[["x",0,"' + b"0" * 64 + b'"]]']
    assert json.loads(meta)[PARTS] == [[PARTS, 1, next(iter(blobs))]]
    assert join(meta, blobs) == data
    joined = join_members(meta, blobs)[1]
    assert joined is not None and list(joined) == ["a", PARTS, "b"] and joined == slices_of(data)


def test_a_missing_blob_is_an_error_naming_it() -> None:
    data = encode({"a": "x" * BLOB_MIN * 2, "b": 1})
    meta, blobs = split(data)
    with pytest.raises(KeyError) as caught:
        join(meta, {})
    assert caught.value.args[0] == next(iter(blobs))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8), st.randoms(use_true_random=False))
def test_any_object_joins_back_to_the_same_bytes(members: dict[str, object], rng: random.Random) -> None:
    # Make some members large enough to be split, at random positions.
    for name in list(members):
        if rng.random() < 0.4:
            members[name] = "y" * rng.randrange(BLOB_MIN, 3 * BLOB_MIN)
    data = encode(members)
    meta, blobs = split(data)
    assert join(meta, blobs) == data
    # The members found from meta.json and the blobs are the whole entry's, in its order.
    joined = join_members(meta, blobs)[1]
    if meta == data:
        assert joined is None
    else:
        assert joined is not None
        assert list(joined) == list(members) and joined == slices_of(data)
    if len(data) < ENTRY_MIN and PARTS not in members:
        assert meta == data
    # Given the members (as update_members() hands them over), the split is the same.
    given = split_members(data, slices=slices_of(data))
    assert given[:2] == (meta, blobs)
    # The members found are slices of the entry itself, whoever's slices it was given.
    assert views(data, dict(slices_of(data))) == slices_of(data)
    if given[2] is not None:
        assert given[2].members == slices_of(data)


def test_a_member_that_is_the_slice_stored_last_is_taken_without_a_copy_or_a_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode({"a": 1, "big": "x" * BLOB_MIN, "other": "y" * BLOB_MIN})
    _, blobs, pieces = split_members(data)
    assert pieces is not None
    digests = dict(pieces.named)
    last = {name: (digests[name], blobs[digests[name]], pieces.members[name]) for name in digests}
    changed = dict(pieces.members)
    changed["a"] = msgspec.Raw(b"2")
    new = msgspec.json.encode(changed)
    hashed: list[int] = []
    monkeypatch.setattr(hashlib, "sha256", lambda b: hashed.append(len(b)) or hashlib.new("sha256", b))
    new_meta, new_blobs, _ = split_members(new, last, changed)
    assert hashed == []
    assert all(new_blobs[digest] is blobs[digest] for digest in digests.values())
    assert (new_meta, new_blobs) == split(new)
    hashed.clear()
    # Equal bytes in another slice are compared, not hashed; other bytes are hashed.
    changed["big"] = msgspec.Raw(b'"' + b"x" * BLOB_MIN + b'"')
    changed["other"] = msgspec.Raw(b'"' + b"z" * BLOB_MIN + b'"')
    assert digests["big"] in split_members(msgspec.json.encode(changed), last, changed)[1]
    assert hashed == [BLOB_MIN + 2]


def test_members_whose_lengths_are_not_the_entrys_are_not_trusted() -> None:
    data = encode({"a": 1, "big": "x" * BLOB_MIN, "other": "y" * ENTRY_MIN})
    wrong = slices_of(encode({"a": 22, "big": "x" * BLOB_MIN, "other": "y" * ENTRY_MIN}))
    with pytest.raises(ValueError, match="not the encoding"):
        views(data, wrong)
    with pytest.raises(ValueError, match="not the encoding"):
        views(b"[" + data[1:], slices_of(data))
    assert views(b"{}", {}) == {}
    meta, blobs, pieces = split_members(data, slices=wrong)
    assert (meta, blobs) == split(data) and pieces is not None
    assert pieces.members == slices_of(data)  # data was scanned
