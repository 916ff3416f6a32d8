"""Markdown tables and PNG charts from ``results.json``.

Every figure is shown beside the legacy baseline and the physical limit of the
same fsync setting, as ratios from the same run: "vs legacy" and "vs limit" are
speeds (how many times faster, or more operations per second); below 1 is
slower.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiosessions._bench import format_bytes, format_rate, format_ratio, format_seconds

__all__ = ["charts", "tables"]


def _baseline(name: str, kind: str) -> str:
    fsync = name.endswith("+fsync")
    return f"{kind}{' +fsync' if fsync else ''}"


def _get(row: dict[str, Any] | None, measure: str, stat: str) -> float | None:
    if not row:
        return None
    value = row.get(measure)
    if not isinstance(value, dict):
        return None
    found = value.get(stat)
    return None if found is None or (isinstance(found, float) and math.isnan(found)) else float(found)


def _speed(base: float | None, value: float | None, *, higher_is_better: bool) -> str:
    if base is None or value is None or base <= 0 or value <= 0:
        return "n/a"
    return format_ratio(value / base if higher_is_better else base / value)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _latency_table(section: dict[str, Any], measure: str, stat: str = "p50") -> str:
    rows = []
    for name, row in section.items():
        value = _get(row, measure, stat)
        legacy = _get(section.get(_baseline(name, "legacy JSON")), measure, stat)
        limit = _get(section.get(_baseline(name, "physical limit")), measure, stat)
        p99 = _get(row, measure, "p99")
        rows.append(
            [
                name,
                format_seconds(value),
                format_seconds(p99),
                _speed(legacy, value, higher_is_better=False),
                _speed(limit, value, higher_is_better=False),
            ]
        )
    return _markdown(["contender", stat, "p99", "vs legacy", "vs limit"], rows)


def _rate_table(section: dict[str, Any], measure: str, *, lag: str | None = None) -> str:
    rows = []
    for name, row in section.items():
        rate = _get(row, measure, "rate")
        legacy = _get(section.get(_baseline(name, "legacy JSON")), measure, "rate")
        limit = _get(section.get(_baseline(name, "physical limit")), measure, "rate")
        cells = [
            name,
            format_rate(rate),
            _speed(legacy, rate, higher_is_better=True),
            _speed(limit, rate, higher_is_better=True),
        ]
        if lag is not None:
            lag_p99 = _get(row, lag, "p99")
            legacy_lag = _get(section.get(_baseline(name, "legacy JSON")), lag, "p99")
            cells += [format_seconds(lag_p99), _speed(legacy_lag, lag_p99, higher_is_better=False)]
        rows.append(cells)
    header = ["contender", "throughput", "vs legacy", "vs limit"]
    if lag is not None:
        header += ["loop lag p99", "lag vs legacy"]
    return _markdown(header, rows)


def tables(results: dict[str, Any]) -> str:
    """Every table of the run, as Markdown (what docs/benchmarks.md includes)."""
    machine = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    out = [
        f"Run of {results['started']} (seed {results['seed']}{', quick' if results.get('quick') else ''}), "
        f"{results.get('seconds', 0):.0f} s. Machine: {machine['cpus']} CPUs ({machine.get('cpu', '?')}), "
        f"{machine.get('memory_gib', '?')} GiB, {machine['filesystem']}, {machine['python']}; {packages}. "
        f"Load average at start: {', '.join(f'{x:.1f}' for x in machine.get('load_average_at_start', []))}.",
        "",
    ]
    stores = results.get("stores", {})
    if "headline" in results:
        store = stores["headline"]
        section = results["headline"]
        title = f"{store['sessions']:,} sessions, {format_bytes(store['bytes'])} legacy file"
        for heading, measure in (
            ("Update one session", "update"),
            ("Read one session, cold (not in the store's cache)", "get_cold"),
            ("Read one session, hot", "get_hot"),
            ("Delete one session", "delete"),
            ("Newest 50 sessions", "newest50"),
            ("Cold open + first read", "open_first_read"),
        ):
            out += [f"### {heading} ({title})", "", _latency_table(section, measure), ""]
        out += [
            f"### Burst: 1,000 updates to one key, then flush ({title})",
            "",
            _rate_table(section, "burst"),
            "",
        ]
        out += [
            f"### Mixed workload, full speed: 100 tasks, Zipf keys, 80% reads ({title})",
            "",
            _rate_table(section, "mixed", lag="mixed_lag"),
            "",
            f"### Mixed workload, paced at {results['plan']['paced_rate']:g} ops/s ({title})",
            "",
            _rate_table(section, "paced", lag="paced_lag"),
            "",
        ]
    if "throughput" in results:
        store = stores["10k"]
        section = results["throughput"]
        title = f"{store['sessions']:,} sessions, {format_bytes(store['bytes'])} legacy file"
        out += [
            f"### Distinct-key writes, 100 tasks, then flush ({title})",
            "",
            _rate_table(section, "distinct_writes"),
            "",
            f"### Mixed workload, full speed ({title})",
            "",
            _rate_table(section, "mixed", lag="mixed_lag"),
            "",
            f"### Mixed workload, paced at {results['plan']['paced_rate'] * 2:g} ops/s ({title})",
            "",
            _rate_table(section, "paced", lag="paced_lag"),
            "",
        ]
    if "scaling" in results:
        out += ["### Scaling with the number of sessions", ""]
        rows = []
        for name, sizes in results["scaling"].items():
            for size in sizes.values():
                memory = size.get("memory", {})
                rows.append(
                    [
                        name,
                        f"{size['sessions']:,}",
                        format_bytes(size["bytes"]),
                        format_seconds(_get(size, "update", "p50")),
                        format_seconds(_get(size, "open_first_read", "p50")),
                        format_bytes(memory["python_peak"]) if "python_peak" in memory else "n/a",
                        format_bytes(memory["rss_growth"]) if "rss_growth" in memory else "n/a",
                    ]
                )
        out += [
            _markdown(
                [
                    "contender",
                    "sessions",
                    "legacy file",
                    "update p50",
                    "open + first read",
                    "Python peak",
                    "RSS growth",
                ],
                rows,
            ),
            "",
        ]
    if "migration" in results:
        out += ["### Migration (aiosessions.migrate)", ""]
        rows = []
        for m in results["migration"].values():
            rows.append(
                [
                    f"{m['sessions']:,} sessions, {format_bytes(m['bytes'])}",
                    format_seconds(m["migrate"]),
                    format_seconds(m["migrate_fsync"]),
                    format_seconds(m["legacy_rewrite"]),
                    format_seconds(m["physical"]),
                    format_seconds(m["physical_fsync"]),
                ]
            )
        out += [
            _markdown(
                ["store", "migrate", "migrate, fsync", "one legacy save", "limit", "limit, fsync"],
                rows,
            ),
            "",
        ]
    return "\n".join(out)


# -- charts ------------------------------------------------------------------------------------

_COLOURS = {
    "legacy": "#c0392b",
    "aiosessions": "#2471a3",
    "SQLite": "#7d3c98",
    "diskcache": "#ca6f1e",
    "aiofiles": "#839192",
    "physical": "#1e8449",
}


def _colour(name: str) -> str:
    for prefix, colour in _COLOURS.items():
        if name.startswith(prefix):
            return colour
    return "#555555"


def _bars(
    path: Path,
    title: str,
    items: list[tuple[str, float]],
    *,
    xlabel: str,
    fmt: Any,
    log: bool = True,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(n, v) for n, v in items if v is not None and v > 0]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(items) + 1.4), dpi=110)
    names = [n for n, _ in items]
    values = [v for _, v in items]
    ax.barh(names, values, color=[_colour(n) for n in names])
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    for y, value in enumerate(values):
        ax.text(value, y, " " + fmt(value), va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _series(section: dict[str, Any], measure: str, stat: str) -> list[tuple[str, float]]:
    return [(name, v) for name, row in section.items() if (v := _get(row, measure, stat)) is not None]


def charts(results: dict[str, Any], folder: Path, *, suffix: str = "") -> Iterable[Path]:
    """Write the PNG charts into ``folder``; yield their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stores = results.get("stores", {})
    if "headline" in results:
        section = results["headline"]
        store = stores["headline"]
        where = f"{store['sessions']:,} sessions, {format_bytes(store['bytes'])}"
        yield _bars(
            folder / f"update{suffix}.png",
            f"Update one session, p50 ({where}); shorter is better",
            _series(section, "update", "p50"),
            xlabel="seconds (log scale)",
            fmt=format_seconds,
        )
        yield _bars(
            folder / f"cold-read{suffix}.png",
            f"Read one session cold, p50 ({where})",
            _series(section, "get_cold", "p50"),
            xlabel="seconds (log scale)",
            fmt=format_seconds,
        )
        yield _bars(
            folder / f"loop-lag{suffix}.png",
            f"Event-loop lag p99 under the paced mixed workload ({where})",
            [(n, v) for n, v in _series(section, "paced_lag", "p99") if not n.startswith("physical")],
            xlabel="seconds (log scale)",
            fmt=format_seconds,
        )
    if "throughput" in results:
        section = results["throughput"]
        store = stores["10k"]
        where = f"{store['sessions']:,} sessions"
        yield _bars(
            folder / f"mixed{suffix}.png",
            f"Mixed workload throughput, 100 tasks, 80% reads ({where}); longer is better",
            _series(section, "mixed", "rate"),
            xlabel="operations per second (log scale)",
            fmt=format_rate,
        )
        yield _bars(
            folder / f"distinct-writes{suffix}.png",
            f"Distinct-key writes, incl. the final flush ({where})",
            _series(section, "distinct_writes", "rate"),
            xlabel="writes per second (log scale)",
            fmt=format_rate,
        )
    if "scaling" in results:
        yield _scaling(results["scaling"], folder / f"scaling{suffix}.png")


def _scaling(scaling: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    for name, sizes in scaling.items():
        points = sorted(sizes.values(), key=lambda s: s["sessions"])
        xs = [p["sessions"] for p in points]
        style = {"color": _colour(name), "marker": "o", "label": name}
        axes[0].plot(xs, [_get(p, "update", "p50") for p in points], **style)
        axes[1].plot(xs, [_get(p, "open_first_read", "p50") for p in points], **style)
        axes[2].plot(xs, [p.get("memory", {}).get("python_peak") for p in points], **style)
    for ax, title, unit in zip(
        axes,
        ("update one session, p50", "cold open + first read, p50", "memory to open + read one (Python peak)"),
        ("seconds", "seconds", "bytes"),
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sessions in the store")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
