"""The documentation site builds (strict), and its API page documents every public name.

What a reader of the API page must find, checked on the rendered HTML: every public
function with a row for each parameter (its default shown as a value, not as the name of
a constant) and its errors; every option of a public method or constructor; every field
of the public dataclasses and structs; no raw Sphinx role (``:class:`X```); no private
module in the table of contents; signatures that fit the page.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import aiosessions
import aiosessions.backends

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = (aiosessions, aiosessions.backends)
#: Characters a signature line may take before it runs off the page's code block.
SIGNATURE_WIDTH = 90


@dataclasses.dataclass
class Section:
    """One documented object of the page: its text and its tables (Parameters, Attributes ...)."""

    html: str
    tables: dict[str, dict[str, list[str]]]

    @property
    def text(self) -> str:
        return _text(self.html)


def _text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _tables(fragment: str) -> dict[str, dict[str, list[str]]]:
    tables: dict[str, dict[str, list[str]]] = {}
    for title, table in re.findall(
        r'<span class="doc-section-title">(\w+):</span>.*?(<table>.*?</table>)', fragment, re.S
    ):
        rows = {}
        for row in re.findall(r'<tr class="doc-section-item">(.*?)</tr>', table, re.S):
            cells = [_text(cell) for cell in re.findall(r"<td>(.*?)</td>", row, re.S)]
            rows[cells[0]] = cells
        tables[title] = rows
    return tables


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the docs extra is not installed ({module} is missing): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def page(site: Path) -> str:
    return (site / "api" / "index.html").read_text("utf-8")


@pytest.fixture(scope="module")
def sections(page: str) -> dict[str, Section]:
    """Each object's part of the page, from its heading to the next object's heading."""
    parts = re.split(r'<h\d id="(aiosessions\.[^"]+)" class="doc doc-heading">', page)
    found = {}
    for identifier, fragment in zip(parts[1::2], parts[2::2], strict=True):
        found[identifier] = Section(fragment, _tables(fragment))
    return found


def public_names() -> Iterator[tuple[str, Any]]:
    for module in PUBLIC:
        for name in module.__all__:
            yield f"{module.__name__}.{name}", getattr(module, name)


def _record_fields(cls: type) -> list[str] | None:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        return [f.name for f in msgspec.structs.fields(cls)]
    return None


def _options(function: Callable[..., Any], *, every: bool) -> list[inspect.Parameter]:
    """The parameters a reader needs a row for: all of a function's, a method's options."""
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind not in skip and p.name not in ("self", "cls")
    ]
    return parameters if every else [p for p in parameters if p.default is not inspect.Parameter.empty]


def _check_default(where: str, parameter: inspect.Parameter, shown: str) -> None:
    """The Default cell shows the value itself: ``0.05``, ``64 * 1024 * 1024``, never a constant's name."""
    default = parameter.default
    if default is inspect.Parameter.empty:
        assert shown in ("", "required"), (where, parameter.name, shown)
        return
    assert not re.fullmatch(r"_?[A-Z][A-Z0-9_]+", shown), f"{where}({parameter.name}) shows {shown}"
    if isinstance(default, (bool, type(None), str)):
        assert shown == repr(default).replace("'", '"') or shown == repr(default), (where, parameter.name)
    elif isinstance(default, (int, float)):
        assert re.fullmatch(r"[\d.* ]+", shown), (where, parameter.name, shown)
        assert eval(shown, {"__builtins__": {}}) == default, (where, parameter.name, shown)  # arithmetic only
    elif isinstance(default, type):
        assert shown == default.__name__, (where, parameter.name, shown)


def test_every_public_function_has_its_parameters_defaults_and_errors(sections: dict[str, Section]) -> None:
    missing = []
    for identifier, obj in public_names():
        if not inspect.isfunction(obj):
            continue
        section = sections.get(identifier)
        assert section is not None, f"{identifier} is not on the API page (docs/api.md)"
        rows = section.tables.get("Parameters", {})
        for parameter in _options(obj, every=True):
            if parameter.name not in rows:
                missing.append(f"{identifier}({parameter.name})")
                continue
            _check_default(identifier, parameter, rows[parameter.name][-1])
        assert "Raises" in section.tables, f"{identifier} does not say what it raises"
    assert not missing, f"parameters without a row in their Parameters table: {missing}"


def test_every_option_of_a_public_method_or_constructor_has_a_row(sections: dict[str, Section]) -> None:
    missing = []
    for identifier, cls in public_names():
        if not inspect.isclass(cls) or _record_fields(cls) is not None or issubclass(cls, BaseException):
            continue
        assert identifier in sections, f"{identifier} is not on the API page (docs/api.md)"
        members: list[tuple[str, Callable[..., Any]]] = []
        if "__init__" in vars(cls) and "Parameters" in sections[identifier].tables:
            members.append((identifier, cls.__init__))
        for name, member in vars(cls).items():
            if not name.startswith("_") and inspect.isfunction(member) and member.__doc__:
                members.append((f"{identifier}.{name}", member))
        for where, function in members:
            section = sections.get(where)
            if section is None:
                continue  # a class shown without its members (FileSystem): its own text says enough
            rows = section.tables.get("Parameters", {})
            for parameter in _options(function, every=False):
                if parameter.name not in rows:
                    missing.append(f"{where}({parameter.name}=...)")
                else:
                    _check_default(where, parameter, rows[parameter.name][-1])
    assert not missing, f"options without a row in their Parameters table: {missing}"


def test_every_field_of_a_public_record_is_listed(sections: dict[str, Section]) -> None:
    for identifier, cls in public_names():
        fields = _record_fields(cls) if inspect.isclass(cls) else None
        if not fields:
            continue
        rows = sections[identifier].tables.get("Attributes", {})
        assert [f for f in fields if f not in rows] == [], f"{identifier}: fields missing from its table"
        undescribed = [name for name, cells in rows.items() if cells[-1] in ("", "-")]
        assert not undescribed, f"{identifier}: fields without a description: {undescribed}"


def test_no_raw_sphinx_roles_and_no_literal_block_markers(page: str) -> None:
    article = _text(page[page.index("<article") : page.index("</article>")])
    roles = re.findall(r":(?:class|func|meth|attr|exc|mod|data|obj|const):`?[\w.~]*", article)
    assert not roles, roles
    assert not re.search(r"\w::(\s|$)", article), "a reST '::' literal-block marker shows"


def test_no_private_module_in_the_contents_or_the_headings(page: str, sections: dict[str, Section]) -> None:
    private = [i for i in sections if any(part.startswith("_") for part in i.split(".")[1:])]
    assert not private, private
    toc = page[page.index('md-nav--secondary"') :]
    toc = toc[: toc.index("</nav>")]
    links = re.findall(r'<a href="#[^"]*" class="md-nav__link">(.*?)</a>', toc, re.S)
    entries = [_text(entry) for entry in links]
    assert entries and not [e for e in entries if e.startswith("_") or "._" in e], entries


def test_signatures_fit_the_page_and_overloads_do_not_repeat(sections: dict[str, Section]) -> None:
    for identifier, section in sections.items():
        own = section.html.split('<div class="doc doc-children">')[0]
        signatures = re.findall(r'<div class="doc-signature highlight"><pre>(.*?)</pre>', own, re.S)
        assert len(signatures) <= 1, f"{identifier} shows {len(signatures)} signatures"
        for signature in signatures:
            for line in html.unescape(re.sub(r"<[^>]+>", "", signature)).splitlines():
                assert len(line) <= SIGNATURE_WIDTH, f"{identifier}: {line!r} runs off the page"
