"""Helpers for the `condasync serve` tests: the server as a real subprocess on a free port."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT, cli_command, cli_env
from tests.servers import free_port

KEY_LINE = re.compile(r"API key.*?: (\S+)")


class ServeProcess:
    """`condasync serve DIR --port P ...`; `.key` is the owner key printed at first start."""

    def __init__(
        self, root: Path, *args: str, logs: Path, env: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.port = free_port()
        self.args = ("serve", str(root), "--port", str(self.port), *args)
        self._out = logs / f"serve-{self.port}.out"
        self._err = logs / f"serve-{self.port}.err"
        self.proc = subprocess.Popen(
            cli_command(*self.args),
            stdout=self._out.open("w"),
            stderr=self._err.open("w"),
            stdin=subprocess.DEVNULL,
            env=cli_env(env),
            cwd=REPO_ROOT,
        )
        self._wait_up()
        match = KEY_LINE.search(self.stdout)
        self.key: str | None = match.group(1) if match else None
        self.client = httpx.Client(base_url=self.url, timeout=30, trust_env=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return self._out.read_text()

    @property
    def stderr(self) -> str:
        return self._err.read_text()

    def _wait_up(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.stderr}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"serve did not come up:\n{self.stderr}")

    def headers(self, key: str | None = None) -> dict[str, str]:
        key = key or self.key
        assert key
        return {"X-API-Key": key}

    def create_channel(self, name: str, url: str, mode: str, **extra: Any) -> httpx.Response:
        body = {"name": name, "private": False, "mirror_channel_url": url, "mirror_mode": mode}
        body.update(extra)
        return self.client.post("/api/channels", json=body, headers=self.headers())

    def wait_task(self, task_id: int, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task: dict[str, Any] = self.client.get(f"/api/tasks/{task_id}").json()
            if task["status"] in ("success", "failed"):
                return task
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} did not finish")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """start_serve(root=None, *args, env=None) -> a running ServeProcess, stopped at teardown;
    env adds variables (say, AWS_*) to the server's environment."""
    started: list[ServeProcess] = []
    logs = tmp_path / "serve-logs"
    logs.mkdir(exist_ok=True)

    def start(
        root: Path | None = None, *args: str, env: dict[str, str] | None = None
    ) -> ServeProcess:
        server = ServeProcess(root or tmp_path / "channels", *map(str, args), logs=logs, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def start_serve_shared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServeProcess]]:
    """Like start_serve, for a server shared by a whole test module."""
    started: list[ServeProcess] = []
    base = tmp_path_factory.mktemp("serve")
    logs = base / "serve-logs"
    logs.mkdir(exist_ok=True)

    def start(root: Path | None = None, *args: str) -> ServeProcess:
        server = ServeProcess(root or base / "channels", *map(str, args), logs=logs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def raw_get(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send a request line exactly as given (no client-side normalisation of `..` or `%2e`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body
