"""A griffe extension that makes the API reference say what the source says.

The docstrings are written for readers of the source (Sphinx-style fields and
roles, ``#:`` comments above the fields of dataclasses and structs, defaults
named by constants). mkdocstrings renders none of those well on its own, so
this extension, loaded by ``mkdocs.yml``, rewrites what griffe loaded before it
is rendered; the source stays as it is:

- Sphinx roles (``:class:`X```, ``:meth:`Y.z```, ``:func:`~a.b```) become
  cross-references when they name something on the API page, inline code
  otherwise (a role never shows raw);
- a default that names a constant (``DEFAULT_FLUSH_INTERVAL``) shows its value
  (``0.05``), in signatures and in the parameter tables;
- every field of a dataclass or ``msgspec.Struct`` is listed in an Attributes
  table of its class, described by its ``:ivar:`` line or else the ``#:``
  comment above it, with its default and, for structs that rename their
  fields, its JSON name;
- a Google-style ``Attributes:`` block becomes ``:ivar:`` lines (one style per page);
- a reST literal-block marker (a paragraph ending in ``::``) ends in ``:``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe

__all__ = ["AiosessionsDocs"]

#: The packages whose ``__all__`` makes up the API page.
PUBLIC_MODULES = ("aiosessions", "aiosessions.backends")

_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|exc|mod|data|obj|const):`(~?)([^`<>]+?)`")
_LITERAL_BLOCK = re.compile(r"(?<=\S)::\n(?=\n)")
_CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
_FACTORY = re.compile(r"^(?:msgspec\.)?field\(default_factory=(\w+)\)$")
_FACTORY_VALUES = {"dict": "{}", "list": "[]", "tuple": "()", "set": "set()"}
_EMPTY = {f"{name}()": value for name, value in _FACTORY_VALUES.items()}


class AiosessionsDocs(griffe.Extension):
    """Rewrite roles, constant defaults and field comments of the aiosessions package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "aiosessions":
            return
        public = _public_paths(pkg)
        for obj in _walk(pkg):
            if isinstance(obj, griffe.Function):
                for function in (obj, *(obj.overloads or ())):
                    _resolve_defaults(function, pkg)
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, _context(obj, public), public)
            if isinstance(obj, griffe.Class) and _is_record(obj, pkg):
                _list_fields(obj, pkg)  # the field comments it adds may hold roles too
                obj.docstring.value = _rewrite(obj.docstring.value, _context(obj, public), public)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """Every object defined in ``obj`` (aliases, which point elsewhere, are skipped)."""
    yield obj
    for member in list(obj.members.values()):
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object | None:
    try:
        return obj.final_target if isinstance(obj, griffe.Alias) else obj  # type: ignore[return-value]
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _public_paths(pkg: griffe.Module) -> dict[str, str]:
    """Every identifier the API page documents, by itself and by its canonical path.

    ``aiosessions.SessionStore`` -> itself, and ``aiosessions._store.SessionStore``
    (where it is defined) -> ``aiosessions.SessionStore``; the same for members.
    """
    paths: dict[str, str] = {}
    for module_path in PUBLIC_MODULES:
        module = pkg if module_path == pkg.path else pkg.get_member(module_path.split(".", 1)[1])
        for name in module.exports or ():
            name = str(name)
            target = _target(module[name])
            public = f"{module_path}.{name}"
            paths[public] = public
            if target is None:
                continue
            paths.setdefault(target.path, public)
            # Members are rendered (so can be linked to) when they are the class's own and
            # have a docstring; fields are listed in the class's table instead.
            for member_name, member in target.members.items() if isinstance(target, griffe.Class) else ():
                if not member_name.startswith("_") and not member.is_alias and member.docstring:
                    paths[f"{public}.{member_name}"] = f"{public}.{member_name}"
                    paths.setdefault(f"{target.path}.{member_name}", f"{public}.{member_name}")
    return paths


def _context(obj: griffe.Object, public: dict[str, str]) -> list[str]:
    """Where a short name in ``obj``'s docstring may be looked up: its class, then its module."""
    places = []
    for owner in (obj, obj.parent):
        if isinstance(owner, griffe.Class) and owner.path in public:
            places.append(public[owner.path])
    return places


def _rewrite(text: str, context: list[str], public: dict[str, str]) -> str:
    def role(match: re.Match[str]) -> str:
        kind, short, name = match.group(1), match.group(2) == "~", match.group(3).strip()
        shown = name.rsplit(".", 1)[-1] if short else name
        if kind in ("func", "meth"):
            shown += "()"
        for candidate in (
            name,
            *(f"{module}.{name}" for module in PUBLIC_MODULES),
            *(f"{place}.{name}" for place in context),
        ):
            if candidate in public:
                return f"[`{shown}`][{public[candidate]}]"
        return f"`{shown}`"

    return _google_attributes(_LITERAL_BLOCK.sub(":\n", _ROLE.sub(role, text)))


def _google_attributes(text: str) -> str:
    """A Google-style ``Attributes:`` block as ``:ivar name: description`` lines."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() != "Attributes:":
            out.append(line)
            index += 1
            continue
        base = len(line) - len(line.lstrip())
        index += 1
        while index < len(lines) and (not lines[index].strip() or _indent(lines[index]) > base):
            entry = re.match(r"\s*(\w+)(?: \(.*?\))?:\s*(.*)", lines[index])
            if entry and _indent(lines[index]) <= base + 4:
                out.append(f":ivar {entry.group(1)}: {entry.group(2)}")
            elif lines[index].strip():
                out.append("    " + lines[index].strip())  # a continuation of the entry above
            index += 1
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _take_ivars(text: str) -> tuple[str, dict[str, str]]:
    """The docstring without its ``:ivar:``/``:vartype:`` lines, and the descriptions they gave."""
    kept: list[str] = []
    described: dict[str, str] = {}
    current: str | None = None
    for line in text.split("\n"):
        field = re.match(r":(ivar|var|cvar|vartype) (\w+):\s*(.*)", line)
        if field:
            current = field.group(2) if field.group(1) != "vartype" else None
            if current is not None:
                described[current] = field.group(3).strip()
        elif current is not None and line.startswith((" ", "\t")) and line.strip():
            described[current] += " " + line.strip()
        else:
            current = None
            kept.append(line)
    return "\n".join(kept), described


def _value_of(expression: Any, scope: griffe.Object, pkg: griffe.Module) -> str | None:
    """The value a default names, when it names a constant of this package."""
    if not isinstance(expression, griffe.ExprName) or not _CONSTANT.match(expression.name):
        return None
    path = expression.canonical_path
    if not path.startswith(pkg.path + "."):
        return None
    try:
        found = _target(pkg.get_member(path.split(".", 1)[1]))
    except KeyError:
        return None
    if not isinstance(found, griffe.Attribute) or found.value is None:
        return None
    return str(found.value)


def _resolve_defaults(function: griffe.Function, pkg: griffe.Module) -> None:
    for parameter in function.parameters:
        value = _value_of(parameter.default, function, pkg)
        if value is None and str(parameter.default) in _EMPTY:
            value = _EMPTY[str(parameter.default)]  # a dataclass field's default_factory
        if value is not None:
            parameter.default = value


def _is_record(cls: griffe.Class, pkg: griffe.Module) -> bool:
    """A dataclass or a ``msgspec.Struct``: a class made of declared fields."""
    if "dataclass" in cls.labels:
        return True
    for base in cls.bases:
        path = base.canonical_path if isinstance(base, griffe.Expr) else str(base)
        if path == "msgspec.Struct":
            return True
        if path.startswith(pkg.path + "."):
            try:
                found = _target(pkg.get_member(path.split(".", 1)[1]))
            except KeyError:
                continue
            if isinstance(found, griffe.Class) and _is_record(found, pkg):
                return True
    return False


def _fields(cls: griffe.Class, pkg: griffe.Module) -> list[griffe.Attribute]:
    """The declared fields of a record class, its bases' first (as msgspec orders them)."""
    inherited: list[griffe.Attribute] = []
    for base in cls.bases:
        path = base.canonical_path if isinstance(base, griffe.Expr) else str(base)
        if path.startswith(pkg.path + "."):
            try:
                found = _target(pkg.get_member(path.split(".", 1)[1]))
            except KeyError:
                continue
            if isinstance(found, griffe.Class):
                inherited += _fields(found, pkg)
    own = [
        member
        for member in cls.members.values()
        if isinstance(member, griffe.Attribute)
        and not member.name.startswith("_")
        and member.annotation is not None
        and "property" not in member.labels
        and not str(member.annotation).startswith(("ClassVar", "Final"))
    ]
    names = {member.name for member in own}
    return [f for f in inherited if f.name not in names] + sorted(own, key=lambda m: m.lineno or 0)


def _comment_above(attribute: griffe.Attribute) -> str:
    """The ``#:`` comment lines right above a field, joined."""
    if not attribute.lineno or not isinstance(attribute.filepath, Path):
        return ""
    try:
        lines = attribute.lines_collection[attribute.filepath]
    except KeyError:
        return ""
    found: list[str] = []
    index = attribute.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(found)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _list_fields(cls: griffe.Class, pkg: griffe.Module) -> None:
    """Append an Attributes table (``:ivar:`` fields) listing every field to the class docstring."""
    fields = _fields(cls, pkg)
    if not fields:
        return
    if cls.docstring is None:
        cls.docstring = griffe.Docstring("", parent=cls)
    text, described = _take_ivars(cls.docstring.value)
    rename = _keyword(cls, pkg, "rename")
    lines = []
    for field in fields:
        words = [described.get(field.name) or _comment_above(field)]
        if rename == "camel" and field.name != "extra" and _camel(field.name) != field.name:
            words.append(f"JSON name `{_camel(field.name)}`.")
        default = _default_of(field, pkg)
        if default is not None and field.parent is cls:
            # Also what the dataclass's generated __init__ shows (griffe builds it after this).
            field.value = default
        if default is not None:
            words.append(f"Default `{default}`.")
        description = " ".join(word for word in words if word) or "-"
        lines.append(f":ivar {field.name}: {description}")  # its type: the field's annotation
    cls.docstring.value = text.rstrip() + "\n\n" + "\n".join(lines)


def _keyword(cls: griffe.Class, pkg: griffe.Module, name: str) -> str | None:
    """A class keyword (``rename="camel"``), inherited from the package's bases too."""
    value = cls.keywords.get(name) if cls.keywords else None
    if value is not None:
        return str(value).strip("'\"")
    for base in cls.bases:
        path = base.canonical_path if isinstance(base, griffe.Expr) else str(base)
        if path.startswith(pkg.path + "."):
            try:
                found = _target(pkg.get_member(path.split(".", 1)[1]))
            except KeyError:
                continue
            if isinstance(found, griffe.Class):
                inherited = _keyword(found, pkg, name)
                if inherited is not None:
                    return inherited
    return None


def _default_of(field: griffe.Attribute, pkg: griffe.Module) -> str | None:
    if field.value is None:
        return None
    text = str(field.value)
    factory = _FACTORY.match(text)
    if factory:
        return _FACTORY_VALUES.get(factory.group(1), f"{factory.group(1)}()")
    return _value_of(field.value, field, pkg) or text
