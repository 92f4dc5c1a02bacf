"""Table-driven tests of the pure repodata module."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from condasync.channel.bigindex import Lite, parse_index
from condasync.channel.repodata import (
    check_filename,
    check_record,
    compress_zst,
    decompress_zst,
    digest_of,
    dump_repodata,
    parse_repodata,
    partition_records,
    publishable,
    zst_stored,
)

GOOD = {"name": "a", "version": "1", "build": "0", "size": 3, "sha256": "a" * 64}


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("numpy-1.26.4-py312h8753938_0.conda", True),
        ("_r-mutex-1.0.1-anacondar_1.tar.bz2", True),
        ("python-3.12.0-hab00c5b_0_cpython.conda", True),
        ("../../x-1-0.conda", False),
        ("/etc/x-1-0.conda", False),
        ("a/b-1-0.conda", False),
        ("a\\b-1-0.conda", False),
        ("x-1-0\x00.conda", False),
        ("x-1-0.zip", False),
        (".hidden-1-0.conda", False),
        ("x" * 300 + "-1-0.conda", False),
        ("n" * 65 + "-1-0.conda", False),
        ("UPPER-1-0.conda", False),
        ("x-1.conda", False),
        ("x-1-b u ild.conda", False),
        ("", False),
    ],
)
def test_check_filename(key: str, ok: bool) -> None:
    assert (check_filename(key) is None) is ok


@pytest.mark.parametrize(
    ("change", "ok"),
    [
        ({}, True),
        ({"sha256": None, "md5": "b" * 32}, True),
        ({"sha256": None}, False),
        ({"size": -1}, False),
        ({"size": 10**15}, False),
        ({"size": "3"}, False),
        ({"size": True}, False),
        ({"sha256": "zz"}, False),
        ({"md5": "short"}, False),
        ({"name": None}, False),
    ],
)
def test_check_record(change: dict[str, object], ok: bool) -> None:
    record = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    assert (check_record(record) is None) is ok


def test_digest_prefers_sha256() -> None:
    assert digest_of({"sha256": "a" * 64, "md5": "b" * 32}) == "sha256:" + "a" * 64
    assert digest_of({"md5": "b" * 32}) == "md5:" + "b" * 32


def _doc() -> dict[str, object]:
    return {
        "info": {"subdir": "noarch", "base_url": "https://elsewhere.example/x/"},
        "packages": {"a-1-0.tar.bz2": dict(GOOD)},
        "packages.conda": {"a-1-0.conda": dict(GOOD, depends=["patched >=2"], weird_key=[1])},
        "removed": ["old-1-0.conda"],
        "repodata_version": 2,
        "v3": {"whl": {}},
    }


def test_round_trip_keeps_everything_but_base_url() -> None:
    upstream = parse_repodata(orjson.dumps(_doc()), "noarch")
    out = orjson.loads(dump_repodata(publishable(upstream, "noarch", upstream.records)))
    expected = _doc()
    expected["info"] = {"subdir": "noarch"}
    assert out == expected


def test_dump_is_deterministic() -> None:
    a = parse_repodata(orjson.dumps(_doc()), "noarch")
    doc = _doc()
    doc["packages.conda"] = dict(reversed(list(doc["packages.conda"].items())))  # type: ignore[attr-defined]
    b = parse_repodata(orjson.dumps(doc), "noarch")
    assert dump_repodata(a) == dump_repodata(b)


@pytest.mark.parametrize("parse", [parse_repodata, parse_index])
@pytest.mark.parametrize(
    "data",
    [b"not json", b"[1, 2]", b'{"packages": []}', b'{"info": 3}', b'{"removed": {}}', b'{"packa'],
)
def test_parse_rejects_malformed(parse: Callable[[bytes, str], object], data: bytes) -> None:
    """Both the dict parser and the engine's parser refuse a malformed document."""
    with pytest.raises(ValueError):
        parse(data, "noarch")


def test_partition_records() -> None:
    valid, rejected = partition_records(
        {"a-1-0.conda": GOOD, "../x-1-0.conda": GOOD, "b-1-0.conda": {"size": 1}}
    )
    assert list(valid) == ["a-1-0.conda"]
    assert set(rejected) == {"../x-1-0.conda", "b-1-0.conda"}


def test_zstd_round_trip_and_corrupt() -> None:
    data = b"x" * 100_000
    assert decompress_zst(compress_zst(data)) == data
    with pytest.raises(ValueError):
        decompress_zst(b"garbage")


def test_zstd_reads_every_frame_as_other_readers_do() -> None:
    # A mirror may publish upstream's .zst as it is: the JSON it publishes next to it must be
    # what any zstd reader gets from those bytes, not just their first frame.
    two = compress_zst(b'{"a": 1') + compress_zst(b"}")
    assert decompress_zst(two) == b'{"a": 1}'


def _engine_view(data: bytes) -> tuple[object, ...]:
    index = parse_index(data, "noarch")
    sections = {
        key: {fn: bytes(raw) for fn, raw in recs.items()} for key, recs in index.sections.items()
    }
    extra = {key: bytes(raw) for key, raw in index.extra.items()}
    return index.info, sections, index.lite, index.rejected, index.removed, index.version, extra


def test_parse_index_one_pass_and_general_path_agree() -> None:
    """A well-formed index takes the one-pass parse; an extra top-level key or a malformed
    record takes the general one. Both must give the same records, views and rejections."""
    doc = {
        "info": {"subdir": "noarch"},
        "packages": {"a-1-0.tar.bz2": GOOD},
        "packages.conda": {"b-1-0.conda": {**GOOD, "md5": "b" * 32}},
        "removed": ["c-1-0.conda"],
        "repodata_version": 1,
    }
    fast = _engine_view(orjson.dumps(doc))
    slow = _engine_view(orjson.dumps({**doc, "signatures": {}}))
    assert fast[:6] == slow[:6]
    assert slow[6] == {"signatures": b"{}"}
    assert fast[6] == {}
    assert fast[2] == {  # the typed views
        "a-1-0.tar.bz2": Lite(3, "a" * 64),
        "b-1-0.conda": Lite(3, "a" * 64, "b" * 32),
    }
    # a name in both sections: both paths keep the "packages" one, the record raw() returns
    twice = {**doc, "packages.conda": {"a-1-0.tar.bz2": {**GOOD, "size": 9}}}
    for data in (orjson.dumps(twice), orjson.dumps({**twice, "signatures": {}})):
        index = parse_index(data, "noarch")
        assert index.lite["a-1-0.tar.bz2"].size == 3
        assert orjson.loads(bytes(index.raw("a-1-0.tar.bz2") or b""))["size"] == 3
    bad = {**doc, "packages.conda": {"b-1-0.conda": GOOD, "d-1-0.conda": {"size": "big"}}}
    index = parse_index(orjson.dumps(bad), "noarch")
    assert set(index.lite) == {"a-1-0.tar.bz2", "b-1-0.conda"}
    assert set(index.rejected) == {"d-1-0.conda"}
    assert "d-1-0.conda" in index  # still listed raw; the engine never publishes it


@pytest.mark.parametrize("size", [0, 1, 128 * 1024, 128 * 1024 + 1, 3 * 128 * 1024, 1_000_003])
def test_stored_zst_is_a_frame_every_reader_takes(size: int) -> None:
    """The interim index's .zst: raw blocks, split anywhere across the parts it is given."""
    import random

    import zstandard

    data = random.Random(size).randbytes(size)
    cuts = sorted(random.Random(1).sample(range(size + 1), min(5, size + 1)))
    parts: list[bytes | memoryview] = [
        memoryview(data)[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)
    ]
    frame = b"".join(zst_stored(parts))
    assert decompress_zst(frame) == data
    assert zstandard.ZstdDecompressor().decompress(frame) == data  # reads the declared size
    assert len(frame) < size + 16 + 3 * (size // (128 * 1024) + 1)  # stored, not inflated
