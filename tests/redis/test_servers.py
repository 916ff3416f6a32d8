"""Servers the tests start themselves: TLS (rediss://) and a replica (WAIT after durable batches)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiosessions
from aiosessions import SessionEntry, open_store

from ._servers import RedisServer, free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: it makes the TLS test's certificates")
    files = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=aiosessions test CA",
        "-keyout",
        str(files["ca-key"]),
        "-out",
        str(files["ca"]),
    )
    request = folder / "server.csr"
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(files["server-key"]),
        "-out",
        str(request),
    )
    extensions = folder / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(request),
        "-CA",
        str(files["ca"]),
        "-CAkey",
        str(files["ca-key"]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(extensions),
        "-out",
        str(files["server"]),
    )
    return files


async def test_a_rediss_url_over_tls(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    port = free_port()
    server = RedisServer(
        tmp_path / "tls",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(certificates["server"]),
        "--tls-key-file",
        str(certificates["server-key"]),
        "--tls-ca-cert-file",
        str(certificates["ca"]),
        "--tls-auth-clients",
        "no",
    )
    server.start()
    try:
        url = f"rediss://127.0.0.1:{port}/0?prefix=tls&ssl_ca_certs={certificates['ca']}"
        async with open_store(url, flush_interval=0) as store:
            assert store.path.startswith(f"rediss://127.0.0.1:{port}/0")
            await store.set("k", SessionEntry(session_id="over TLS"))
            entry = await store.get("k")
            assert entry is not None and entry.session_id == "over TLS"
        # Without the CA the server's certificate is refused, and the error names the server.
        with pytest.raises(aiosessions.StoreIOError, match=f"rediss://127.0.0.1:{port}"):
            async with open_store(f"rediss://127.0.0.1:{port}/0?prefix=tls"):
                pass
    finally:
        server.kill()


async def wait_in_sync(replica: RedisServer) -> None:
    with replica.client() as client:
        for _ in range(400):
            if client.info("replication").get("master_link_status") == "up":
                return
            await anyio.sleep(0.05)
    raise TimeoutError("the replica did not sync")


async def test_durable_batches_wait_for_a_replica(redis_server: Any) -> None:
    primary = redis_server()
    replica = redis_server("--replicaof", "127.0.0.1", str(primary.port))
    await wait_in_sync(replica)
    url = f"{primary.url}?prefix=waited&replicas=1&replica_timeout=0.5"
    async with open_store(url, flush_interval=3600) as store:
        await store.set("k", SessionEntry(session_id="on two servers"), durable=True)
        with replica.client() as client:
            assert client.get("{waited/0}:s:k") == b'{"sessionId":"on two servers"}'
        replica.kill()
        await store.set("k", SessionEntry(session_id="on one server"))
        with pytest.raises(aiosessions.FlushError, match="0 of 1 replica"):
            await store.flush()
        assert store.statistics().pending == 1  # visible, kept, and written again
        replica.start()
        await wait_in_sync(replica)
        await store.flush()
        assert store.statistics().pending == 0
        with replica.client() as client:
            assert client.get("{waited/0}:s:k") == b'{"sessionId":"on one server"}'
