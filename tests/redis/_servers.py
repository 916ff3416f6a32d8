"""Real redis-server processes for the tests that stop, kill or cluster a server (not a test module).

Each server runs on a free port in its own temporary directory (AOF, RDB and logs stay
there); nothing here touches the shared server on 6379.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port() -> int:
    """A TCP port free now (and its +10000 cluster bus port, which redis needs too)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisServer:
    """One redis-server: start, stop (SHUTDOWN NOSAVE), kill -9, restart on the same port and dir."""

    def __init__(self, directory: Path, *options: str, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.options = list(options)
        self.process: subprocess.Popen[bytes] | None = None
        self.socket_path = str(directory / "redis.sock")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--unixsocket",
            self.socket_path,
            "--unixsocketperm",
            "700",
            "--logfile",
            "redis.log",
            *self.options,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Loading an AOF answers PING with an error; INFO says when it is done.
                with self.client() as client:
                    if client.ping() and client.info("persistence").get("loading", 0) == 0:
                        return
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            if self.process is not None and self.process.poll() is not None:
                log = self.directory / "redis.log"
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} exited: {text}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        """kill -9: what the AOF has on disk is all that survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class RedisCluster:
    """``masters`` cluster-enabled servers joined by ``redis-cli --cluster create``."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.servers = [
            RedisServer(
                directory / f"node{n}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--appendonly",
                "no",
            )
            for n in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}"

    def start(self) -> RedisCluster:
        for server in self.servers:
            server.start()
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not installed")
        nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            states = []
            for server in self.servers:
                with server.client() as client:
                    states.append(client.execute_command("CLUSTER", "INFO").decode())
            if all("cluster_state:ok" in state for state in states):
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not come up: {states}")
            time.sleep(0.1)

    def stop(self) -> None:
        for server in self.servers:
            server.kill()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_url() -> str:
    """The shared test server (database 9 of the one on 6379, unless the environment says)."""
    return os.environ.get("AIOSESSIONS_TEST_REDIS", "redis://127.0.0.1:6379/9")
