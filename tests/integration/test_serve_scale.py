"""`condasync serve` at scale, on real servers: channel files in S3 (SeaweedFS) with
`--storage`, state in PostgreSQL with `--db`, and two replicas sharing both."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import zstandard

from condasync.storage.s3 import S3Storage
from tests.conftest import Channel, RattlerResult, mirror_args, ok
from tests.realservers import S3Server
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import FaultServer

ZLIB = "linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2"
DEPENDENT = "noarch/dependent-2.0-0.conda"


def test_mirror_to_s3_then_rattler_installs_through_serve_storage(
    tmp_path: Path,
    real_channel: Channel,
    channel_server: Any,
    s3_server: S3Server,
    s3_bucket: str,
    run_cli: Callable[..., Any],
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    rattler_install: Callable[..., RattlerResult],
) -> None:
    ok(
        run_cli(
            *mirror_args(channel_server.url, f"s3://{s3_bucket}/channels/static"), env=s3_server.env
        )
    )
    server = start_serve(
        tmp_path / "scratch", "--storage", f"s3://{s3_bucket}/channels", env=s3_server.env
    )
    c = server.client
    # the plain tree in the bucket is a channel, listed and served read-only
    assert "static" in [ch["name"] for ch in c.get("/api/channels").json()]
    listing = {p["name"] for p in c.get("/api/channels/static/packages").json()}
    assert {"dependent", "zlib"} <= listing

    index = c.get("/channels/static/linux-64/repodata.json")
    assert index.status_code == 200 and index.headers["etag"]
    assert b'"zlib-1.2.11-h7b6447c_3.tar.bz2"' in index.content
    again = c.get(
        "/channels/static/linux-64/repodata.json", headers={"If-None-Match": index.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    zst = c.head("/channels/static/linux-64/repodata.json.zst")
    assert zst.status_code == 200 and zst.headers["content-type"] == "application/zstd"
    expected = (real_channel.root / ZLIB).read_bytes()
    part = c.get(f"/channels/static/{ZLIB}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == expected[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(expected)}"
    assert c.get(f"/channels/static/{ZLIB}").content == expected
    assert (
        c.get(f"/channels/static/{ZLIB}", headers={"Range": "bytes=999999999-"}).status_code == 416
    )
    # CEP-16 shards made by the mirror run are served from the bucket too
    shard_index = c.get("/channels/static/linux-64/repodata_shards.msgpack.zst")
    assert (
        shard_index.status_code == 200 and "must-revalidate" in shard_index.headers["cache-control"]
    )
    for missing in (
        "/channels/static/linux-64/current_repodata.json",
        "/channels/static/linux-64/nothing-1.0-0.conda",
        "/channels/static/.condasync/state.json",
        "/channels/nochannel/noarch/repodata.json",
    ):
        assert c.get(missing).status_code == 404, missing

    result = rattler_install(f"{server.url}/channels/static", ["dependent", "_r-mutex"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"dependent", "_r-mutex"} <= {rec["name"] for rec in result.records}


def test_two_replicas_share_postgres_and_one_bucket(
    tmp_path: Path,
    fault_server: FaultServer,
    s3_server: S3Server,
    s3_bucket: str,
    postgres_url: str,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
) -> None:
    shared = ("--db", postgres_url, "--storage", f"s3://{s3_bucket}/serve")
    a = start_serve(tmp_path / "a", *shared, env=s3_server.env)
    b = start_serve(tmp_path / "b", *shared, env=s3_server.env)
    assert a.key and b.key is None  # one database: the owner key was made once, by A
    b.key = a.key

    # a channel created through A is listed and served by B
    assert a.create_channel("up", fault_server.url, "proxy").status_code == 201
    assert "up" in [ch["name"] for ch in b.client.get("/api/channels").json()]
    assert b.client.get("/api/channels/up").json()["mirror_mode"] == "proxy"

    # a package fetched through A's proxy is then served by B from the cache alone
    via_a = a.client.get(f"/channels/up/{ZLIB}")
    expected = (Path(fault_server.root) / ZLIB).read_bytes()
    assert via_a.status_code == 200 and via_a.content == expected
    assert a.client.get(f"/channels/up/{DEPENDENT}").status_code == 200
    fault_server.clear_log()
    for path in (ZLIB, DEPENDENT, "linux-64/repodata.json", "noarch/repodata.json.zst"):
        r = b.client.get(f"/channels/up/{path}")
        assert r.status_code == 200, (path, r.text)
    assert b.client.get(f"/channels/up/{ZLIB}").content == expected
    assert fault_server.log() == [], [e.path for e in fault_server.log()]
    cache = S3Storage(f"s3://{s3_bucket}/serve/up", env=s3_server.env)
    for subdir in ("linux-64", "noarch"):
        raw, zst = cache.read(f"{subdir}/repodata.json"), cache.read(f"{subdir}/repodata.json.zst")
        assert raw and zst and zstandard.ZstdDecompressor().decompressobj().decompress(zst) == raw
    assert not [o.relpath for o in cache.list(".condasync") if o.relpath.endswith(".lock")]

    # a synchronize asked of A and of B at the same moment runs once
    assert a.create_channel("mir", fault_server.url, "mirror", actions=[]).status_code == 201
    fault_server.fault(f"/{ZLIB}", "slow", chunk=32768, interval=0.1)  # keeps the sync busy
    fault_server.clear_log()
    answers: dict[str, dict[str, Any]] = {}

    def ask(name: str, replica: ServeProcess) -> None:
        r = replica.client.put(
            "/api/channels/mir/actions", json={"action": "synchronize"}, headers=replica.headers()
        )
        assert r.status_code == 200, r.text
        answers[name] = r.json()

    threads = [threading.Thread(target=ask, args=(n, r)) for n, r in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers["a"]["id"] == answers["b"]["id"], answers
    task_id = answers["a"]["id"]
    # and again through B while it runs: the running task
    time.sleep(0.3)
    during = b.client.put(
        "/api/channels/mir/actions", json={"action": "synchronize"}, headers=b.headers()
    ).json()
    assert during["id"] == task_id and during["status"] in ("pending", "running"), during
    done = b.wait_task(task_id)
    assert done["status"] == "success", done
    assert len(fault_server.requests_for(f"/{ZLIB}", "GET")) == 1  # one engine run, not two
    # the mirror lives in the bucket: read by B, and by anyone with the bucket
    assert b.client.get(f"/channels/mir/{ZLIB}").content == expected
    bucket = S3Storage(f"s3://{s3_bucket}/serve/mir", env=s3_server.env)
    assert bucket.stat(ZLIB) == (len(expected), bucket.stat(ZLIB)[1])  # type: ignore[index]
    assert bucket.stat("noarch/repodata.json") is not None
    listing = {p["name"] for p in a.client.get("/api/channels/mir/packages").json()}
    assert "dependent" in listing

    # deleted through B: gone for A too, files included
    assert b.client.delete("/api/channels/mir", headers=b.headers()).status_code == 200
    time.sleep(2.5)  # A trusts its channel rows for up to 2 s
    assert a.client.get(f"/channels/mir/{ZLIB}").status_code == 404
    assert bucket.list() == []


def test_s3_proxy_cache_holds_only_verified_files(
    tmp_path: Path,
    fault_server: FaultServer,
    s3_server: S3Server,
    s3_bucket: str,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
) -> None:
    server = start_serve(
        tmp_path / "scratch", "--storage", f"s3://{s3_bucket}/p", env=s3_server.env
    )
    assert server.create_channel("up", fault_server.url, "proxy").status_code == 201
    bucket = S3Storage(f"s3://{s3_bucket}/p/up", env=s3_server.env)
    expected = (Path(fault_server.root) / ZLIB).read_bytes()
    # a corrupt upstream file is never uploaded
    fault_server.fault(f"/{ZLIB}", "corrupt", times=1)
    try:
        r = server.client.get(f"/channels/up/{ZLIB}")
    except httpx.HTTPError:
        pass  # the connection was dropped mid-body: the client knows it failed
    else:
        assert r.status_code >= 500 or r.content != expected
    assert bucket.stat(ZLIB) is None
    # concurrent clients of a slow download share one upstream GET; the bucket gets the file
    fault_server.clear_log()
    fault_server.fault(f"/{ZLIB}", "slow", chunk=16384, interval=0.05)

    def get(_i: int) -> bytes:
        with httpx.Client(timeout=30, trust_env=False) as client:
            r = client.get(f"{server.url}/channels/up/{ZLIB}")
            assert r.status_code == 200
            return r.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(body == expected for body in pool.map(get, range(8)))
    assert len(fault_server.requests_for(f"/{ZLIB}", "GET")) == 1
    assert bucket.read(ZLIB) == expected
    assert server.client.get(f"/channels/up/{ZLIB}").content == expected
    assert len(fault_server.requests_for(f"/{ZLIB}", "GET")) == 1
    scratch = tmp_path / "scratch" / ".condasync" / "proxy-tmp"
    assert not [p for p in scratch.rglob("*") if p.is_file()]


def test_wrong_s3_credentials_stop_the_start(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, run_cli: Callable[..., Any]
) -> None:
    env = {**s3_server.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    args = ("serve", str(tmp_path), "--port", "9", "--storage", f"s3://{s3_bucket}/p")
    result = ok(run_cli(*args, env=env, timeout=60), 3)
    assert "access denied" in result.stderr.lower() or "signature" in result.stderr.lower()
    missing = ok(run_cli(*args[:-1], "s3://no-such-bucket-here/p", env=s3_server.env), 3)
    assert "does not exist" in missing.stderr


def test_postgres_db_alone(
    tmp_path: Path,
    channel_server: Any,
    postgres_url: str,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    run_cli: Callable[..., Any],
) -> None:
    server = start_serve(tmp_path / "channels", "--db", postgres_url)
    assert server.key
    assert server.create_channel("up", channel_server.url, "proxy").status_code == 201
    assert server.create_channel("up", channel_server.url, "proxy").status_code == 409
    assert [ch["name"] for ch in server.client.get("/api/channels").json()] == ["up"]
    assert server.client.get(f"/channels/up/{ZLIB}").status_code == 200
    assert (tmp_path / "channels" / "up" / ZLIB).is_file()
    assert not (tmp_path / "channels" / ".condasync" / "condasync.db").exists()
    # the offline key commands reach the same database
    made = ok(run_cli("apikey", "create", str(tmp_path / "channels"), "--db", postgres_url))
    key = made.stdout.strip()
    r = server.client.post(
        "/api/channels",
        json={"name": "m", "mirror_channel_url": channel_server.url, "mirror_mode": "mirror"},
        headers={"X-API-Key": key},
    )
    assert r.status_code == 403  # a member key: known to the server, without the role
    assert httpx.get(f"{server.url}/api/channels/up", timeout=10).status_code == 200
