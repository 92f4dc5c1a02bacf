"""Proxy channels against a real upstream on loopback: py-rattler installs, cache with upstream
stopped, single-flight downloads, corrupt files never cached, 404/504, stale indexes."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import zstandard

from tests.conftest import Channel, RattlerResult
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer, FaultServer

ZLIB = "linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2"
DEPENDENT = "noarch/dependent-2.0-0.conda"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _staging_empty(root: Path) -> bool:
    return not any(p.is_file() for p in root.rglob(".condasync-tmp/*"))


def test_rattler_installs_through_proxy_then_from_cache(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    serve: Callable[..., ChannelServer],
    real_channel: Channel,
    rattler_install: Callable[..., RattlerResult],
) -> None:
    # upstream at http://host/upstream/: `serve --proxy` names the channel after the last segment
    channel_server = serve(real_channel.root.parent)
    server = start_serve(None, "--proxy", f"{channel_server.url}/{real_channel.root.name}/")
    assert server.client.get("/api/channels/upstream").json()["mirror_mode"] == "proxy"
    url = f"{server.url}/channels/upstream"
    first = rattler_install(url, ["dependent", "_r-mutex"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    names = {r["name"] for r in first.records}
    assert {"dependent", "dependency", "_r-mutex"} <= names
    assert (server.root / "upstream" / DEPENDENT).is_file()
    channel_server.stop()
    second = rattler_install(url, ["dependent", "_r-mutex"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.installed() == first.installed()


def test_json_and_zst_are_one_snapshot(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    real_channel: Channel,
) -> None:
    channeldata = {
        "channeldata_version": 1,
        "subdirs": ["linux-64", "noarch", "osx-64"],
        "packages": {
            "zlib": {
                "summary": "compression library",
                "description": "A massively spiffy compression library",
                "home": "https://zlib.net",
            }
        },
    }
    (real_channel.root / "channeldata.json").write_text(json.dumps(channeldata))
    server = start_serve()
    assert server.create_channel("up", channel_server.url, "proxy").status_code == 201
    c = server.client
    zst = c.get("/channels/up/linux-64/repodata.json.zst")
    assert zst.status_code == 200 and zst.headers["content-type"] == "application/zstd"
    plain = c.get("/channels/up/linux-64/repodata.json")
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zst.content) == plain.content
    first = c.get(f"/channels/up/{ZLIB}", headers={"Range": "bytes=100-199"})  # not cached yet
    assert first.status_code == 206 and len(first.content) == 100
    assert c.get(f"/channels/up/{ZLIB}", headers={"If-None-Match": '"x"'}).status_code == 200
    assert c.head(f"/channels/up/{ZLIB}").status_code == 200
    for optional in ("repodata_shards.msgpack.zst", "repodata.json.bz2", "current_repodata.json"):
        assert c.get(f"/channels/up/linux-64/{optional}").status_code == 404, optional
    assert c.get("/channels/up/win-64/repodata.json").status_code == 404
    cd = c.get("/channels/up/channeldata.json")
    assert cd.status_code == 200 and cd.json() == channeldata
    assert cd.headers["content-type"] == "application/json"
    assert c.get("/channels/up/linux-64/not-there-1.0-0.conda").status_code == 404
    listing = c.get("/api/channels/up/packages", params={"q": "zlib"}).json()
    assert listing == [
        {
            "name": "zlib",
            "latest_version": "1.2.11",
            "current_version": "1.2.11",
            "summary": "compression library",
            "subdirs": ["linux-64", "osx-64"],
            "platforms": ["linux-64", "osx-64"],
            "description": "A massively spiffy compression library",
            "url": "https://zlib.net",
            "latest_change": "2018-11-21T15:45:00.324000",  # the newest 1.2.11 build's timestamp
        }
    ]


def test_concurrent_requests_share_one_download(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    fault_server: FaultServer,
    real_channel: Channel,
) -> None:
    server = start_serve()
    assert server.create_channel("up", fault_server.url, "proxy").status_code == 201
    assert server.client.get("/channels/up/linux-64/repodata.json").status_code == 200
    fault_server.fault(f"/{ZLIB}", "slow", chunk=16384, interval=0.05)  # ~0.4 s download
    expected = (real_channel.root / ZLIB).read_bytes()

    def get(_i: int) -> bytes:
        with httpx.Client(timeout=30, trust_env=False) as client:
            r = client.get(f"{server.url}/channels/up/{ZLIB}")
            assert r.status_code == 200
            return r.content

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        bodies = list(pool.map(get, range(20)))
    assert all(b == expected for b in bodies)
    assert len(fault_server.requests_for(f"/{ZLIB}", "GET")) == 1
    assert (server.root / "up" / ZLIB).read_bytes() == expected
    # later requests come from disk
    assert server.client.get(f"/channels/up/{ZLIB}").content == expected
    assert len(fault_server.requests_for(f"/{ZLIB}", "GET")) == 1
    assert _staging_empty(server.root)


def test_corrupt_upstream_file_is_never_cached(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    fault_server: FaultServer,
    real_channel: Channel,
) -> None:
    server = start_serve()
    assert server.create_channel("up", fault_server.url, "proxy").status_code == 201
    expected = (real_channel.root / ZLIB).read_bytes()
    fault_server.fault(f"/{ZLIB}", "corrupt", times=1)
    try:
        r = server.client.get(f"/channels/up/{ZLIB}")
    except httpx.HTTPError:
        pass  # the connection was dropped mid-body: the client knows it failed
    else:
        assert r.status_code >= 500 or len(r.content) < len(expected), r.status_code
        assert _sha(r.content) != _sha(expected) or r.status_code >= 500
    assert not (server.root / "up" / ZLIB).exists()
    assert _staging_empty(server.root)
    # the next request (upstream healthy again) gets and caches the right bytes
    good = server.client.get(f"/channels/up/{ZLIB}")
    assert good.status_code == 200 and good.content == expected
    assert (server.root / "up" / ZLIB).read_bytes() == expected


def test_upstream_404_and_timeout(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    fault_server: FaultServer,
    real_channel: Channel,
) -> None:
    server = start_serve(None, "--upstream-timeout", "1")
    assert server.create_channel("up", fault_server.url, "proxy").status_code == 201
    (real_channel.root / DEPENDENT).unlink()  # listed upstream, file gone
    assert server.client.get(f"/channels/up/{DEPENDENT}").status_code == 404
    fault_server.fault(f"/{ZLIB}", "hang", hang_seconds=10)
    started = time.monotonic()
    r = server.client.get(f"/channels/up/{ZLIB}")
    assert r.status_code == 504 and "timed out" in r.text
    assert time.monotonic() - started < 8
    fault_server.fault("/osx-64/repodata.json", "500")
    assert server.client.get("/channels/up/osx-64/repodata.json").status_code == 502


def test_stale_while_revalidate_and_stale_if_error(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    real_channel: Channel,
) -> None:
    server = start_serve()
    r = server.create_channel("up", channel_server.url, "proxy", ttl=1)
    assert r.status_code == 201
    c = server.client
    old = c.get("/channels/up/noarch/repodata.json")
    assert old.status_code == 200 and "x-condasync-stale" not in old.headers
    real_channel.add("noarch", "newpkg-1.0-0.conda")
    real_channel.write("noarch")
    time.sleep(1.2)
    stale = c.get("/channels/up/noarch/repodata.json")  # served at once, refreshed behind
    assert stale.content == old.content
    assert "x-condasync-stale" in stale.headers and "110" in stale.headers["warning"]
    deadline = time.monotonic() + 5
    while b"newpkg" not in c.get("/channels/up/noarch/repodata.json").content:
        assert time.monotonic() < deadline, "background refresh never landed"
        time.sleep(0.05)
    fresh = c.get("/channels/up/noarch/repodata.json")
    assert "x-condasync-stale" not in fresh.headers
    channel_server.stop()
    time.sleep(1.2)
    for _ in range(3):
        r = c.get("/channels/up/noarch/repodata.json")
        assert r.status_code == 200 and b"newpkg" in r.content
        assert "x-condasync-stale" in r.headers
        time.sleep(0.2)
    assert "111" in r.headers["warning"]


def test_proxy_keeps_serving_its_indexes_when_upstream_vanishes(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    real_channel: Channel,
) -> None:
    server = start_serve()
    assert server.create_channel("p", channel_server.url, "proxy", ttl=0).status_code == 201
    c = server.client
    first = {sub: c.get(f"/channels/p/{sub}/repodata.json") for sub in ("linux-64", "noarch")}
    assert all(r.status_code == 200 for r in first.values())
    for sub in ("linux-64", "noarch", "osx-64"):
        for name in ("repodata.json", "repodata.json.zst"):
            (real_channel.root / sub / name).unlink(missing_ok=True)
    for _ in range(3):  # ttl 0: every request revalidates, and upstream answers 404
        for sub, r in first.items():
            again = c.get(f"/channels/p/{sub}/repodata.json")
            assert again.status_code == 200 and again.content == r.content, sub
        time.sleep(0.3)
    stale = c.get("/channels/p/noarch/repodata.json")
    assert "no noarch/repodata.json" in stale.headers.get("x-condasync-stale", ""), stale.headers
