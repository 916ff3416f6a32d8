"""Adapters that keep a framework's state in an aiosessions store.

Each lives in its own module and imports its framework only there, so
``import aiosessions`` (and this package) imports none of them:

* :mod:`aiosessions.adapters.aiogram` -- aiogram 3 FSM storage and event isolation
  (``pip install "aiosessions[aiogram]"``);
* :mod:`aiosessions.adapters.ptb` -- python-telegram-bot persistence
  (``pip install "aiosessions[ptb]"``);
* :mod:`aiosessions.adapters.aiohttp` -- aiohttp-session storage
  (``pip install "aiosessions[aiohttp]"``).

Each works on every backend: pass a store path, a Redis URL, or a store you opened.
"""
