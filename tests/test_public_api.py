"""The public surface: ``aiosessions.__all__`` and the module agree, and the error tree is as drawn.

Modelled on httpx's ``test_exported_members``: a name made public by accident, or
exported but missing, fails here. The list of names itself is not hard-coded, so
adding a public function means adding it to ``__all__``, nothing more.
"""

from __future__ import annotations
import __future__

import builtins
import re
import types

import pytest

import aiosessions
from aiosessions import _errors


def test_all_is_a_list_of_unique_strings() -> None:
    assert isinstance(aiosessions.__all__, list)
    assert all(isinstance(name, str) for name in aiosessions.__all__)
    assert len(set(aiosessions.__all__)) == len(aiosessions.__all__)


def test_every_name_in_all_exists() -> None:
    missing = [name for name in aiosessions.__all__ if not hasattr(aiosessions, name)]
    assert not missing


def test_every_public_attribute_is_in_all() -> None:
    public = {
        name
        for name, value in vars(aiosessions).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)  # subpackages such as aiosessions.backends
        and not isinstance(value, __future__._Feature)  # `from __future__ import annotations`
    }
    assert public - set(aiosessions.__all__) == set(), "public but not exported"
    assert set(aiosessions.__all__) - public == set(), "exported but not public"


def test_exported_objects_come_from_the_package() -> None:
    for name in aiosessions.__all__:
        value = getattr(aiosessions, name)
        if not isinstance(value, (type, types.FunctionType)):
            continue  # a constant has no module or name of its own
        module = getattr(value, "__module__", None)
        assert module is not None and module.startswith("aiosessions"), (name, module)
        assert getattr(value, "__name__", name) == name, "exported under another name"
        assert value.__doc__, f"{name} has no docstring"


def test_version() -> None:
    assert isinstance(aiosessions.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", aiosessions.__version__)


def test_named_parts_of_the_api_are_exported() -> None:
    """The names DESIGN.md fixes (section 4); more are welcome."""
    for name in ("open_store", "SessionStore", "SessionEntry", "Entry", "SessionStoreError"):
        assert name in aiosessions.__all__


# -- the error tree ----------------------------------------------------------------------

TREE_LINE = re.compile(r"^(?P<indent>[\s│├└─]*)(?P<name>[A-Z]\w+)(?:\s+\(also (?P<also>\w+)\))?")


def drawn_tree() -> list[tuple[type[BaseException], type[BaseException] | None, type[BaseException] | None]]:
    """(class, parent, builtin) for each line of the tree in the docstring of _errors.py."""
    doc = _errors.__doc__
    assert doc is not None
    block = doc.split("::", 1)[1].strip("\n").split("\n\n", 1)[0]
    rows: list[tuple[type[BaseException], type[BaseException] | None, type[BaseException] | None]] = []
    stack: list[tuple[int, type[BaseException]]] = []
    for line in block.splitlines():
        match = TREE_LINE.match(line)
        assert match, f"cannot read this line of the error tree: {line!r}"
        column = match.start("name")
        cls = getattr(_errors, match["name"])
        assert isinstance(cls, type) and issubclass(cls, BaseException)
        also = getattr(builtins, match["also"]) if match["also"] else None
        while stack and stack[-1][0] >= column:
            stack.pop()
        rows.append((cls, stack[-1][1] if stack else None, also))
        stack.append((column, cls))
    return rows


def test_error_tree_matches_its_drawing() -> None:
    rows = drawn_tree()
    roots = [cls for cls, parent, _ in rows if parent is None]
    assert roots == [aiosessions.SessionStoreError]
    for cls, parent, also in rows:
        if parent is not None:
            assert parent in cls.__bases__, f"{cls.__name__} is drawn under {parent.__name__}"
        if also is not None:
            assert also in cls.__bases__, f"{cls.__name__} is drawn as also a {also.__name__}"
        # Every other base is drawn: no undrawn builtin sneaks in.
        drawn = {base for base in (parent, also) if base is not None}
        assert set(cls.__bases__) == (drawn or {Exception}), cls.__name__
    # The drawing shows every exception of the module, and each is exported.
    drawn_names = {cls.__name__ for cls, _, _ in rows}
    assert drawn_names == set(_errors.__all__)
    assert drawn_names <= set(aiosessions.__all__)
    for name in drawn_names:
        assert getattr(aiosessions, name) is getattr(_errors, name)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (aiosessions.InvalidKeyError, ValueError),
        (aiosessions.StoreIOError, OSError),
        (aiosessions.LockTimeoutError, TimeoutError),
        (aiosessions.FlushError, aiosessions.StoreIOError),
        (aiosessions.FlushError, OSError),
    ],
)
def test_errors_resemble_builtins(error: type[BaseException], builtin: type[BaseException]) -> None:
    assert issubclass(error, builtin)
    assert issubclass(error, aiosessions.SessionStoreError)


def test_every_error_derives_from_the_root() -> None:
    for name in _errors.__all__:
        assert issubclass(getattr(_errors, name), aiosessions.SessionStoreError)


def test_errors_can_be_raised_and_caught_as_builtins() -> None:
    with pytest.raises(ValueError, match="empty"):
        raise aiosessions.InvalidKeyError("", "keys must not be empty")
    with pytest.raises(OSError) as info:
        raise aiosessions.StoreIOError(28, "writing failed: No space left on device", "/x/meta.json")
    assert info.value.errno == 28 and info.value.filename == "/x/meta.json"
    flush = aiosessions.FlushError(
        "2 changes unwritten", failures={"k": OSError(5, "Input/output error", "/y")}, unwritten=2
    )
    assert flush.errno == 5 and flush.filename == "/y" and flush.unwritten == 2
    assert isinstance(flush, aiosessions.StoreIOError)


def test_backends_module_exports_the_protocol_and_the_file_backends() -> None:
    import aiosessions.backends as backends

    public = {name for name, value in vars(backends).items() if not name.startswith("_")}
    public -= {"annotations"}
    public = {name for name in public if not isinstance(getattr(backends, name), types.ModuleType)}
    assert public == set(backends.__all__)
    assert {"Backend", "BatchResult", "Write", "DirectoryBackend", "JsonBackend"} <= public
