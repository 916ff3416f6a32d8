"""Entries: the typed ``SessionEntry`` and the codecs that keep every byte of meaning.

Real entries carry far more fields than any schema knows, and fields change type
between releases. A codec therefore decodes a ``meta.json`` in two steps: the
JSON object first, then the fields the type knows. Fields it does not know, and
known fields whose value has an unexpected type, go to the entry's ``extra``
dict verbatim; encoding merges them back, so decode -> change -> encode never
loses or alters data the program did not touch.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar, Union, cast

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "DECODE_ERRORS",
    "MAX_NESTING",
    "Codec",
    "Entry",
    "SessionEntry",
    "codec_for",
    "recency_of",
    "storable",
]

T = TypeVar("T")

#: What msgspec raises for bytes that are not what was expected: ``DecodeError`` (and its
#: ``ValidationError``), but also ``UnicodeDecodeError`` for invalid UTF-8 inside a string and
#: ``RecursionError`` for JSON nested deeper than about a thousand levels (both found by
#: fuzzing). Every decode of bytes read from disk catches all three.
DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class Entry(msgspec.Struct, kw_only=True):
    """Base class for entry types that keep unknown and oddly typed fields.

    Subclass it (with defaults, ideally ``UNSET``, on every field, so that any
    JSON object decodes) to get the field-keeping codec for your own type.
    ``extra`` holds every JSON member the typed fields did not take, by its JSON
    name; a typed field that is set wins over a member of ``extra`` with the
    same JSON name. A field that holds its default (which is what an oddly typed
    member leaves it at) is not "set": the member in ``extra`` is written instead,
    so set such a field to another value, or pop the member from ``extra``, to
    replace an odd value.
    """

    #: Every JSON member no typed field took (unknown ones, and oddly typed values of known
    #: ones), by JSON name, written back verbatim.
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class SessionEntry(Entry, rename="camel", kw_only=True):
    """One session's metadata, shaped like an entry of OpenClaw's ``sessions.json``.

    Every field is optional and defaults to ``UNSET``: an absent field stays
    absent when written back, a present one is written back even when it is
    ``False``, ``0`` or ``None``. JSON names are camelCase (``updated_at`` is
    ``updatedAt``).
    """

    #: The gateway's id of the conversation (its transcript is named after it).
    session_id: str | UnsetType = UNSET
    #: Epoch milliseconds of the last change; what recency, ``ls`` and ``prune`` use.
    updated_at: int | UnsetType = UNSET
    #: The transcript file of the session, e.g. ``<sessionId>.jsonl``.
    session_file: str | UnsetType | None = UNSET
    #: The chat platform: ``telegram``, ``slack``, ``signal``, ``discord``, ``matrix`` ...
    channel: str | UnsetType | None = UNSET
    #: ``direct``, ``group`` or ``channel``.
    chat_type: str | UnsetType | None = UNSET
    #: A name to show for the session (the peer's or the group's).
    display_name: str | UnsetType | None = UNSET
    #: A label the operator gave the session.
    label: str | UnsetType | None = UNSET
    #: The model that answers, e.g. ``claude-opus-4-6``.
    model: str | UnsetType | None = UNSET
    #: Who serves the model, e.g. ``anthropic``.
    model_provider: str | UnsetType | None = UNSET
    #: Tokens sent to the model so far.
    input_tokens: int | UnsetType | None = UNSET
    #: Tokens the model produced so far.
    output_tokens: int | UnsetType | None = UNSET
    #: Tokens of the session so far (what ``aiosessions ls`` shows).
    total_tokens: int | UnsetType | None = UNSET
    #: Whether ``total_tokens`` is up to date.
    total_tokens_fresh: bool | UnsetType | None = UNSET
    #: The size of the model's context window, in tokens.
    context_tokens: int | UnsetType | None = UNSET
    #: Prompt-cache tokens read.
    cache_read: int | UnsetType | None = UNSET
    #: Prompt-cache tokens written.
    cache_write: int | UnsetType | None = UNSET
    #: The estimated cost of the session so far, in US dollars.
    estimated_cost_usd: float | UnsetType | None = UNSET
    #: How many times the transcript was compacted.
    compaction_count: int | UnsetType | None = UNSET
    #: The channel of the last reply.
    last_channel: str | UnsetType | None = UNSET
    #: The recipient of the last reply.
    last_to: str | UnsetType | None = UNSET
    #: The account the last reply was sent from.
    last_account_id: str | UnsetType | None = UNSET
    #: The thread or topic of the last reply.
    last_thread_id: str | int | UnsetType | None = UNSET
    #: Where the session started (provider, surface, chat type, from, to, account), as an object.
    origin: dict[str, Any] | UnsetType | None = UNSET
    #: Where replies are delivered (channel, to, account), as an object.
    delivery_context: dict[str, Any] | UnsetType | None = UNSET
    #: Whether the last run of the agent was aborted.
    aborted_last_run: bool | UnsetType | None = UNSET
    #: Whether the system prompt has been sent.
    system_sent: bool | UnsetType | None = UNSET
    #: The reasoning effort asked of the model: ``off``, ``low``, ``medium``, ``high``.
    thinking_level: str | UnsetType | None = UNSET


class Codec(Generic[T]):
    """Turns one entry type into JSON bytes and back; built once per type."""

    entry_type: type[T]
    #: Whether every JSON object decodes as an entry (plain dicts, and Entry types, which
    #: keep what does not fit in ``extra``); a plain Struct's required or typed fields may not.
    decodes_any_object: bool = True

    def decode(self, data: bytes) -> T:
        """Decode one entry. :raises msgspec.DecodeError: not an entry of this type."""
        raise NotImplementedError

    def encode(self, value: T) -> bytes:
        """Encode one entry as compact JSON. :raises TypeError: not encodable."""
        raise NotImplementedError


class _DictCodec(Codec[dict[str, Any]]):
    def __init__(self) -> None:
        self.entry_type = dict
        self._decoder = msgspec.json.Decoder(dict[str, Any])
        self._encoder = msgspec.json.Encoder()

    def decode(self, data: bytes) -> dict[str, Any]:
        return self._decoder.decode(data)

    def encode(self, value: dict[str, Any]) -> bytes:
        if not isinstance(value, dict):
            raise TypeError(f"this store holds dict entries, not {type(value).__name__}")
        return self._encoder.encode(value)


class _StructCodec(Codec[T]):
    """A plain msgspec Struct: msgspec's own rules (unknown fields are dropped)."""

    decodes_any_object = False

    def __init__(self, entry_type: type[T]) -> None:
        self.entry_type = entry_type
        self._decoder = msgspec.json.Decoder(entry_type)
        self._encoder = msgspec.json.Encoder()

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)

    def encode(self, value: T) -> bytes:
        if not isinstance(value, self.entry_type):
            raise TypeError(
                f"this store holds {self.entry_type.__name__} entries, not {type(value).__name__}"
            )
        return self._encoder.encode(value)


class _EntryCodec(Codec[T]):
    """An :class:`Entry` subclass: unknown and oddly typed members kept in ``extra``."""

    def __init__(self, entry_type: type[T]) -> None:
        self.entry_type = entry_type
        fields = msgspec.structs.fields(cast(Any, entry_type))
        self._extra_name = next(f.encode_name for f in fields if f.name == "extra")
        # The JSON member named like the extra field itself is just another unknown member.
        self._known = frozenset(f.encode_name for f in fields if f.name != "extra")
        # msgspec turns an int into a float for a float field; one beyond 2**53 would
        # come back altered, so such a member is kept verbatim in extra instead.
        self._float_only = frozenset(f.encode_name for f in fields if _float_only(f.type))
        self._probe = _probe_type(entry_type, fields)
        # JSON name -> (attribute, default) of fields whose default is a value: such a
        # field reads its default when its member was odd, and must not overwrite it.
        self._defaults = {
            f.encode_name: (
                f.name,
                f.default if f.default_factory is msgspec.NODEFAULT else f.default_factory(),
            )
            for f in fields
            if f.name != "extra" and not f.required and f.default is not UNSET
        }
        self._object = msgspec.json.Decoder(dict[str, Any])
        self._encoder = msgspec.json.Encoder()

    def decode(self, data: bytes) -> T:
        members = self._object.decode(data)
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in members.items():
            (known if name in self._known else extra)[name] = value
        for name in self._float_only:
            value = known.get(name)
            if type(value) is int and not _exact_float(value):
                extra[name] = known.pop(name)
        try:
            entry = msgspec.convert(known, self.entry_type)
        except msgspec.ValidationError:
            # Slow path, only for entries holding a value of an unexpected type:
            # find the members that do not fit and keep them verbatim in extra.
            # Each is tried alone against a type whose every field is optional, so a
            # required field of a user's type does not make every other member "unfit".
            fitting = {}
            for name, value in known.items():
                try:
                    msgspec.convert({name: value}, self._probe)
                except msgspec.ValidationError:
                    extra[name] = value
                else:
                    fitting[name] = value
            entry = msgspec.convert(fitting, self.entry_type)
        # force_setattr: a frozen Entry subclass is as welcome as a mutable one.
        msgspec.structs.force_setattr(cast(msgspec.Struct, entry), "extra", extra)
        return entry

    def encode(self, value: T) -> bytes:
        if not isinstance(value, self.entry_type):
            raise TypeError(
                f"this store holds {self.entry_type.__name__} entries, not {type(value).__name__}"
            )
        members = cast(dict[str, Any], msgspec.to_builtins(value))
        extra = members.pop(self._extra_name, None)
        if extra:
            for name, member in extra.items():
                if name not in members:
                    members[name] = member
                elif name in self._defaults:
                    attribute, default = self._defaults[name]
                    if getattr(value, attribute) == default:
                        members[name] = member
        return self._encoder.encode(members)


def _float_only(annotation: Any) -> bool:
    """Whether a field of this type takes a float but not an int (so an int is converted)."""
    info = msgspec.inspect.type_info(annotation)
    kinds = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    return any(isinstance(k, msgspec.inspect.FloatType) for k in kinds) and not any(
        isinstance(k, msgspec.inspect.IntType) for k in kinds
    )


def _exact_float(value: int) -> bool:
    try:
        return float(value) == value
    except OverflowError:
        return False


def _probe_type(entry_type: type[Any], fields: tuple[msgspec.structs.FieldInfo, ...]) -> type[Any]:
    """``entry_type`` if all its fields are optional, else a copy with every field optional.

    The slow path of decoding checks members one at a time; against a type with a
    required field every lone member would fail for lack of it.
    """
    if not any(f.required for f in fields if f.name != "extra"):
        return entry_type
    return msgspec.defstruct(
        f"_{entry_type.__name__}Probe",
        [(f.name, Union[f.type, UnsetType], UNSET) for f in fields if f.name != "extra"],  # noqa: UP007
        rename={f.name: f.encode_name for f in fields},
        kw_only=True,
    )


_codecs: dict[type[Any], Codec[Any]] = {}


def codec_for(entry_type: type[T]) -> Codec[T]:
    """Return the (cached) codec for ``entry_type``: ``dict``, an Entry or any Struct.

    :raises TypeError: ``entry_type`` is none of those.
    """
    codec = _codecs.get(entry_type)
    if codec is None:
        if entry_type is dict:
            codec = _DictCodec()
        elif isinstance(entry_type, type) and issubclass(entry_type, Entry):
            codec = _EntryCodec(entry_type)
        elif isinstance(entry_type, type) and issubclass(entry_type, msgspec.Struct):
            codec = _StructCodec(entry_type)
        else:
            raise TypeError(f"entry_type must be dict or a msgspec.Struct subclass, not {entry_type!r}")
        _codecs[entry_type] = codec
    return cast(Codec[T], codec)


class _Recency(msgspec.Struct):
    updatedAt: Any = None


_recency_decoder = msgspec.json.Decoder(_Recency)


def recency_of(data: bytes) -> int | None:
    """Return the ``updatedAt`` of an encoded entry, or None if absent or not an integer.

    Decodes only that member. :raises msgspec.DecodeError: not a JSON object.
    """
    value = _recency_decoder.decode(data).updatedAt
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


#: The deepest nesting of arrays and objects an entry may have. msgspec decodes about
#: a thousand levels, fewer when the caller's stack is already deep; entries are
#: refused well before that, so whatever is stored can be read back from any stack.
MAX_NESTING = 256

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_OPENERS = frozenset(b"[{")


def storable(data: bytes, max_bytes: int) -> str | None:
    """Why the encoded entry ``data`` could not be read back, or None if it can.

    Cheap for real entries: a nesting of N levels needs N brackets, so the exact
    depth is computed only for the rare entry with more than :data:`MAX_NESTING`.
    """
    if len(data) > max_bytes:
        return f"it is {len(data):,} bytes of JSON, over the store's max_entry_bytes of {max_bytes:,}"
    if len(data) > 2 * MAX_NESTING and _openers_over(data, MAX_NESTING):
        deepest = _depth(data)
        if deepest > MAX_NESTING:
            return f"it nests {deepest} levels of arrays and objects, over the limit of {MAX_NESTING}"
    return None


def _openers_over(data: bytes, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` bytes ``[`` or ``{``.

    ``bytes.find`` of one byte is ``memchr``, and the count stops at the limit: a few
    microseconds for a 120 KB entry, where ``bytes.count`` takes over a hundred.
    """
    found = 0
    for opener in (b"[", b"{"):
        at = data.find(opener)
        while at >= 0:
            found += 1
            if found > limit:
                return True
            at = data.find(opener, at + 1)
    return False


def _depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON ``data`` (a prefix of it, when
    it is cut short: a torn file must not hang its reader).

    Strings (which may hold brackets) go first, then everything but brackets, so the
    byte loop runs over the brackets alone.
    """
    depth = deepest = 0
    for byte in _NOT_BRACKET.sub(b"", _STRING.sub(b"", data)):
        if byte in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest
