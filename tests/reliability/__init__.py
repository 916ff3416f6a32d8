"""The reliability and security suite: disk faults, crashes, power loss, races, hostile input.

Every test comes in a short version that CI runs and, where a longer run finds more,
a ``soak`` version (``python -m pytest -m soak``). See docs/reliability.md.
"""
