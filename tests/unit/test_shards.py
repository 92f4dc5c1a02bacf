"""channel/shards.py (CEP-16 encoding), shard paths in serve/paths.py, --shard-grace parsing."""

from __future__ import annotations

import hashlib
import json

import msgspec
import pytest
import zstandard

from condasync.channel.shardencode import encode_shard
from condasync.channel.shards import (
    NameRecords,
    created_at,
    decode_shard,
    decode_shard_index,
    encode_shard_index,
    group_by_name,
    rewrite_index_urls,
    shard_records,
    timestamp_ms,
)
from condasync.engine.shardpub import parse_duration, plan_shards
from condasync.serve.paths import cache_control, is_shard, parse_file_path

SHA = "a" * 64
MD5 = "b" * 32


def rec(name: str, version: str, **extra: object) -> bytes:
    doc = {"name": name, "version": version, "build": "0", "build_number": 0, "size": 10,
           "sha256": SHA, "md5": MD5, "depends": [], "timestamp": 1700000000000,
           **extra}  # fmt: skip
    return json.dumps(doc).encode()


SECTIONS = {
    "packages": {"foo-1.0-0.tar.bz2": rec("foo", "1.0"), "bar-2-0.tar.bz2": rec("bar", "2")},
    "packages.conda": {"foo-1.0-0.conda": rec("foo", "1.0"), "foo-2.0-0.conda": rec("foo", "2.0")},
}


def test_grouping_by_name_with_removed() -> None:
    groups = group_by_name(SECTIONS, ["foo-0.1-0.conda", "gone-1-0.conda", 7])
    assert sorted(groups) == ["bar", "foo"]  # a name only in `removed` gets no group
    assert sorted(groups["foo"].conda) == ["foo-1.0-0.conda", "foo-2.0-0.conda"]
    assert list(groups["foo"].packages) == ["foo-1.0-0.tar.bz2"]
    assert groups["foo"].removed == ["foo-0.1-0.conda"]
    assert groups["bar"].removed == []


def test_shard_bytes_are_canonical_and_named_by_their_hash() -> None:
    group = group_by_name(SECTIONS)["foo"]
    sha, data, newest = encode_shard(group)
    assert hashlib.sha256(data).digest() == sha
    assert newest == 1700000000000
    assert zstandard.frame_content_size(data) > 0  # content size in the frame header
    zstandard.decompress(data)  # what some Python clients call
    shard = decode_shard(data)
    record = shard["packages.conda"]["foo-2.0-0.conda"]
    assert record["sha256"] == bytes.fromhex(SHA) and record["md5"] == bytes.fromhex(MD5)
    assert shard_records(shard)["foo-2.0-0.conda"] == json.loads(rec("foo", "2.0"))
    # the same records in another order, with other whitespace in their keys' order: same bytes
    shuffled = NameRecords(
        dict(reversed(group.packages.items())),
        {fn: json.dumps(dict(reversed(json.loads(r).items()))).encode()
         for fn, r in reversed(group.conda.items())},
    )  # fmt: skip
    assert encode_shard(shuffled)[1] == data


def test_digest_follows_patched_records() -> None:
    group = group_by_name(SECTIONS)["foo"]
    patched = NameRecords(dict(group.packages), dict(group.conda))
    patched.conda["foo-2.0-0.conda"] = rec("foo", "2.0", depends=["bar >=2"])
    assert patched.digest() != group.digest()
    assert NameRecords(dict(group.packages), dict(group.conda)).digest() == group.digest()
    known = plan_shards({"foo": group}, {})
    again = plan_shards({"foo": group}, known.names)
    assert again.names == known.names and not again.new_files  # unchanged: nothing encoded
    changed = plan_shards({"foo": patched}, known.names)
    assert len(changed.new_files) == 1 and changed.names["foo"] != known.names["foo"]


def test_bad_hashes_are_left_out_not_sent_as_text() -> None:
    group = NameRecords({}, {"x-1-0.conda": rec("x", "1", sha256="nothex", md5=None)})
    shard = decode_shard(encode_shard(group)[1])
    assert "sha256" not in shard["packages.conda"]["x-1-0.conda"]
    assert shard["packages"] == {}


def test_index_round_trip_and_relative_urls() -> None:
    data = encode_shard_index("noarch", {"foo": b"\x01" * 32}, created_at(1700000000123))
    index = decode_shard_index(data)
    assert index.info == {
        "subdir": "noarch",
        "base_url": "./",
        "shards_base_url": "./shards/",
        "created_at": "2023-11-14T22:13:20.123Z",
    }
    assert index.shards == {"foo": b"\x01" * 32}
    assert zstandard.frame_content_size(data) > 0
    moved = decode_shard_index(rewrite_index_urls(data, "", "s/"))
    assert moved.info["base_url"] == "" and moved.info["shards_base_url"] == "s/"


def _index(doc: object) -> bytes:
    return zstandard.ZstdCompressor().compress(msgspec.msgpack.encode(doc))


GOOD_INFO = {"subdir": "noarch", "base_url": "", "shards_base_url": "./shards/"}


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"info": GOOD_INFO},
        {"info": {**GOOD_INFO, "created_at": 1700000000}, "shards": {}},
        {"info": {"subdir": "noarch", "shards_base_url": ""}, "shards": {}},
        {"info": GOOD_INFO, "shards": {"foo": "hex-as-text"}},
        {"info": GOOD_INFO, "shards": {"foo": b"short"}},
    ],
)
def test_index_rattler_could_not_read_is_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        decode_shard_index(_index(doc))


def test_not_zstd_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_shard_index(b"plain bytes")
    with pytest.raises(ValueError):
        decode_shard(_index({"packages.conda": {}}))  # `packages` is required


@pytest.mark.parametrize(
    ("record", "ms"),
    [({"timestamp": 1700000000}, 1700000000000), ({"timestamp": 1700000000123}, 1700000000123),
     ({}, 0), ({"timestamp": True}, 0), ({"timestamp": "x"}, 0)],
)  # fmt: skip
def test_timestamps(record: dict[str, object], ms: int) -> None:
    assert timestamp_ms(record) == ms


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900.0), ("0", 0.0), ("90s", 90.0), ("2h", 7200.0), ("1d", 86400.0), ("1.5m", 90.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1m", "15 minutes", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("raw", "relpath"),
    [
        (f"/channels/c/noarch/shards/{HEX}.msgpack.zst", f"noarch/shards/{HEX}.msgpack.zst"),
        (
            f"/t/k/channels/c/linux-64/shards/{HEX}.msgpack.zst",
            f"linux-64/shards/{HEX}.msgpack.zst",
        ),
        ("/channels/c/noarch/repodata_shards.msgpack.zst", "noarch/repodata_shards.msgpack.zst"),
        (f"/channels/c/noarch/shards/{HEX.upper()}.msgpack.zst", None),
        (f"/channels/c/noarch/shards/{HEX}.msgpack", None),
        ("/channels/c/noarch/shards/..%2frepodata.json", None),
        ("/channels/c/noarch/shards/../repodata.json", None),
        (f"/channels/c/noarch/other/{HEX}.msgpack.zst", None),
        (f"/channels/c/shards/{HEX}.msgpack.zst", None),
        (f"/other/c/noarch/shards/{HEX}.msgpack.zst", None),
        (f"/channels/c/bad_subdir/shards/{HEX}.msgpack.zst", None),
    ],
)
def test_shard_paths(raw: str, relpath: str | None) -> None:
    found = parse_file_path(raw)
    assert (found.relpath if found else None) == relpath


def test_shard_cache_headers() -> None:
    assert is_shard(f"shards/{HEX}.msgpack.zst") and not is_shard("repodata_shards.msgpack.zst")
    assert (
        cache_control(f"shards/{HEX}.msgpack.zst", False) == "public, max-age=31536000, immutable"
    )
    assert "must-revalidate" in cache_control("repodata_shards.msgpack.zst", False)
