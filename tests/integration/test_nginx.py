"""examples/nginx.conf on Debian's nginx serving a real mirror: py-rattler installs through it,
state and staging paths are 404, .zst is application/zstd, ETag/304, Range/206, cache headers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import mirror_args, ok
from tests.realservers import NginxServer, find_nginx, run_nginx


@pytest.fixture
def nginx_mirror(
    channel_server, mirror_dir: Path, run_cli, tmp_path: Path
) -> Iterator[tuple[NginxServer, Path]]:
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx not installed (apt-get install -y --no-install-recommends nginx-light)")
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    channel_server.stop()  # everything now comes from nginx
    # what a killed run leaves behind, and what must never be served
    staging = mirror_dir / "linux-64" / ".condasync-tmp"
    staging.mkdir()
    (staging / "zlib-1.2.11-h7b6447c_3.conda.0123456789ab").write_bytes(b"partial")
    (mirror_dir / "noarch" / ".repodata.json.0123456789ab.tmp").write_bytes(b"{}")
    with run_nginx(nginx, mirror_dir, tmp_path / "nginx") as server:
        yield server, mirror_dir


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30) as c:
        yield c


def test_rattler_installs_through_nginx(nginx_mirror, rattler_install, tmp_path: Path) -> None:
    server, _ = nginx_mirror
    got = rattler_install(server.url, ["dependent", "_r-mutex"], tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.installed() == {"dependent-2.0-0", "dependency-2.0-0", "_r-mutex-1.0.1-anacondar_1"}
    access_log = (server.prefix / "logs" / "access.log").read_text()
    assert 'GET /noarch/dependent-2.0-0.conda HTTP/1.1" 200' in access_log
    assert '/noarch/repodata_shards.msgpack.zst HTTP/1.1" 200' in access_log  # CEP-16 shards
    assert "repodata.json" not in access_log


def test_state_staging_and_dot_paths_are_404(nginx_mirror, client: httpx.Client) -> None:
    server, root = nginx_mirror
    assert (root / ".condasync").is_dir() and any((root / ".condasync").iterdir())
    state_files = sorted(p.name for p in (root / ".condasync").iterdir())
    paths = [
        "/.condasync/",
        "/.condasync",
        *(f"/.condasync/{name}" for name in state_files),
        "/linux-64/.condasync-tmp/",
        "/linux-64/.condasync-tmp/zlib-1.2.11-h7b6447c_3.conda.0123456789ab",
        "/noarch/.repodata.json.0123456789ab.tmp",
        "/%2Econdasync/noarch.meta.json",
        "/linux-64/../.condasync/noarch.meta.json",
        "/linux-64/",  # a folder: 404, not 403
        "/linux-64/current_repodata.json",  # missing optional file: plain 404
        "/noarch/nothing-1.0-0.conda",
    ]
    for path in paths:
        for method in ("GET", "HEAD"):
            response = client.request(method, server.url + path)
            assert response.status_code == 404, (method, path, response.status_code)
            assert b"noarch.meta" not in response.content


def test_types_cache_headers_etag_304_and_range(nginx_mirror, client: httpx.Client) -> None:
    server, root = nginx_mirror
    zst = client.get(f"{server.url}/linux-64/repodata.json.zst")
    assert zst.status_code == 200
    assert zst.headers["content-type"] == "application/zstd"
    assert zst.content == (root / "linux-64" / "repodata.json.zst").read_bytes()
    assert zst.headers["cache-control"] == "public, max-age=0, must-revalidate"
    assert "content-encoding" not in zst.headers

    index = client.get(f"{server.url}/noarch/repodata.json")
    assert index.headers["content-type"] == "application/json"
    assert index.headers["cache-control"] == "public, max-age=0, must-revalidate"
    assert index.content == (root / "noarch" / "repodata.json").read_bytes()
    etag, last_modified = index.headers["etag"], index.headers["last-modified"]

    not_modified = client.get(f"{server.url}/noarch/repodata.json", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    since = client.get(
        f"{server.url}/noarch/repodata.json", headers={"If-Modified-Since": last_modified}
    )
    assert since.status_code == 304
    later = client.get(
        f"{server.url}/noarch/repodata.json",
        headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
    )
    assert later.status_code == 304  # `if_modified_since before`
    stale = client.get(f"{server.url}/noarch/repodata.json", headers={"If-None-Match": '"x"'})
    assert stale.status_code == 200

    package = root / "noarch" / "dependent-2.0-0.conda"
    data = package.read_bytes()
    whole = client.get(f"{server.url}/noarch/dependent-2.0-0.conda")
    assert whole.content == data
    assert whole.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(
        f"{server.url}/noarch/dependent-2.0-0.conda", headers={"Range": "bytes=10-99"}
    )
    assert part.status_code == 206
    assert part.content == data[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(data)}"
    tail = client.get(f"{server.url}/noarch/dependent-2.0-0.conda", headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == data[-16:]
    beyond = client.get(
        f"{server.url}/noarch/dependent-2.0-0.conda",
        headers={"Range": f"bytes={len(data) + 10}-"},
    )
    assert beyond.status_code == 416
    bz2 = client.head(f"{server.url}/noarch/_r-mutex-1.0.1-anacondar_1.tar.bz2")
    assert bz2.status_code == 200
    assert bz2.headers["cache-control"] == "public, max-age=31536000, immutable"
