"""channel/shardencode.py: a shard's bytes are those of the reference encoding (the whole shard
decoded from JSON, hashes made bin, encoded with sorted keys), whichever way it is made: typed
records, records of any shape, and interim shards put together from a final shard's records."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import msgspec
import pytest
import zstandard

from condasync.channel.shardencode import assemble_shard, build_shard
from condasync.channel.shards import NameRecords, decode_shard

SHA = "0123456789abcdef" * 4
MD5 = "fedcba9876543210" * 2


def reference(group: NameRecords) -> tuple[bytes, int]:
    """(compressed shard, newest ms): the encoding shards had before shardencode, kept here as
    the definition of a shard's bytes."""
    doc: dict[str, Any] = {"packages": {}, "packages.conda": {}}
    for key, records in (("packages", group.packages), ("packages.conda", group.conda)):
        for fn in sorted(records):
            doc[key][fn] = msgspec.json.decode(records[fn])
    newest = 0
    for section in (doc["packages"], doc["packages.conda"]):
        for record in section.values():
            if not isinstance(record, dict):
                continue
            for key, size in (("sha256", 32), ("md5", 16)):
                text = record.get(key)
                if text is not None:
                    try:
                        value = bytes.fromhex(text)
                    except (TypeError, ValueError):
                        value = b""
                    if len(value) == size and len(text) == 2 * size:
                        record[key] = value
                    else:
                        del record[key]
            ts = record.get("timestamp")
            if type(ts) is int and ts > newest:
                newest = ts
    doc["removed"] = sorted(group.removed)
    encoder = msgspec.msgpack.Encoder(order="sorted")
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return compressor.compress(
        encoder.encode(doc)
    ), newest if newest > 253402300799 else newest * 1000


def record(version: str, **extra: Any) -> dict[str, Any]:
    doc = {"name": "foo", "version": version, "build": "h1_0", "build_number": 0, "size": 10,
           "sha256": SHA, "md5": MD5, "depends": ["bar >=1"], "constrains": [],
           "timestamp": 1700000000123, "subdir": "linux-64"}  # fmt: skip
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not ...}


ODD_RECORDS = [  # each is one record of name foo, version 9
    record("9", sha256="not hex"),
    record("9", sha256=SHA.upper()),
    record("9", sha256=SHA[:62] + "  "),  # fromhex skips the spaces: too short
    record("9", sha256=SHA + "00"),
    record("9", sha256=None, md5=None),
    record("9", sha256=7, md5=["x"]),
    record("9", sha256=..., md5=...),
    record("9", md5=MD5[:-1] + "g"),
    record("9", timestamp=1700000000),  # seconds
    record("9", timestamp=1700000000.5),
    record("9", timestamp=True),
    record("9", timestamp=-5),
    record("9", timestamp=...),
    record("9", noarch="python", track_features="", features=None, license=None),
    record("9", binstar={"channel": "main", "sha256": SHA}),  # another field: decoded as a dict
    record("9", app_type="desk", depends=[{"a": 1}], size=2**40),
    record("9", sha256="é" * 64),
    ["not", "an", "object"],
    None,
]


def group_of(conda: dict[str, Any], packages: dict[str, Any] | None = None) -> NameRecords:
    def raw(doc: Any) -> bytes:
        return json.dumps(doc, indent=1).encode()

    return NameRecords(
        {fn: raw(doc) for fn, doc in (packages or {}).items()},
        {fn: raw(doc) for fn, doc in conda.items()},
        ["foo-0.1-h0_0.conda", "foo-0.0-h0_0.tar.bz2"],
    )


@pytest.mark.parametrize("odd", range(len(ODD_RECORDS)))
def test_any_record_gives_the_reference_bytes(odd: int) -> None:
    conda = {f"foo-{i}.0-h1_0.conda": record(f"{i}.0") for i in range(3)}
    conda["foo-9-h1_0.conda"] = ODD_RECORDS[odd]
    group = group_of(conda, {"foo-1.0-h1_0.tar.bz2": record("1.0", timestamp=1800000000000)})
    data, newest = reference(group)
    for keep in (False, True):
        shard = build_shard(group, keep)
        assert (shard.data, shard.newest) == (data, newest)
        assert shard.sha == hashlib.sha256(data).digest()
    assert zstandard.frame_content_size(data) > 0


def test_hashes_are_bin_in_typed_and_untyped_records() -> None:
    conda = {"foo-1-h1_0.conda": record("1"), "foo-2-h1_0.conda": record("2", extra_field=1)}
    for records in ({"foo-1-h1_0.conda": conda["foo-1-h1_0.conda"]}, conda):
        shard = decode_shard(build_shard(group_of(records)).data)
        for doc in shard["packages.conda"].values():
            assert doc["sha256"] == bytes.fromhex(SHA) and doc["md5"] == bytes.fromhex(MD5)


def random_record(rng: random.Random, version: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"timestamp": rng.choice([1600000000000, 1500000000, ...])}
    if rng.random() < 0.1:
        extra["sha256"] = rng.choice(["zz", SHA.upper(), None])
    if rng.random() < 0.05:
        extra["summary"] = "another field"
    return record(version, **extra)


def test_interim_shards_equal_a_fresh_encoding_of_their_records() -> None:
    rng = random.Random(15)
    for _ in range(60):
        conda = {
            f"foo-{i}-h{i}_0.conda": random_record(rng, str(i)) for i in range(rng.randint(1, 30))
        }
        packages = {
            f"foo-{i}-h{i}_0.tar.bz2": random_record(rng, str(i)) for i in range(rng.randint(0, 5))
        }
        group = group_of(conda, packages)
        final = build_shard(group, keep=True)
        assert final.encoded is not None
        filenames = [*group.packages, *group.conda]
        exclude = set(rng.sample(filenames, rng.randint(0, len(filenames) - 1)))
        interim = assemble_shard(final.encoded, group.removed, exclude)
        subset = NameRecords(
            {fn: r for fn, r in group.packages.items() if fn not in exclude},
            {fn: r for fn, r in group.conda.items() if fn not in exclude},
            group.removed,
        )
        assert (interim.data, interim.newest) == reference(subset)
        assert (interim.data, interim.newest) == (
            build_shard(subset).data,
            build_shard(subset).newest,
        )


def test_a_record_that_is_not_one_json_value_is_refused() -> None:
    group = NameRecords({}, {"foo-1-h1_0.conda": b'{"a": 1}, {"b": 2}'})
    with pytest.raises(ValueError):
        build_shard(group)


def test_records_that_are_two_json_values_are_refused_typed_too() -> None:
    group = NameRecords({}, {"foo-1-h1_0.conda": b'{"name": "a"}, {"name": "b"}'})
    with pytest.raises(ValueError):
        build_shard(group)
