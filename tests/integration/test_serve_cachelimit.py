"""`serve --cache-max-size`: a real proxy channel filled past the limit evicts its least recently
requested packages (never indexes, never a file being streamed), an evicted package is fetched
again, py-rattler still installs, and on S3 with PostgreSQL two replicas share the record."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from condasync.serve.cachelimit import CacheTracker, parse_size
from condasync.serve.db import Channel as ChannelRow
from condasync.serve.db import Database
from condasync.serve.store import LocalChannels
from condasync.storage.s3 import S3Storage
from tests.conftest import Channel, RattlerResult
from tests.realservers import S3Server
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer, FaultServer

PATCHES = "noarch/conda-forge-repodata-patches-20180828-0.tar.bz2"  # 33305 bytes
XTENSOR = "linux-64/xtensor-io-0.10.3-hb585cf6_0.tar.bz2"  # 35185
ZLIB_CONDA = "linux-64/zlib-1.2.11-h7b6447c_3.conda"  # 105917
ZLIB_BZ2 = "linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2"  # 122456
MOCK = "osx-64/mock-2.0.0-py37_1000.conda"  # 113421
LIMIT = 300 * 1024  # 307200


@pytest.mark.parametrize(
    ("text", "size"),
    [("700K", 700 << 10), ("500G", 500 << 30), ("20GiB", 20 << 30), ("1234", 1234),
     ("3M", 3 << 20), ("2T", 2 << 40), ("5KiB", 5 << 10), ("1.5G", 3 << 29)],
)  # fmt: skip
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-5K", "10X", "5 KB B", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def _cached(root: Path, channel: str = "upstream") -> set[str]:
    base = root / channel
    return {
        str(p.relative_to(base))
        for p in base.rglob("*")
        if p.is_file() and p.name.endswith((".conda", ".tar.bz2")) and ".condasync" not in p.parts
    }


def _wait(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def _fill(get: Callable[[str], int]) -> None:
    """patches, xtensor, zlib.conda (174,407 bytes); xtensor requested again; zlib.tar.bz2
    (296,863); mock (410,284 > 307,200): LRU evicts patches, then zlib.conda (271,062)."""
    for path in (PATCHES, XTENSOR, ZLIB_CONDA):
        assert get(path) == 200, path
        time.sleep(0.05)  # distinct access times
    assert get(XTENSOR) == 200
    time.sleep(0.05)
    assert get(ZLIB_BZ2) == 200
    time.sleep(0.05)
    assert get(MOCK) == 200


def test_cache_limit_evicts_least_recently_requested_and_clients_still_install(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    serve: Callable[..., ChannelServer],
    real_channel: Channel,
    rattler_install: Callable[..., RattlerResult],
) -> None:
    upstream = serve(real_channel.root.parent)
    server = start_serve(
        None, "--proxy", f"{upstream.url}/{real_channel.root.name}", "--cache-max-size", "300K"
    )
    root = server.root

    def get(path: str) -> int:
        r = server.client.get(f"/channels/upstream/{path}")
        if r.status_code == 200:
            assert r.content == (real_channel.root / path).read_bytes(), path
        return r.status_code

    _fill(get)
    _wait(lambda: PATCHES not in _cached(root) and ZLIB_CONDA not in _cached(root))
    time.sleep(2.5)  # another flush and eviction pass: nothing more goes
    assert _cached(root) == {XTENSOR, ZLIB_BZ2, MOCK}
    # indexes are never evicted
    for subdir in ("linux-64", "noarch", "osx-64"):
        assert (root / "upstream" / subdir / "repodata.json").is_file()
        assert (root / "upstream" / subdir / "repodata.json.zst").is_file()
    # an evicted package is fetched again on its next request
    assert get(PATCHES) == 200
    assert PATCHES in _cached(root)
    # a client installs through the proxy, the evicted package among what it needs
    result = rattler_install(
        f"{server.url}/channels/upstream", ["conda-forge-repodata-patches", "dependent"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"conda-forge-repodata-patches", "dependent", "dependency"} <= {
        r["name"] for r in result.records
    }
    # and the cache comes back under the limit
    _wait(lambda: sum((root / "upstream" / p).stat().st_size for p in _cached(root)) <= LIMIT)


def test_eviction_skips_a_file_being_streamed(tmp_path: Path, real_channel: Channel) -> None:
    """The tracker on a real SQLite database and real files: a streamed file stays."""
    root = tmp_path / "channels"
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    db.upsert_channel(ChannelRow("up", False, "http://unused", "proxy"))
    store = LocalChannels(root)
    tracker = CacheTracker(db, store, max_size=100_000)
    for path in (PATCHES, XTENSOR, ZLIB_CONDA):
        (root / "up" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "up" / path).write_bytes((real_channel.root / path).read_bytes())
        tracker.added("up", path, (root / "up" / path).stat().st_size)
        time.sleep(0.01)
    tracker.flush()
    assert tracker.total() == 33305 + 35185 + 105917
    with tracker.streaming("up", PATCHES):
        tracker.flush()  # marks it busy for the other replicas too
        evicted = tracker.evict()
    # patches is the oldest but streamed: xtensor and zlib go instead (zlib alone is > limit)
    assert set(evicted) == {("up", XTENSOR), ("up", ZLIB_CONDA)}
    assert (root / "up" / PATCHES).is_file()
    assert not (root / "up" / XTENSOR).exists() and not (root / "up" / ZLIB_CONDA).exists()
    usage = tracker.usage("up")
    assert (usage.bytes, usage.files, usage.evictions) == (33305, 1, 2)
    # a second tracker (another replica) sees the same record
    other = CacheTracker(db, store, max_size=100_000)
    assert other.cached_paths("up") == {PATCHES}
    db.close()


def test_cache_limit_on_s3_with_two_replicas(
    tmp_path: Path,
    fault_server: FaultServer,
    s3_server: S3Server,
    s3_bucket: str,
    postgres_url: str,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
) -> None:
    shared = ("--db", postgres_url, "--storage", f"s3://{s3_bucket}/serve", "--cache-max-size",
              "300KiB")  # fmt: skip
    a = start_serve(tmp_path / "a", *shared, env=s3_server.env)
    b = start_serve(tmp_path / "b", *shared, env=s3_server.env)
    b.key = a.key
    assert a.create_channel("upstream", fault_server.url, "proxy").status_code == 201
    bucket = S3Storage(f"s3://{s3_bucket}/serve/upstream", env=s3_server.env)
    upstream = Path(fault_server.root)
    # requests alternate between the replicas: the order of last requests is shared
    replicas = [a, b]
    turn = iter(range(100))

    def get(path: str) -> int:
        replica = replicas[next(turn) % 2]
        r = replica.client.get(f"/channels/upstream/{path}")
        if r.status_code == 200:
            assert r.content == (upstream / path).read_bytes(), path
        return r.status_code

    _fill(get)

    def packages() -> set[str]:
        return {o.relpath for o in bucket.list() if o.relpath.endswith((".conda", ".tar.bz2"))}

    time.sleep(2.5)  # both replicas flush their record of requests
    _wait(lambda: PATCHES not in packages() and ZLIB_CONDA not in packages(), timeout=30)
    time.sleep(2.5)
    assert packages() == {XTENSOR, ZLIB_BZ2, MOCK}
    assert bucket.stat("linux-64/repodata.json") is not None
    fault_server.clear_log()
    assert b.client.get(f"/channels/upstream/{PATCHES}").status_code == 200
    assert len(fault_server.requests_for(f"/{PATCHES}", "GET")) == 1  # fetched again
    _wait(lambda: PATCHES in packages())
    # the proxy's page, read from the bucket by either replica: upstream's packages, the cached
    # ones marked, the cache size from the shared record
    time.sleep(2.5)
    page = a.client.get("/channels/upstream/").text
    assert "zlib" in page and "dependent" in page and "<td>cached</td>" in page
    assert re.search(r"<dt>cached</dt><dd>[34] packages", page), page[-3000:]
