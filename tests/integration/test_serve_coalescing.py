"""Proxy channels: concurrent clients of one uncached package make exactly one upstream GET,
round after round (the window between a finished download and the next request is closed)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from condasync.storage.s3 import S3Storage
from tests.conftest import Channel
from tests.realservers import S3Server
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import FaultServer

ZLIB = "linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2"
CLIENTS = 20
ROUNDS = 50


def rounds(
    server: ServeProcess,
    fault_server: FaultServer,
    expected: bytes,
    uncache: Callable[[], None],
    is_cached: Callable[[], bool],
    n_rounds: int,
) -> None:
    """n_rounds of CLIENTS simultaneous GETs of one uncached package: one upstream GET each."""
    clients = [httpx.Client(timeout=30, trust_env=False) for _ in range(CLIENTS)]
    try:
        for round_no in range(n_rounds):
            uncache()  # uncached again: this round must fetch it
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
            assert all(b == (200, expected) for b in bodies), (round_no, [b[0] for b in bodies])
            gets = len(fault_server.requests_for(f"/{ZLIB}", "GET")) - before
            assert gets == 1, f"round {round_no}: {gets} upstream GETs"
            assert is_cached()
    finally:
        for c in clients:
            c.close()


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
    rounds(
        server,
        fault_server,
        expected,
        lambda: cached.unlink(missing_ok=True),
        lambda: cached.read_bytes() == expected,
        ROUNDS,
    )


def test_object_store_rounds_one_upstream_get_each(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    fault_server: FaultServer,
    real_channel: Channel,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    """The same in S3 (SeaweedFS), where the upload is awaited and the finished download
    stays joinable; an object deleted since is fetched again, not answered 404."""
    server = start_serve(
        tmp_path / "scratch", "--storage", f"s3://{s3_bucket}/serve", env=s3_server.env
    )
    assert server.create_channel("up", fault_server.url, "proxy").status_code == 201
    assert server.client.get("/channels/up/linux-64/repodata.json").status_code == 200
    expected = (real_channel.root / ZLIB).read_bytes()
    bucket = S3Storage(f"s3://{s3_bucket}/serve/up", env=s3_server.env)
    rounds(
        server,
        fault_server,
        expected,
        lambda: bucket.delete(ZLIB) if bucket.stat(ZLIB) else None,
        lambda: bucket.read(ZLIB) == expected,
        20,
    )
