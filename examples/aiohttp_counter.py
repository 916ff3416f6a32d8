"""An aiohttp app whose sessions live in aiosessions: log in, count visits, survive a restart.

    python examples/aiohttp_counter.py            # the demo: a server, restarted mid-way
    python examples/aiohttp_counter.py serve STORE  # just the server (prints its URL)

The demo starts the server as a separate process on 127.0.0.1, logs in and counts
over real HTTP, stops the server (SIGTERM: it closes its store on the way out),
starts a new server process on the same store, and carries on with the same cookie:
still logged in, and the count goes on.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import aiohttp_session
from aiohttp import web

from aiosessions.adapters.aiohttp import AiosessionsStorage


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    session = await aiohttp_session.new_session(request)  # a fresh identity at login
    session["user"] = str(form["user"])
    return web.Response(text=f"welcome, {session['user']}")


async def count(request: web.Request) -> web.Response:
    session = await aiohttp_session.get_session(request)
    if "user" not in session:
        raise web.HTTPUnauthorized(text="log in first")
    session["visits"] = session.get("visits", 0) + 1
    return web.Response(text=f"{session['user']} has visited {session['visits']} times")


async def logout(request: web.Request) -> web.Response:
    session = await aiohttp_session.get_session(request)
    session.invalidate()
    return web.Response(text="logged out")


def make_app(store: str) -> web.Application:
    app = web.Application()
    storage = AiosessionsStorage(store, max_age=3600)
    aiohttp_session.setup(app, storage)
    app.on_cleanup.append(storage.on_cleanup)
    app.router.add_post("/login", login)
    app.router.add_get("/", count)
    app.router.add_post("/logout", logout)
    return app


async def serve(store: str) -> None:
    runner = web.AppRunner(make_app(store))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()  # runs on_cleanup: the store is flushed and closed


def start_server(store: str) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen([sys.executable, __file__, "serve", store], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def stop_server(server: subprocess.Popen[str]) -> None:
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert server.stdout is not None
    server.stdout.close()


async def demo() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "sessions.json")
        jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            server, url = start_server(store)
            print(f"server 1 at {url}")
            async with http.get(url) as response:
                print(f"GET /        -> {response.status} {await response.text()}")
            async with http.post(f"{url}/login", data={"user": "ada"}) as response:
                print(f"POST /login  -> {response.status} {await response.text()}")
            for _ in range(2):
                async with http.get(url) as response:
                    print(f"GET /        -> {response.status} {await response.text()}")
            stop_server(server)
            print("server 1 stopped")

            server, url = start_server(store)
            print(f"server 2 at {url} (same store)")
            try:
                async with http.get(url) as response:
                    print(f"GET /        -> {response.status} {await response.text()}")
                async with http.post(f"{url}/logout") as response:
                    print(f"POST /logout -> {response.status} {await response.text()}")
                async with http.get(url) as response:
                    print(f"GET /        -> {response.status} {await response.text()}")
            finally:
                stop_server(server)
            print("server 2 stopped")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(sys.argv[2]))
    else:
        asyncio.run(demo())
