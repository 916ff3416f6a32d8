"""The aiohttp-session adapter: what aiohttp-session's own suite does not check."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("aiohttp_session", reason="the aiohttp extra is not installed")

import aiohttp_session
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import aiosessions.adapters.aiohttp as adapter
from aiosessions.adapters.aiohttp import AiosessionsStorage

from .conftest import Place

pytestmark = [
    pytest.mark.asyncio,
    # aiohttp >= 3.14 warns on aiohttp-session's own `request[SESSION_KEY] = session`.
    pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey instances for keys"),
]


async def counter(request: web.Request) -> web.Response:
    session = await aiohttp_session.get_session(request)
    if request.query.get("logout"):
        session.invalidate()
        return web.Response(text="bye")
    session["count"] = session.get("count", 0) + 1
    return web.Response(text=str(session["count"]))


def make_app(storage: AiosessionsStorage) -> web.Application:
    app = web.Application()
    aiohttp_session.setup(app, storage)
    app.router.add_get("/", counter)
    app.on_cleanup.append(storage.on_cleanup)
    return app


async def client_for(storage: AiosessionsStorage) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(storage)))
    await client.start_server()
    return client


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    """``advance(seconds)``: move the adapter's clock (expiry times) forward."""
    offset = [0]
    real = adapter.now_ms
    monkeypatch.setattr(adapter, "now_ms", lambda: real() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += int(seconds * 1000)

    yield advance


async def test_session_survives_a_restart_of_app_and_store(place: Place) -> None:
    client = await client_for(AiosessionsStorage(place.target, store_options=place.options))
    assert [await (await client.get("/")).text() for _ in range(3)] == ["1", "2", "3"]
    cookies = client.session.cookie_jar
    await client.close()  # on_cleanup closes the store the storage opened

    second = AiosessionsStorage(place.target, store_options=place.options)
    client = await client_for(second)
    client.session.cookie_jar.update_cookies({c.key: c.value for c in cookies})
    assert await (await client.get("/")).text() == "4"
    await client.close()


async def test_max_age_is_enforced_by_the_store(place: Place, clock: Callable[[float], None]) -> None:
    storage = AiosessionsStorage(place.target, max_age=60, store_options=place.options)
    client = await client_for(storage)
    response = await client.get("/")
    identity = response.cookies["AIOHTTP_SESSION"].value
    store = await storage._handle.store()
    assert (await store.get(storage.key_of(identity)))["expiresAt"] > adapter.now_ms()

    clock(61)
    # The browser still sends the cookie; the store must not hand the session back.
    client.session.cookie_jar.update_cookies({"AIOHTTP_SESSION": identity})
    assert await (await client.get("/")).text() == "1"
    assert await store.get(storage.key_of(identity)) is None, "an expired record is removed when read"
    await client.close()


async def test_purge_expired_removes_only_expired_sessions_of_this_storage(
    place: Place, clock: Callable[[float], None]
) -> None:
    handle = place.handle()
    store = await handle.store()
    short = AiosessionsStorage(store, max_age=10)
    other = AiosessionsStorage(store, cookie_name="OTHER", max_age=10)
    await store.set("unrelated", {"expiresAt": 1})
    client = await client_for(short)
    for _ in range(3):
        client.session.cookie_jar.clear()
        await client.get("/")
    await client.close()
    client = await client_for(other)
    await client.get("/")
    await client.close()
    keep = AiosessionsStorage(store, max_age=None)
    client = await client_for(keep)
    await client.get("/")
    await client.close()

    clock(11)
    assert await short.purge_expired() == 3
    assert await short.purge_expired() == 0
    keys = sorted([key async for key in store.keys()])
    assert len(keys) == 2 + 1, keys  # OTHER's session, the unexpiring one, "unrelated"
    assert "unrelated" in keys
    assert await other.purge_expired() == 1
    await handle.aclose()


async def test_a_corrupt_record_loads_as_a_new_session(place: Place) -> None:
    handle = place.handle()
    store = await handle.store()
    storage = AiosessionsStorage(store)
    client = await client_for(storage)
    response = await client.get("/")
    identity = response.cookies["AIOHTTP_SESSION"].value
    await store.flush()
    key = storage.key_of(identity)
    if place.backend == "directory":
        from aiosessions._keys import encode_key

        meta = place.path.with_name("sessions.d") / encode_key(key) / "meta.json"
        meta.write_bytes(b"\x00 not json")
    else:
        await store.set(key, {"neither": "record nor text"})
    response = await client.get("/")
    assert response.status == 200
    assert await response.text() == "1"
    await client.close()
    await handle.aclose()


async def test_invalidation_empties_the_record_and_forgets_the_identity(place: Place) -> None:
    handle = place.handle()
    store = await handle.store()
    storage = AiosessionsStorage(store)
    client = await client_for(storage)
    identity = (await client.get("/")).cookies["AIOHTTP_SESSION"].value
    response = await client.get("/?logout=1")
    assert response.cookies["AIOHTTP_SESSION"].value == ""
    assert (await store.get(storage.key_of(identity)))["record"] == {}
    # An attacker replaying the old identity gets a fresh session under a new identity.
    client.session.cookie_jar.update_cookies({"AIOHTTP_SESSION": identity})
    response = await client.get("/")
    assert await response.text() == "1"
    assert response.cookies["AIOHTTP_SESSION"].value != identity
    await client.close()
    await handle.aclose()


async def test_cookie_options_are_those_of_redis_storage(place: Place) -> None:
    storage = AiosessionsStorage(
        place.target,
        cookie_name="SID",
        domain="example.test",
        max_age=100,
        path="/app",
        secure=True,
        httponly=False,
        samesite="Strict",
        key_factory=lambda: "fixed-identity",
        store_options=place.options,
    )
    client = await client_for(storage)
    morsel = (await client.get("/")).cookies["SID"]
    assert morsel.value == "fixed-identity"
    assert (morsel["domain"], morsel["path"], morsel["max-age"]) == ("example.test", "/app", "100")
    assert morsel["secure"] and not morsel["httponly"] and morsel["samesite"] == "Strict"
    store = await storage._handle.store()
    entry = await store.get("aiohttp:SID:fixed-identity")
    assert entry is not None and entry["record"]["session"] == {"count": 1}
    assert isinstance(entry["updatedAt"], int)
    await client.close()


async def test_an_encoder_that_does_not_write_json_is_kept_as_text(place: Place) -> None:
    def encode(value: object) -> str:
        return base64.b64encode(json.dumps(value).encode()).decode()

    def decode(text: str) -> Any:
        return json.loads(base64.b64decode(text))

    storage = AiosessionsStorage(place.target, encoder=encode, decoder=decode, store_options=place.options)
    client = await client_for(storage)
    assert [await (await client.get("/")).text() for _ in range(2)] == ["1", "2"]
    identity = client.session.cookie_jar.filter_cookies(client.make_url("/"))["AIOHTTP_SESSION"].value
    entry = await (await storage._handle.store()).get(storage.key_of(identity))
    assert entry is not None and decode(entry["text"])["session"] == {"count": 2}
    await client.close()


async def test_storage_refuses_what_is_not_a_store() -> None:
    with pytest.raises(TypeError, match="store path"):
        AiosessionsStorage(None)  # type: ignore[arg-type]
