"""Values a bot keeps (user data, FSM data ...) as readable JSON that keeps their Python types.

Plain JSON values are stored as they are: ``str``, ``int``, ``float``, ``bool``,
``None``, lists, and dicts whose keys are all strings not starting with ``$``. Every
other supported value becomes a one-member object whose name starts with ``$``::

    (1, 2)                       {"$tuple": [1, 2]}
    {1: "a"}                     {"$dict": [[1, "a"]]}     (any non-str or "$..." key)
    {"a", "b"}                   {"$set": ["a", "b"]}      ($frozenset likewise; sorted)
    b"\\x00"                      {"$bytes": "AA=="}         (base64; $bytearray likewise)
    datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
                                 {"$datetime": "2024-05-01T12:00:00+00:00"}
    datetime(..., tzinfo=ZoneInfo("Europe/Berlin"))
                                 {"$datetime": ["2024-05-01T12:00:00", "Europe/Berlin", 0]}
                                 (another fixed-offset tzinfo comes back as a datetime.timezone)
    date, time, timedelta        {"$date": "2024-05-01"}, {"$time": "12:00:00"},
                                 {"$timedelta": [days, seconds, microseconds]}
    Decimal("1.10"), UUID(...)   {"$decimal": "1.10"}, {"$uuid": "..."}
    float("nan"), 2**70          {"$float": "nan"}, {"$int": "1180591620717411303424"}
    a Telegram object            {"$telegram": ["Message", {...its to_dict()...}]}  (plugins)

Those come back equal and of the same type. Enum members are stored as their value
(an ``IntEnum`` comes back as the ``int``, which compares and hashes equal); other
objects (your own classes, dataclasses, functions ...) are refused with a
``TypeError`` naming where in the value they are, before anything is written.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import msgspec

__all__ = ["ObjectCodec", "UnsupportedValueError", "ValueCodec"]

_MIN_INT = -(2**63)
_MAX_INT = 2**64 - 1
_JSON = msgspec.json.Encoder()


class UnsupportedValueError(TypeError):
    """A value of a type the store cannot keep exactly; ``where`` says where it is."""

    def __init__(self, where: str, value: object, supported: str) -> None:
        self.where = where
        self.value_type = type(value)
        super().__init__(
            f"{where}: cannot store a {type(value).__module__}.{type(value).__qualname__} "
            f"({supported}); convert it to one of those first"
        )


class ObjectCodec(Protocol):
    """Keeps a framework's own objects (Telegram objects) under one ``$`` tag."""

    tag: str

    def dump(self, value: object) -> tuple[str, Any] | None:
        """``(class name, JSON-able data)`` for a value of this codec, else None."""
        ...

    def load(self, name: str, data: Any) -> object:
        """The object that :meth:`dump` turned into ``(name, data)``."""
        ...


_SUPPORTED = (
    "supported: None, bool, int, float, str, list, tuple, dict, set, frozenset, bytes, "
    "bytearray, datetime, date, time, timedelta, Decimal, UUID, Enum members"
)


class ValueCodec:
    """Encode values to JSON-able builtins and back (see the module docstring)."""

    def __init__(self, objects: tuple[ObjectCodec, ...] = ()) -> None:
        self._objects = objects
        self._supported = _SUPPORTED + "".join(f", {o.tag[1:]} objects" for o in objects)
        self._loaders: dict[str, Callable[[Any], Any]] = {
            "$tuple": lambda v: tuple(self._decode(x) for x in v),
            "$dict": lambda v: {self._decode(k): self._decode(x) for k, x in v},
            "$set": lambda v: {self._decode(x) for x in v},
            "$frozenset": lambda v: frozenset(self._decode(x) for x in v),
            "$bytes": lambda v: base64.b64decode(v, validate=True),
            "$bytearray": lambda v: bytearray(base64.b64decode(v, validate=True)),
            "$datetime": _load_datetime,
            "$date": dt.date.fromisoformat,
            "$time": dt.time.fromisoformat,
            "$timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
            "$decimal": decimal.Decimal,
            "$uuid": uuid.UUID,
            "$float": float,
            "$int": int,
        }
        for codec in objects:
            self._loaders[codec.tag] = self._object_loader(codec)

    def encode(self, value: Any, where: str) -> Any:
        """``value`` as JSON-able builtins. :raises UnsupportedValueError: names the path."""
        return self._encode(value, [where])

    def decode(self, data: Any) -> Any:
        """The value :meth:`encode` turned into ``data``.

        :raises ValueError: ``data`` holds an unknown or malformed tag.
        """
        return self._decode(data)

    # -- encoding ------------------------------------------------------------------

    def _encode(self, value: Any, path: list[str]) -> Any:
        kind = type(value)
        if kind is str or value is None or kind is bool:
            return value
        if kind is int:
            return value if _MIN_INT <= value <= _MAX_INT else {"$int": str(value)}
        if kind is float:
            return value if value - value == 0 else {"$float": repr(value)}  # nan and inf
        if kind is dict:
            return self._encode_dict(value, path)
        if kind is list:
            return self._encode_items(value, path)
        if kind is tuple:
            return {"$tuple": self._encode_items(value, path)}
        return self._encode_other(value, path)

    def _encode_items(self, values: Any, path: list[str]) -> list[Any]:
        out = []
        for index, item in enumerate(values):
            path.append(f"[{index}]")
            out.append(self._encode(item, path))
            path.pop()
        return out

    def _encode_dict(self, value: Mapping[Any, Any], path: list[str]) -> Any:
        if all(type(k) is str and not k.startswith("$") for k in value):
            out = {}
            for key, item in value.items():
                path.append(f"[{key!r}]")
                out[key] = self._encode(item, path)
                path.pop()
            return out
        pairs = []
        for key, item in value.items():
            path.append(f" key {key!r}")
            encoded_key = self._encode(key, path)
            path[-1] = f"[{key!r}]"
            pairs.append([encoded_key, self._encode(item, path)])
            path.pop()
        return {"$dict": pairs}

    def _encode_other(self, value: Any, path: list[str]) -> Any:
        if isinstance(value, enum.Enum):
            return self._encode(value.value, path)
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return self._encode(int(value), path)
        if isinstance(value, float):
            return self._encode(float(value), path)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (set, frozenset)):
            tag = "$frozenset" if isinstance(value, frozenset) else "$set"
            # Sorted by their JSON, so equal sets are written as equal bytes in every process.
            items = self._encode_items(value, path)
            return {tag: sorted(items, key=_JSON.encode)}
        if isinstance(value, (bytes, bytearray)):
            tag = "$bytearray" if isinstance(value, bytearray) else "$bytes"
            return {tag: base64.b64encode(value).decode("ascii")}
        if isinstance(value, dt.datetime):
            return {"$datetime": self._dump_datetime(value, path)}
        if isinstance(value, dt.date):
            return {"$date": value.isoformat()}
        if isinstance(value, dt.time):
            if value.tzinfo is not None and not isinstance(value.tzinfo, dt.timezone):
                raise UnsupportedValueError(
                    _where(path), value, "a time's tzinfo must be a datetime.timezone"
                )
            return {"$time": value.isoformat()}
        if isinstance(value, dt.timedelta):
            return {"$timedelta": [value.days, value.seconds, value.microseconds]}
        if isinstance(value, decimal.Decimal):
            return {"$decimal": str(value)}
        if isinstance(value, uuid.UUID):
            return {"$uuid": str(value)}
        if isinstance(value, Mapping):
            return self._encode_dict(value, path)
        if isinstance(value, list):
            return self._encode_items(value, path)
        if isinstance(value, tuple):
            return {"$tuple": self._encode_items(value, path)}
        for codec in self._objects:
            dumped = codec.dump(value)
            if dumped is not None:
                name, data = dumped
                return {codec.tag: [name, self._encode(data, path)]}
        raise UnsupportedValueError(_where(path), value, self._supported)

    def _dump_datetime(self, value: dt.datetime, path: list[str]) -> Any:
        zone = value.tzinfo
        if zone is None or isinstance(zone, dt.timezone):
            return value.isoformat()
        if isinstance(zone, ZoneInfo) and zone.key is not None:
            # The wall time, the zone's name and fold: equal, and the same zone, when read back.
            return [value.replace(tzinfo=None).isoformat(), zone.key, value.fold]
        if zone.utcoffset(None) is not None:
            # Another fixed-offset zone (pydantic's, as on aiogram's dates): comes back as a
            # datetime.timezone of that offset, an equal datetime.
            return value.isoformat()
        raise UnsupportedValueError(
            _where(path),
            value,
            "a datetime's tzinfo must be a fixed offset (datetime.timezone ...) or a zoneinfo.ZoneInfo",
        )

    # -- decoding ------------------------------------------------------------------

    def _decode(self, data: Any) -> Any:
        kind = type(data)
        if kind is dict:
            if len(data) == 1:
                (name,) = data
                if name.startswith("$"):
                    loader = self._loaders.get(name)
                    if loader is None:
                        raise ValueError(f"unknown tag {name!r} in a stored value")
                    try:
                        return loader(data[name])
                    except (TypeError, ValueError, KeyError, IndexError, LookupError) as exc:
                        raise ValueError(f"malformed {name} value {data[name]!r}: {exc}") from exc
            return {key: self._decode(item) for key, item in data.items()}
        if kind is list:
            return [self._decode(item) for item in data]
        return data

    def _object_loader(self, codec: ObjectCodec) -> Callable[[Any], Any]:
        def load(value: Any) -> Any:
            name, data = value
            return codec.load(name, self._decode(data))

        return load


def _load_datetime(value: Any) -> dt.datetime:
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    wall, zone, fold = value
    return dt.datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(zone), fold=fold)


def _where(path: list[str]) -> str:
    return "".join(path)
