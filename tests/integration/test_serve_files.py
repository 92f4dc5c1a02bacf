"""`condasync serve` channel files from a plain tree: types, validators, 304, ranges, cache
headers, 404 for missing optional files, and every traversal form answered 404."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable

import pytest

from tests.conftest import REAL_CHANNEL
from tests.serve_support import ServeProcess, raw_get, start_serve_shared  # noqa: F401

PKG = "noarch/dependent-2.0-0.conda"
SECRET = b"top secret outside the channel"


@pytest.fixture(scope="module")
def tree_server(
    tmp_path_factory: pytest.TempPathFactory,
    start_serve_shared: Callable[..., ServeProcess],  # noqa: F811
) -> ServeProcess:
    tmp_path = tmp_path_factory.mktemp("tree")
    root = tmp_path / "channels"
    shutil.copytree(REAL_CHANNEL, root / "static")
    (root / "secret.txt").write_bytes(SECRET)
    (root / "static" / "noarch" / ".hidden").write_bytes(SECRET)
    (tmp_path / "outside.txt").write_bytes(SECRET)
    (root / "static" / "noarch" / "escape.conda").symlink_to(tmp_path / "outside.txt")
    return start_serve_shared(root)


def test_content_types_and_cache_headers(tree_server: ServeProcess) -> None:
    c = tree_server.client
    r = c.get("/channels/static/noarch/repodata.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert "must-revalidate" in r.headers["cache-control"]
    assert json.loads(r.content)["info"]["subdir"] == "noarch"
    r = c.get(f"/channels/static/{PKG}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.content == (REAL_CHANNEL / PKG).read_bytes()
    r = c.get("/channels/static/noarch/_r-mutex-1.0.1-anacondar_1.tar.bz2")
    assert r.headers["content-type"] == "application/octet-stream"
    head = c.head(f"/channels/static/{PKG}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str((REAL_CHANNEL / PKG).stat().st_size)


def test_zst_and_bz2_types(tree_server: ServeProcess) -> None:
    folder = tree_server.root / "static" / "osx-64"
    (folder / "repodata.json.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"x" * 10)
    (folder / "repodata.json.bz2").write_bytes(b"BZh9" + b"x" * 10)
    c = tree_server.client
    assert c.get("/channels/static/osx-64/repodata.json.zst").headers["content-type"] == (
        "application/zstd"
    )
    assert c.get("/channels/static/osx-64/repodata.json.bz2").headers["content-type"] == (
        "application/x-bzip2"
    )


def test_validators_304_and_ranges(tree_server: ServeProcess) -> None:
    c = tree_server.client
    url = f"/channels/static/{PKG}"
    data = (REAL_CHANNEL / PKG).read_bytes()
    first = c.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert c.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert c.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    assert c.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    part = c.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert c.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    bad = c.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416
    assert bad.headers["content-range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize(
    "name",
    [
        "noarch/repodata_shards.msgpack.zst",
        "noarch/repodata.json.zst",
        "noarch/repodata.json.bz2",
        "noarch/current_repodata.json",
        "linux-64/current_repodata.json",
        "win-64/repodata.json",
        "channeldata.json",
        "noarch/nothing-1.0-0.conda",
    ],
)
def test_missing_optional_files_are_plain_404(tree_server: ServeProcess, name: str) -> None:
    for method in ("GET", "HEAD"):
        r = tree_server.client.request(method, f"/channels/static/{name}")
        assert r.status_code == 404, (method, name, r.status_code)


TRAVERSALS = [
    "/channels/static/../secret.txt",
    "/channels/static/noarch/../../secret.txt",
    "/channels/static/%2e%2e/secret.txt",
    "/channels/static/noarch/%2e%2e/%2e%2e/secret.txt",
    "/channels/static/noarch/%2E%2E%2F%2E%2E%2Fsecret.txt",
    "/channels/static%2f..%2fsecret.txt",
    "/channels/static/noarch%2f..%2f..%2fsecret.txt",
    "/channels/static/noarch/..%5c..%5csecret.txt",
    "/channels/static/noarch/..\\..\\secret.txt",
    "/channels/static//etc/passwd",
    "/channels/static/noarch//etc/passwd",
    "/channels/static/noarch/%2fetc%2fpasswd",
    "/channels/..%2fsecret.txt/noarch/x",
    "/channels/static/noarch/repodata.json%00.conda",
    "/channels/static/noarch/%00",
    "/channels/static/noarch/.hidden",
    "/channels/static/noarch/%2ehidden",
    "/channels/static/noarch/escape.conda",
    "/channels/.condasync/noarch/condasync.db",
    "/channels/static/.condasync/x",
    "/channels/%2e%2e/secret.txt",
    "/channels/%2e%2e/%2e%2e/etc/passwd",
    "/t/x/channels/static/../../secret.txt",
]


def test_traversal_is_404_and_never_leaks(tree_server: ServeProcess) -> None:
    # quetz's /get/ scheme goes through the same handler: every form is refused there too
    quetz = [t.replace("/channels/", "/get/", 1) for t in TRAVERSALS]
    for target in TRAVERSALS + quetz:
        for method in ("GET", "HEAD"):
            status, body = raw_get(tree_server.port, target, method)
            assert status in (400, 404), (target, status)
            assert status == 404 or b"secret" not in body, target
            assert SECRET not in body and b"root:" not in body, target
    # the legitimate file is still served, under both schemes, with the same bytes
    assert raw_get(tree_server.port, f"/channels/static/{PKG}")[0] == 200
    status, body = raw_get(tree_server.port, f"/get/static/{PKG}")
    assert status == 200 and body == (REAL_CHANNEL / PKG).read_bytes()


def test_plain_tree_listed_and_read_only(tree_server: ServeProcess) -> None:
    c = tree_server.client
    names = [ch["name"] for ch in c.get("/api/channels").json()]
    assert "static" in names
    packages = c.get("/api/channels/static/packages").json()
    by_name = {p["name"]: p for p in packages}
    assert by_name["dependent"]["latest_version"] == "2.0"
    assert by_name["zlib"]["subdirs"] == ["linux-64", "osx-64"]
    only = c.get("/api/channels/static/packages", params={"q": "depend"}).json()
    assert {p["name"] for p in only} == {"dependent", "dependency"}
    assert c.post("/channels/static/noarch/repodata.json").status_code == 405
    digest = hashlib.sha256(c.get(f"/channels/static/{PKG}").content).hexdigest()
    assert digest == hashlib.sha256((REAL_CHANNEL / PKG).read_bytes()).hexdigest()
