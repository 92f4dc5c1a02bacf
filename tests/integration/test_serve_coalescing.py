"""Proxy channels: concurrent clients of one uncached package make exactly one upstream GET,
round after round (the window between a finished download and the next request is closed)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx

from tests.conftest import Channel
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import FaultServer

ZLIB = "linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2"
CLIENTS = 20
ROUNDS = 50


def test_twenty_clients_fifty_rounds_one_upstream_get_each(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    fault_server: FaultServer,
    real_channel: Channel,
) -> None:
    server = start_serve()
    assert server.create_channel("up", fault_server.url, "proxy").status_code == 201
    assert server.client.get("/channels/up/linux-64/repodata.json").status_code == 200
    expected = (real_channel.root / ZLIB).read_bytes()
    cached = server.root / "up" / ZLIB
    clients = [httpx.Client(timeout=30, trust_env=False) for _ in range(CLIENTS)]
    try:
        for round_no in range(ROUNDS):
            cached.unlink(missing_ok=True)  # uncached again: this round must fetch it
            before = len(fault_server.requests_for(f"/{ZLIB}", "GET"))
            barrier = threading.Barrier(CLIENTS)
            bodies: list[tuple[int, bytes]] = [(0, b"")] * CLIENTS

            def get(
                i: int,
                barrier: threading.Barrier = barrier,
                bodies: list[tuple[int, bytes]] = bodies,
            ) -> None:
                barrier.wait()
                r = clients[i].get(f"{server.url}/channels/up/{ZLIB}")
                bodies[i] = (r.status_code, r.content)

            threads = [threading.Thread(target=get, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert all(b == (200, expected) for b in bodies), round_no
            gets = len(fault_server.requests_for(f"/{ZLIB}", "GET")) - before
            assert gets == 1, f"round {round_no}: {gets} upstream GETs"
            assert cached.read_bytes() == expected
    finally:
        for c in clients:
            c.close()
