"""Run a framework's own test files, taken from its released sdist, against our adapter.

The sdist of the *installed* version (pinned in pyproject's ``test`` extra) is fetched
with ``pip download`` into pytest's cache (or a temporary folder), never committed.
The chosen test files (and the helper files they import) are extracted into a fresh
folder beside a conftest of ours (``suites/<name>_conftest.py``) that supplies their
fixtures with our adapter, and pytest runs them there in a subprocess.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import BACKENDS

ROOT = Path(__file__).resolve().parents[2]
SUITES = Path(__file__).resolve().parent / "suites"


@dataclass(frozen=True)
class Outcome:
    returncode: int
    passed: int
    failed: int
    errors: int
    skipped: int
    deselected: int
    output: str


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def sdist(cache: Path, distribution: str) -> Path:
    """The sdist of the installed ``distribution``, downloaded once into ``cache``."""
    version = importlib.metadata.version(distribution)
    wanted = _normal(f"{distribution}-{version}.tar.gz")
    found = [p for p in cache.glob("*.tar.gz") if _normal(p.name) == wanted]
    if not found:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
                *("--no-binary", ":all:", "--dest", str(cache), f"{distribution}=={version}"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"pip download {distribution}=={version} failed:\n{done.stderr}"
        found = [p for p in cache.glob("*.tar.gz") if _normal(p.name) == wanted]
    assert len(found) == 1, f"expected the sdist of {distribution} {version} in {cache}: {found}"
    return found[0]


def extract(archive: Path, members: list[str], into: Path) -> None:
    """Extract ``members`` (paths inside the sdist's top folder; ``dir/`` for all files under
    ``dir``, not below) into ``into``, keeping their paths."""
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/", 1)[0]
        names = {name[len(top) + 1 :]: name for name in tar.getnames()}
        wanted: list[str] = []
        for member in members:
            if member.endswith("/"):
                wanted += [n for n in names if n.startswith(member) and "/" not in n[len(member) :]]
            else:
                wanted.append(member)
        for member in wanted:
            source = tar.extractfile(names[member])
            assert source is not None, f"{member} is not a file in {archive.name}"
            target = into / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())


def prepare(
    cache: Path,
    workdir: Path,
    *,
    distribution: str,
    members: list[str],
    ini: str,
    ours: dict[str, str],
) -> Path:
    """A folder holding the framework's ``members``, our files and a pytest.ini; returns it.

    ``ours`` maps files of ``suites/`` to where they go in the folder (a conftest, a plugin).
    """
    archive = sdist(cache, distribution)
    extract(archive, members, workdir)
    for source, target in {**ours, "support.py": "aiosessions_suite_support.py"}.items():
        shutil.copyfile(SUITES / source, workdir / target)
    (workdir / "pytest.ini").write_text(ini, "utf-8")
    return workdir


def run(
    workdir: Path, args: list[str], env: dict[str, str] | None = None, timeout: float = 600, name: str = "run"
) -> Outcome:
    """Run pytest in ``workdir`` on ``args``; parse its closing line. ``name``: its temporary folder."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(workdir)])
    environment.update(env or {})
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs"),
            *("--rootdir", str(workdir), "-c", str(workdir / "pytest.ini")),
            # Its own temporary folder: not the shared /tmp/pytest-of-<user> other runs clean up.
            *("--basetemp", str(workdir / f".tmp-{name}"), *args),
        ],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    counts = {}
    for word in ("passed", "failed", "errors", "error", "skipped", "deselected"):
        found = re.findall(rf"(\d+) {word}\b", output.splitlines()[-1] if output.strip() else "")
        counts[word] = int(found[-1]) if found else 0
    return Outcome(
        returncode=done.returncode,
        passed=counts["passed"],
        failed=counts["failed"],
        errors=counts["errors"] + counts["error"],
        skipped=counts["skipped"],
        deselected=counts["deselected"],
        output=output,
    )


def run_per_backend(workdir: Path, args: list[str], env: dict[str, str]) -> Outcome:
    """:func:`run` once per backend, at the same time (for suites that mostly sleep); summed."""
    with ThreadPoolExecutor(len(BACKENDS)) as pool:
        outcomes = list(
            pool.map(
                lambda backend: run(
                    workdir, args, {**env, "AIOSESSIONS_SUITE_STORES": backend}, name=backend
                ),
                BACKENDS,
            )
        )
    return Outcome(
        returncode=max(o.returncode for o in outcomes),
        passed=sum(o.passed for o in outcomes),
        failed=sum(o.failed for o in outcomes),
        errors=sum(o.errors for o in outcomes),
        skipped=sum(o.skipped for o in outcomes),
        deselected=sum(o.deselected for o in outcomes),
        output="\n".join(o.output for o in outcomes),
    )


@pytest.fixture(scope="session")
def sdist_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where framework sdists are kept between runs: pytest's cache, else a temporary folder."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("framework-sdists"))
    return tmp_path_factory.mktemp("framework-sdists")
