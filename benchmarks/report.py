"""Markdown tables and PNG charts from ``results.json``.

Every figure is shown beside the legacy baseline and the physical limit of the
same fsync setting, as ratios from the same run, in words: "vs legacy" and "vs
limit" say how many times better (faster, more operations per second, less lag)
or worse the row is.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiosessions._bench import format_bytes, format_comparison, format_rate, format_ratio, format_seconds

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
    return format_comparison(value / base if higher_is_better else base / value)


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
    if results.get("open"):
        out += ["### Open + get one session + close, against the physical floor", ""]
        rows = [
            [
                f"{row['sessions']:,}",
                format_seconds(_get(row, "open", "p50")),
                format_ratio(row["ratio"]),
                format_seconds(_get(row, "backend", "p50")),
                format_ratio(row["backend_ratio"]),
                format_seconds(_get(row, "floor", "p50")),
            ]
            for row in results["open"]
        ]
        out += [
            _markdown(
                ["sessions", "open_store + get + close", "ratio", "backend alone", "ratio", "floor"],
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
    if "writes" in results:
        # Rendered by aiosessions._bench in the run (the tables `aiosessions bench --writes` and
        # `--writes --redis` print), kept verbatim in a code block.
        redis = "; Redis" if "redis" in results["writes"] else ""
        out += [f"### Write cost: one-field update of 2 KB vs 120 KB entries; SQLite{redis}", "", "```"]
        out += [results["writes"]["table"], "```", ""]
    # The Redis and listing stages write files of their own (redis.md, listing.md), shown in
    # sections of their own in docs/benchmarks.md.
    return "\n".join(out)


# -- charts ------------------------------------------------------------------------------------
#
# Drawn for the documentation page: 7 inches wide (the width of the page's text column, about
# 700 pixels) at 200 dots per inch, so that a 10-point label stays a 10-point label on screen
# and sharp on high-density displays. Axes read in the units of the tables (µs, ms, KB), not
# in powers of ten.

_COLOURS = {
    "legacy": "#c0392b",
    "aiosessions": "#2471a3",
    "SQLite": "#7d3c98",
    "diskcache": "#ca6f1e",
    "aiofiles": "#839192",
    "physical": "#1e8449",
}
#: Inches: the page's text column.
_WIDTH = 7.0
_DPI = 200
_FSYNC = " +fsync"


def _colour(name: str) -> str:
    for prefix, colour in _COLOURS.items():
        if name.startswith(prefix):
            return colour
    return "#555555"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "xtick.labelsize": 9,
            "ytick.labelsize": 10,
            "legend.fontsize": 9,
        }
    )
    return plt


def _count(n: float) -> str:
    """A compact tick label for a rate: ``0.1``, ``1``, ``100``, ``10k``."""
    if n >= 1000:
        return f"{n / 1000:g}k"
    return f"{n:g}"


def _title(fig: Any, title: str) -> None:
    """The chart's title, left-aligned over the whole figure and wrapped to its width."""
    lines = [textwrap.fill(line, 76) for line in title.split("\n")]
    fig.suptitle("\n".join(lines), x=0.02, ha="left", fontsize=11)


def _axis_format(fmt: Any) -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: fmt(value) if value > 0 else "")


def _bars(
    path: Path,
    title: str,
    items: list[tuple[str, float]],
    *,
    xlabel: str,
    fmt: Any,
    ticks: Any = None,
) -> Path:
    """Horizontal bars on a log scale, one row per contender, fsync off and on side by side."""
    plt = _pyplot()
    values = {name: value for name, value in items if value is not None and value > 0}
    groups = list(dict.fromkeys(name.removesuffix(_FSYNC) for name in values))
    fig, ax = plt.subplots(figsize=(_WIDTH, 0.62 * len(groups) + 1.5), dpi=_DPI)
    for row, group in enumerate(groups):
        for offset, name, alpha in ((-0.2, group, 0.45), (0.2, group + _FSYNC, 1.0)):
            if name not in values:
                continue
            ax.barh(row + offset, values[name], height=0.38, color=_colour(group), alpha=alpha)
            ax.text(values[name], row + offset, " " + fmt(values[name]), va="center", fontsize=8.5)
    ax.set_yticks(range(len(groups)), [textwrap.fill(group, 24, break_on_hyphens=False) for group in groups])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_axis_format(ticks or fmt))
    ax.xaxis.set_minor_formatter(_axis_format(lambda _: ""))
    ax.set_xlabel(xlabel)
    _title(fig, title)
    ax.margins(x=0.3)
    ax.grid(True, axis="x", which="major", alpha=0.3)
    from matplotlib.patches import Patch

    shades = [Patch(color="#777777", alpha=0.45, label="fsync off"), Patch(color="#777777", label="fsync on")]
    fig.legend(handles=shades, loc="lower right", bbox_to_anchor=(0.97, 0.0), ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def _series(section: dict[str, Any], measure: str, stat: str) -> list[tuple[str, float]]:
    return [(name, v) for name, row in section.items() if (v := _get(row, measure, stat)) is not None]


def charts(results: dict[str, Any], folder: Path, *, suffix: str = "") -> Iterable[Path]:
    """Write the PNG charts into ``folder``; yield their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stores = results.get("stores", {})
    if "redis" in results:
        from . import several_hosts

        yield from several_hosts.charts(results["redis"], folder, suffix=suffix)
    if "headline" in results:
        section = results["headline"]
        store = stores["headline"]
        where = f"{store['sessions']:,} sessions, {format_bytes(store['bytes'])}"
        yield _bars(
            folder / f"update{suffix}.png",
            f"Update one session, p50 ({where})\nshorter is faster",
            _series(section, "update", "p50"),
            xlabel="seconds, log scale",
            fmt=format_seconds,
        )
        yield _bars(
            folder / f"cold-read{suffix}.png",
            f"Read one session not in the store's cache, p50 ({where})\nshorter is faster",
            _series(section, "get_cold", "p50"),
            xlabel="seconds, log scale",
            fmt=format_seconds,
        )
        yield _bars(
            folder / f"loop-lag{suffix}.png",
            f"Event-loop lag p99, mixed workload at {results['plan']['paced_rate']:g} ops/s ({where})"
            "\nshorter keeps other tasks waiting less",
            [(n, v) for n, v in _series(section, "paced_lag", "p99") if not n.startswith("physical")],
            xlabel="seconds, log scale",
            fmt=format_seconds,
        )
    if "throughput" in results:
        section = results["throughput"]
        store = stores["10k"]
        where = f"{store['sessions']:,} sessions"
        yield _bars(
            folder / f"mixed{suffix}.png",
            f"Mixed workload: 100 tasks, 80% reads ({where})\nlonger does more",
            _series(section, "mixed", "rate"),
            xlabel="operations per second, log scale",
            fmt=format_rate,
            ticks=_count,
        )
        yield _bars(
            folder / f"distinct-writes{suffix}.png",
            f"Writes of distinct sessions, with the final flush ({where})\nlonger does more",
            _series(section, "distinct_writes", "rate"),
            xlabel="writes per second, log scale",
            fmt=format_rate,
            ticks=_count,
        )
    if "scaling" in results:
        yield _scaling(results["scaling"], folder / f"scaling{suffix}.png")


def _scaling(scaling: dict[str, Any], path: Path) -> Path:
    """Three panels stacked (each as wide as the page), one line per contender."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(_WIDTH, 9.0), dpi=_DPI, sharex=True)
    panels = (
        ("Update one session, p50", lambda p: _get(p, "update", "p50"), format_seconds),
        (
            "Open the store, read one session, p50",
            lambda p: _get(p, "open_first_read", "p50"),
            format_seconds,
        ),
        (
            "Memory to open the store and read one session (Python heap peak)",
            lambda p: p.get("memory", {}).get("python_peak"),
            format_bytes,
        ),
    )
    for name, sizes in scaling.items():
        points = sorted(sizes.values(), key=lambda s: s["sessions"])
        xs = [p["sessions"] for p in points]
        for ax, (_, value, _fmt) in zip(axes, panels, strict=True):
            ax.plot(xs, [value(p) for p in points], color=_colour(name), marker="o", linewidth=2, label=name)
    for ax, (title, _, fmt) in zip(axes, panels, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_axis_format(fmt))
        ax.yaxis.set_minor_formatter(_axis_format(lambda _: ""))
        ax.set_title(title, loc="left")
        ax.grid(True, which="major", alpha=0.3)
    axes[-1].set_xlabel("sessions in the store, log scale")
    axes[-1].xaxis.set_major_formatter(_axis_format(lambda n: f"{n:,.0f}"))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Draw the tables and charts again from a results file (``python -m benchmarks.report``)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    results = Path(__file__).resolve().parent / "results"
    parser.add_argument("results", nargs="?", type=Path, default=results / "results.json")
    parser.add_argument(
        "--charts",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "docs" / "assets" / "benchmarks",
        help="where the PNG charts go (default: the documentation's)",
    )
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text("utf-8"))
    (args.results.parent / "tables.md").write_text(tables(data), encoding="utf-8")
    for path in charts(data, args.charts):
        print(f"chart: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
