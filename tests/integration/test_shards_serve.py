"""Shards (CEP-16) through `condasync serve`: static and mirror channels serve them with the
right cache headers and no traversal; proxy channels pass upstream's shards through."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REAL_SUBDIRS, index_records, mirror_args, ok
from tests.serve_support import ServeProcess, raw_get, start_serve  # noqa: F401
from tests.servers import ChannelServer, FaultServer
from tests.shard_support import (
    SHARD_INDEX,
    LoggingRelay,
    client_records,
    read_index,
    unpack,
)

IMMUTABLE = "public, max-age=31536000, immutable"


def _only_shards(paths: list[str]) -> None:
    assert any(p.endswith(SHARD_INDEX) for p in paths), paths
    assert any("/shards/" in p for p in paths), paths
    assert not [p for p in paths if "repodata.json" in p], paths


def _check_client(url: str, tmp_path: Path, tree: Path) -> None:
    """Through a logging relay: the client reads only shards, and gets repodata.json's records."""
    relay = LoggingRelay(url)
    try:
        for subdir in REAL_SUBDIRS:
            published = index_records(tree, subdir)
            names = sorted({fn.rsplit("-", 2)[0] for fn in published})
            relay.log.clear()
            got = client_records(relay.url, tmp_path, True, subdir, names)
            _only_shards(relay.paths())
            assert sorted(got) == sorted(published)
            for fn, record in got.items():
                assert record.get("sha256") == published[fn].get("sha256")
                assert record.get("md5") == published[fn].get("md5")
                assert record["depends"] == published[fn].get("depends", [])
                assert record["url"] == f"{relay.url}/{subdir}/{fn}"
    finally:
        relay.close()


def _upstream(
    tmp_path: Path,
    channel_server: ChannelServer,
    serve: Callable[..., ChannelServer],
    run_cli: Callable[..., object],
    cls: type[ChannelServer] = FaultServer,
) -> tuple[Path, ChannelServer]:
    """A mirror of the test channel (shards and all) in `tmp_path/up`, served as an upstream."""
    tree = tmp_path / "up"
    ok(run_cli(*mirror_args(channel_server.url, tree)))
    return tree, serve(tree, cls=cls)


def test_static_channel_serves_shards(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    run_cli,
) -> None:
    root = tmp_path / "channels"
    ok(run_cli(*mirror_args(channel_server.url, root / "static")))
    shutil.rmtree(root / "static" / ".condasync")
    server = start_serve(root)
    c = server.client
    index = read_index(root / "static", "noarch")
    assert index is not None
    digest = index["shards"]["dependent"].hex()
    shard = c.get(f"/channels/static/noarch/shards/{digest}.msgpack.zst")
    assert shard.status_code == 200
    assert shard.headers["cache-control"] == IMMUTABLE
    assert hashlib.sha256(shard.content).hexdigest() == digest
    assert "dependent-2.0-0.conda" in unpack(shard.content)["packages.conda"]
    r = c.get(f"/channels/static/noarch/{SHARD_INDEX}")
    assert r.status_code == 200 and "must-revalidate" in r.headers["cache-control"]
    again = c.get(
        f"/channels/static/noarch/{SHARD_INDEX}", headers={"if-none-match": r.headers["etag"]}
    )
    assert again.status_code == 304 and again.headers["etag"] == r.headers["etag"]
    assert c.head(f"/channels/static/noarch/shards/{digest}.msgpack.zst").status_code == 200
    (root / "secret.txt").write_text("secret")
    for target in (
        "/channels/static/noarch/shards/../repodata.json",
        "/channels/static/noarch/shards/%2e%2e/repodata.json",
        "/channels/static/noarch/shards/..%2f..%2f..%2fsecret.txt",
        "/channels/static/noarch/shards/" + "0" * 64 + ".msgpack.zst",
        "/channels/static/noarch/shards/" + "A" * 64 + ".msgpack.zst",
        "/channels/static/noarch/shards/x/" + digest + ".msgpack.zst",
        "/channels/static/shards/" + digest + ".msgpack.zst",
        "/nochannels/static/noarch/shards/" + digest + ".msgpack.zst",
    ):
        status, body = raw_get(server.port, target)
        assert status == 404, (target, status)
        assert b"secret" not in body
    _check_client(f"{server.url}/channels/static", tmp_path, root / "static")


def test_mirror_channel_serves_shards(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
) -> None:
    server = start_serve()
    assert server.create_channel("m", channel_server.url, "mirror").status_code == 201
    r = server.client.put(
        "/api/channels/m/actions", json={"action": "synchronize"}, headers=server.headers()
    )
    assert server.wait_task(r.json()["id"])["status"] == "success"
    tree = server.root / "m"
    assert (tree / "noarch" / SHARD_INDEX).is_file()
    _check_client(f"{server.url}/channels/m", tmp_path, tree)
    c = server.client
    digest = read_index(tree, "noarch")["shards"]["dependent"].hex()
    shard = c.get(f"/channels/m/noarch/shards/{digest}.msgpack.zst")
    assert shard.status_code == 200 and shard.headers["cache-control"] == IMMUTABLE
    assert hashlib.sha256(shard.content).hexdigest() == digest
    index = c.get(f"/channels/m/noarch/{SHARD_INDEX}")
    assert index.status_code == 200 and "must-revalidate" in index.headers["cache-control"]
    again = c.get(
        f"/channels/m/noarch/{SHARD_INDEX}", headers={"if-none-match": index.headers["etag"]}
    )
    assert again.status_code == 304


def test_proxy_channel_passes_upstream_shards_through(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    serve: Callable[..., ChannelServer],
    run_cli,
) -> None:
    upstream_tree, upstream = _upstream(tmp_path, channel_server, serve, run_cli)
    server = start_serve()
    assert server.create_channel("p", upstream.url, "proxy", ttl=1).status_code == 201
    url = f"{server.url}/channels/p"
    _check_client(url, tmp_path, upstream_tree)
    cached = server.root / "p" / "noarch" / SHARD_INDEX
    info = unpack(cached.read_bytes())["info"]
    assert info["base_url"] == "./" and info["shards_base_url"] == "./shards/"
    shards = list((server.root / "p" / "noarch" / "shards").iterdir())
    assert shards and all(hashlib.sha256(p.read_bytes()).hexdigest() in p.name for p in shards)
    # shards are never fetched twice
    upstream.clear_log()
    digest = read_index(upstream_tree, "noarch")["shards"]["dependent"].hex()
    r = server.client.get(f"/channels/p/noarch/shards/{digest}.msgpack.zst")
    assert r.status_code == 200 and r.headers["cache-control"] == IMMUTABLE
    assert not upstream.requests_for(f"/noarch/shards/{digest}.msgpack.zst")
    # upstream 5xx on the shard index: the cached copy is served
    time.sleep(1.2)
    upstream.fault(f"/noarch/{SHARD_INDEX}", "500", times=None)
    r = server.client.get(f"/channels/p/noarch/{SHARD_INDEX}")
    assert r.status_code == 200, r.text
    time.sleep(0.3)
    assert server.client.get(f"/channels/p/noarch/{SHARD_INDEX}").status_code == 200
    # upstream gone entirely: cached shards still served
    upstream.stop()
    assert server.client.get(f"/channels/p/noarch/shards/{digest}.msgpack.zst").status_code == 200


def test_proxy_without_upstream_shards_is_404(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    serve: Callable[..., ChannelServer],
    real_channel,
) -> None:
    upstream = serve(real_channel.root, cls=FaultServer)
    server = start_serve()
    assert server.create_channel("p", upstream.url, "proxy").status_code == 201
    r = server.client.get(f"/channels/p/noarch/{SHARD_INDEX}")
    assert r.status_code == 404
    r = server.client.get("/channels/p/noarch/shards/" + "ab" * 32 + ".msgpack.zst")
    assert r.status_code == 404
    # and the client falls back to repodata.json, which the proxy serves
    relay = LoggingRelay(f"{server.url}/channels/p")
    try:
        got = client_records(relay.url, tmp_path, True, "noarch", ["dependent"])
        assert sorted(got) == ["dependent-1.0-0.conda", "dependent-2.0-0.conda"]
        assert any("/noarch/repodata.json" in p for p in relay.paths()), relay.log
    finally:
        relay.close()
    # upstream answering 500 with no cached copy: still 404 (the client falls back)
    upstream.fault(f"/linux-64/{SHARD_INDEX}", "500", times=None)
    assert server.client.get(f"/channels/p/linux-64/{SHARD_INDEX}").status_code == 404


def test_nginx_example_serves_shards(
    tmp_path: Path, channel_server: ChannelServer, mirror_dir: Path, run_cli
) -> None:
    import httpx
    import pytest

    from tests.realservers import find_nginx, run_nginx

    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx not installed (apt-get install -y --no-install-recommends nginx-light)")
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    channel_server.stop()
    with run_nginx(nginx, mirror_dir, tmp_path / "nginx") as server:
        for subdir in REAL_SUBDIRS:
            published = index_records(mirror_dir, subdir)
            names = sorted({fn.rsplit("-", 2)[0] for fn in published})
            got = client_records(server.url, tmp_path, True, subdir, names)
            assert sorted(got) == sorted(published)
        log = (server.prefix / "logs" / "access.log").read_text()
        assert "/shards/" in log and SHARD_INDEX in log
        assert "repodata.json" not in log
        digest = read_index(mirror_dir, "noarch")["shards"]["dependent"].hex()
        with httpx.Client(trust_env=False, timeout=30) as c:
            shard = c.get(f"{server.url}/noarch/shards/{digest}.msgpack.zst")
            assert shard.status_code == 200
            assert shard.headers["cache-control"] == IMMUTABLE
            index = c.get(f"{server.url}/noarch/{SHARD_INDEX}")
            assert "must-revalidate" in index.headers["cache-control"]
            assert index.headers["content-type"] == "application/zstd"
            again = c.get(
                f"{server.url}/noarch/{SHARD_INDEX}",
                headers={"if-none-match": index.headers["etag"]},
            )
            assert again.status_code == 304
            missing = c.get(f"{server.url}/noarch/shards/{'0' * 64}.msgpack.zst")
            assert missing.status_code == 404


def test_proxy_shards_and_repodata_are_one_snapshot(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    real_channel,
    channel_server: ChannelServer,
    serve: Callable[..., ChannelServer],
    run_cli,
) -> None:
    from tests.shard_support import shard_records

    upstream_tree, upstream = _upstream(tmp_path, channel_server, serve, run_cli, ChannelServer)
    server = start_serve()
    assert server.create_channel("p", upstream.url, "proxy", ttl=1).status_code == 201
    c = server.client

    def proxy_view() -> tuple[dict, dict]:
        index = unpack(c.get(f"/channels/p/noarch/{SHARD_INDEX}").content)
        shards = {}
        for digest in index["shards"].values():
            r = c.get(f"/channels/p/noarch/shards/{digest.hex()}.msgpack.zst")
            assert r.status_code == 200
            for key in ("packages", "packages.conda"):
                for fn, rec in unpack(r.content)[key].items():
                    shards[fn] = {k: v.hex() if isinstance(v, bytes) else v for k, v in rec.items()}
        doc = c.get("/channels/p/noarch/repodata.json").json()
        return shards, {**doc["packages"], **doc["packages.conda"]}

    shards, records = proxy_view()
    assert shards == records == shard_records(upstream_tree, "noarch")
    # upstream patches a record (new shard, new repodata.json)
    real_channel.record("noarch", "dependent-2.0-0.conda")["depends"] = ["dependency >=2"]
    real_channel.write()
    ok(run_cli(*mirror_args(channel_server.url, upstream_tree)))
    time.sleep(1.3)
    c.get("/channels/p/noarch/repodata.json")  # stale: served at once, refreshed behind
    deadline = time.monotonic() + 10
    while True:
        shards, records = proxy_view()
        if shards["dependent-2.0-0.conda"]["depends"] == ["dependency >=2"]:
            # shards are refreshed right after repodata.json, never before it
            assert shards == records
            break
        assert time.monotonic() < deadline, "the proxy never picked up the new snapshot"
        time.sleep(0.2)


def test_proxy_rewrites_absolute_upstream_urls_and_verifies_shards(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    serve: Callable[..., ChannelServer],
    run_cli,
) -> None:
    """An upstream whose shard index points at absolute URLs (its own host, shards in another
    folder): the proxy fetches shards from there, verifies each against its name, and clients
    only ever see the proxy's own relative URLs."""
    import zstandard

    from condasync.channel.shards import rewrite_index_urls

    upstream_tree, upstream = _upstream(tmp_path, channel_server, serve, run_cli)
    noarch = upstream_tree / "noarch"
    (noarch / "shards").rename(noarch / "cdn")
    index_path = noarch / SHARD_INDEX
    index_path.write_bytes(
        rewrite_index_urls(
            index_path.read_bytes(), f"{upstream.url}/noarch/", f"{upstream.url}/noarch/cdn/"
        )
    )
    server = start_serve()
    assert server.create_channel("p", upstream.url, "proxy").status_code == 201
    c = server.client
    r = c.get(f"/channels/p/noarch/{SHARD_INDEX}")
    assert r.status_code == 200
    assert zstandard.frame_content_size(r.content) > 0
    info = unpack(r.content)["info"]
    assert info["base_url"] == "./" and info["shards_base_url"] == "./shards/", info
    assert upstream.url not in r.content.decode("latin-1")
    assert "must-revalidate" in r.headers["cache-control"]
    again = c.get(f"/channels/p/noarch/{SHARD_INDEX}", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304
    # a shard whose bytes do not hash to its name is refused and not cached
    digest = read_index(upstream_tree, "noarch")["shards"]["dependent"].hex()
    other = read_index(upstream_tree, "noarch")["shards"]["dependency"].hex()
    shard = noarch / "cdn" / f"{digest}.msgpack.zst"
    good = shard.read_bytes()
    shard.write_bytes((noarch / "cdn" / f"{other}.msgpack.zst").read_bytes())
    bad = c.get(f"/channels/p/noarch/shards/{digest}.msgpack.zst")
    assert bad.status_code == 502, bad.status_code
    assert not (server.root / "p" / "noarch" / "shards" / f"{digest}.msgpack.zst").exists()
    shard.write_bytes(good)
    r = c.get(f"/channels/p/noarch/shards/{digest}.msgpack.zst")
    assert r.status_code == 200 and r.content == good
    assert r.headers["cache-control"] == IMMUTABLE
    assert upstream.requests_for(f"/noarch/cdn/{digest}.msgpack.zst")
    # traversal through the shard route of a proxy channel
    (server.root / "secret.txt").write_text("secret")
    for target in (
        "/channels/p/noarch/shards/../repodata.json",
        "/channels/p/noarch/shards/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/channels/p/noarch/shards/..%2f..%2f..%2fsecret.txt",
        "/channels/p/noarch/shards/" + "0" * 64 + ".msgpack.zst",
    ):
        status, body = raw_get(server.port, target)
        assert status == 404, (target, status)
        assert b"secret" not in body
    # a client through the proxy reads shards from the proxy only
    upstream.clear_log()
    relay = LoggingRelay(f"{server.url}/channels/p")
    try:
        names = sorted({fn.rsplit("-", 2)[0] for fn in index_records(upstream_tree, "noarch")})
        got = client_records(relay.url, tmp_path, True, "noarch", names)
        _only_shards(relay.paths())
        assert sorted(got) == sorted(index_records(upstream_tree, "noarch"))
        assert all(rec["url"] == f"{relay.url}/noarch/{fn}" for fn, rec in got.items())
    finally:
        relay.close()
    assert not [r.path for r in upstream.log() if r.path.endswith(".conda")]


def test_proxy_serves_its_cached_shard_index_when_upstream_fails_after_a_change(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    serve: Callable[..., ChannelServer],
    run_cli,
) -> None:
    """Upstream's repodata.json changed (the cached shard index is of the old snapshot) and
    its shard index now answers 500: the cached copy is served, not a 404 or a 5xx."""
    import json

    import zstandard

    upstream_tree, upstream = _upstream(tmp_path, channel_server, serve, run_cli)
    server = start_serve()
    assert server.create_channel("p", upstream.url, "proxy", ttl=1).status_code == 201
    c = server.client
    cached = c.get(f"/channels/p/noarch/{SHARD_INDEX}")
    assert cached.status_code == 200
    doc = json.loads((upstream_tree / "noarch" / "repodata.json").read_bytes())
    doc["packages.conda"]["dependent-2.0-0.conda"]["depends"] = ["dependency >=2"]
    data = json.dumps(doc).encode()
    (upstream_tree / "noarch" / "repodata.json").write_bytes(data)
    (upstream_tree / "noarch" / "repodata.json.zst").write_bytes(zstandard.compress(data))
    upstream.fault(f"/noarch/{SHARD_INDEX}", "500", times=None)
    time.sleep(1.2)
    deadline = time.monotonic() + 10
    while True:  # the proxy picks up the new repodata.json (stale once, then refreshed)
        served = c.get("/channels/p/noarch/repodata.json").json()
        if served["packages.conda"]["dependent-2.0-0.conda"]["depends"] == ["dependency >=2"]:
            break
        assert time.monotonic() < deadline, "the proxy never refreshed repodata.json"
        time.sleep(0.2)
    hits = upstream.fault_hits(f"/noarch/{SHARD_INDEX}")
    r = c.get(f"/channels/p/noarch/{SHARD_INDEX}")
    assert r.status_code == 200, r.text
    assert r.content == cached.content
    assert upstream.fault_hits(f"/noarch/{SHARD_INDEX}") > hits  # upstream was asked, and failed
