"""Table-driven tests of the pure serve modules: request paths, HTTP validators and ranges,
roles, and the package listing."""

from __future__ import annotations

import pytest

from condasync.serve.httpcache import make_etag, not_modified, parse_range
from condasync.serve.packages import list_packages
from condasync.serve.paths import FilePath, cache_control, content_type, parse_file_path
from condasync.serve.roles import (
    Identity,
    can_create_channel,
    can_delete_channel,
    can_read,
    can_synchronize,
    hash_key,
    new_key,
)

PATH_CASES = [
    ("/channels/c/noarch/repodata.json", FilePath("c", "noarch", "repodata.json")),
    ("/channels/c/linux-64/a-1.0-0.conda", FilePath("c", "linux-64", "a-1.0-0.conda")),
    ("/channels/c/noarch/a-1%211.0-0.conda", FilePath("c", "noarch", "a-1!1.0-0.conda")),
    ("/channels/c/channeldata.json", FilePath("c", "", "channeldata.json")),
    ("/t/k1/channels/c/noarch/x.conda", FilePath("c", "noarch", "x.conda", "k1")),
    ("/channels/c/../x", None),
    ("/channels/c/noarch/..", None),
    ("/channels/c/%2e%2e/x/y", None),
    ("/channels/c/noarch/%2e%2e", None),
    ("/channels/c/noarch%2f..%2fx", None),
    ("/channels/c/noarch/a%2fb", None),
    ("/channels/c/noarch/a%5cb", None),
    ("/channels/c/noarch/a\\b", None),
    ("/channels/c/noarch/a%00b", None),
    ("/channels/c/noarch/.hidden", None),
    ("/channels/c//etc", None),
    ("/channels/c/noarch/", None),
    ("/channels/C/noarch/x", None),
    ("/channels/c/Linux/x", None),
    ("/channels/c/noarch/a/b", None),
    ("/channels/c/other.json", None),
    ("/channels/c/noarch/%ff", None),
    ("channels/c/noarch/x", None),
    ("/other/c/noarch/x", None),
    ("/get/c/noarch/x.conda", FilePath("c", "noarch", "x.conda")),
    ("/t/k1/get/c/noarch/x.conda", FilePath("c", "noarch", "x.conda", "k1")),
    ("/get/c/../x", None),
    ("/getx/c/noarch/x", None),
]


@pytest.mark.parametrize(("raw", "expected"), PATH_CASES)
def test_parse_file_path(raw: str, expected: FilePath | None) -> None:
    assert parse_file_path(raw) == expected


@pytest.mark.parametrize("raw", [r for r, _ in PATH_CASES if "/channels/" in r])
def test_quetz_get_scheme_shares_the_parser(raw: str) -> None:
    """quetz's /get/<channel>/... names the same files, and refuses the same paths."""
    quetz = raw.replace("/channels/", "/get/", 1)
    assert parse_file_path(quetz) == parse_file_path(raw)


@pytest.mark.parametrize(
    ("filename", "ctype", "immutable"),
    [
        ("repodata.json", "application/json", False),
        ("repodata.json.zst", "application/zstd", False),
        ("repodata.json.bz2", "application/x-bzip2", False),
        ("repodata_shards.msgpack.zst", "application/zstd", False),
        ("a-1-0.conda", "application/octet-stream", True),
        ("a-1-0.tar.bz2", "application/octet-stream", True),
    ],
)
def test_types_and_caching(filename: str, ctype: str, immutable: bool) -> None:
    assert content_type(filename) == ctype
    assert ("immutable" in cache_control(filename, False)) is immutable
    assert cache_control(filename, True).startswith("private")


ETAG = make_etag(10, 5_000_000_000, 7)
DATE = "Thu, 01 Jan 1970 00:00:05 GMT"


@pytest.mark.parametrize(
    ("inm", "ims", "expected"),
    [
        (ETAG, None, True),
        (f'"zz", {ETAG}', None, True),
        (f"W/{ETAG}", None, True),
        ("*", None, True),
        ('"zz"', DATE, False),  # If-None-Match wins over If-Modified-Since
        (None, DATE, True),
        (None, "Thu, 01 Jan 1970 00:00:04 GMT", False),
        (None, "garbage", False),
        (None, None, False),
    ],
)
def test_not_modified(inm: str | None, ims: str | None, expected: bool) -> None:
    assert not_modified(ETAG, 5.5, inm, ims) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=90-200", (90, 99)),
        ("bytes=100-", None),
        ("bytes=5-4", None),
        ("bytes=-0", None),
        ("items=0-1", None),
        ("bytes=0-1,5-6", (0, 1)),
    ],
)
def test_parse_range(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


def test_roles() -> None:
    owner = Identity(1, "owner")
    maintainer = Identity(2, "maintainer")
    member = Identity(3, "member", {"c": "member"})
    chan_owner = Identity(4, None, {"c": "owner"})
    assert can_create_channel(owner) and can_create_channel(maintainer)
    assert not can_create_channel(member) and not can_create_channel(chan_owner)
    assert can_delete_channel(owner, "c") and can_delete_channel(chan_owner, "c")
    assert not can_delete_channel(maintainer, "c") and not can_delete_channel(chan_owner, "d")
    assert can_synchronize(maintainer, "c") and not can_synchronize(member, "c")
    assert can_read(None, "c", False) and not can_read(None, "c", True)
    assert can_read(member, "c", True) and not can_read(member, "d", True)
    assert can_read(owner, "d", True)
    key = new_key()
    assert key.startswith("cs_") and len(key) > 40 and hash_key(key) != key
    assert new_key() != key


def test_package_listing_uses_conda_version_order() -> None:
    def rec(name: str, version: str, **extra: str) -> dict[str, object]:
        return {"name": name, "version": version, "build": "0", **extra}

    indexes = {
        "noarch": {
            "a-1.9-0.conda": rec("a", "1.9"),
            "a-1.10-0.conda": rec("a", "1.10"),
            "a-1.10rc1-0.conda": rec("a", "1.10rc1"),
            "b-2.0-0.conda": rec("b", "2.0", summary="B things"),
        },
        "linux-64": {"a-1.2-0.conda": rec("a", "1.2")},
    }
    listing = list_packages(indexes, {"packages": {"a": {"summary": "A things"}}})
    assert [(p["name"], p["latest_version"], p["summary"], p["subdirs"]) for p in listing] == [
        ("a", "1.10", "A things", ["linux-64", "noarch"]),
        ("b", "2.0", "B things", ["noarch"]),
    ]
    assert [p["name"] for p in list_packages(indexes, None, "B")] == ["b"]
