"""The full comparison of aiosessions with legacy JSON and the stores users would pick instead.

Run it from the source tree with the ``bench`` extra installed::

    pip install -e ".[bench]"
    python -m benchmarks            # every contender, several minutes
    python -m benchmarks --quick    # a tiny run, to check that everything works

It writes ``benchmarks/results/results.json``, Markdown tables and PNG charts
(see docs/benchmarks.md). The workload generator, the legacy contender and the
measures shared with ``aiosessions bench`` live in ``aiosessions/_bench.py``.
"""
