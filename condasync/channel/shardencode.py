"""PURE: encoding one package name's shard (CEP-16), reusing the record encodings of an earlier
shard of that name: a record whose JSON hashes as it did is spliced in as it was encoded, and
the bytes are the same as encoding every record afresh.

A shard is zstd of msgpack `{"packages": {fn: record}, "packages.conda": {...}, "removed":
[...]}` with every map's keys sorted, so each record's msgpack is a self-contained piece of the
shard that depends on that record's JSON alone. We keep, per shard we write, the sha256 prefix
of each record's JSON (`Shard.hashes`, in shard order); with the shard file itself (checked
against its name by the caller) that makes a cache that can only be used for records whose
JSON is byte for byte what was encoded. Anything unexpected means encoding afresh.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

import msgspec

from condasync.channel.shards import (
    NameRecords,
    compress,
    decompress_sized,
    shard_encoder,
)

RECORD_HASH = 16  # bytes of a record's hash kept per shard (a prefix of its JSON's sha256)
SECTIONS = ("packages", "packages.conda")
_MAX_SECONDS = 253402300799  # a larger timestamp is in ms already (year 9999 in seconds)
_decode_list = msgspec.json.Decoder(list[Any])


def record_hashes(ordered: list[str], records: Mapping[str, bytes | msgspec.Raw]) -> list[bytes]:
    """The hash of each record's JSON, for `ordered` filenames."""
    sha256 = hashlib.sha256
    return [sha256(records[fn]).digest()[:RECORD_HASH] for fn in ordered]


def _decode_records(ordered: list[str], records: Mapping[str, bytes | msgspec.Raw]) -> list[Any]:
    """The records of `ordered` as Python objects, sha256 and md5 as bin (32 and 16 bytes),
    as rattler has them; a malformed one is left out, never sent as text (rattler fails)."""
    if not ordered:
        return []
    docs = _decode_list.decode(b"".join([b"[", b",".join([records[fn] for fn in ordered]), b"]"]))
    if len(docs) != len(ordered):  # a value that is not one JSON value: never from msgspec
        raise ValueError("a record's JSON is not a single value")
    fromhex = bytes.fromhex
    for record in docs:
        if record.__class__ is not dict:
            continue
        text = record.get("sha256")
        if text is not None:
            try:
                value = fromhex(text)
            except (TypeError, ValueError):
                value = b""
            if len(value) == 32 and len(text) == 64:
                record["sha256"] = value
            else:
                del record["sha256"]
        text = record.get("md5")
        if text is not None:
            try:
                value = fromhex(text)
            except (TypeError, ValueError):
                value = b""
            if len(value) == 16 and len(text) == 32:
                record["md5"] = value
            else:
                del record["md5"]
    return docs


def _newest(records: Iterable[Any]) -> int:
    """The newest int timestamp of these decoded records, as written."""
    newest = 0
    for record in records:
        if record.__class__ is dict:
            ts = record.get("timestamp")
            if ts.__class__ is int and ts > newest:
                newest = ts
    return newest


def _int(ts: Any) -> int:
    return ts if ts.__class__ is int else 0


def _ms(newest: int) -> int:
    return newest if newest > _MAX_SECONDS else newest * 1000


class _Time(msgspec.Struct):
    timestamp: Any = None


class _IntTime(msgspec.Struct):
    timestamp: int = 0


class _Split(msgspec.Struct):
    """A shard with each record kept as its msgpack bytes."""

    packages: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    conda: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict, name="packages.conda")


class _Times(msgspec.Struct):
    packages: dict[str, _Time] = msgspec.field(default_factory=dict)
    conda: dict[str, _Time] = msgspec.field(default_factory=dict, name="packages.conda")


class _IntTimes(msgspec.Struct):
    packages: dict[str, _IntTime] = msgspec.field(default_factory=dict)
    conda: dict[str, _IntTime] = msgspec.field(default_factory=dict, name="packages.conda")


_split = msgspec.msgpack.Decoder(_Split)
_times = msgspec.msgpack.Decoder(_Times)
_int_times = msgspec.msgpack.Decoder(_IntTimes)
_timestamp = operator.attrgetter("timestamp")


@dataclass
class CachedShard:
    """A shard's records as encoded: per section, the filenames in shard order, the hash of
    the JSON each was encoded from, and each one's msgpack."""

    names: dict[str, list[str]]
    hashes: dict[str, list[bytes]]
    records: dict[str, dict[str, msgspec.Raw]]
    raw: bytes  # the decompressed shard, for the records' timestamps

    def times(self, section: str, filenames: Iterable[str]) -> dict[str, int]:
        """These records' int timestamps as written (0: none)."""
        decoded = _times.decode(self.raw)
        times = decoded.conda if section == "packages.conda" else decoded.packages
        return {fn: _int(times[fn].timestamp) for fn in filenames}

    def newest(self, section: str, kept: Iterable[str], dropped: Iterable[str]) -> int:
        """The newest int timestamp (as written) of the `kept` records of a section, the
        others (`dropped`) being left out. Without a per-record loop when every timestamp
        is an int and no dropped record has the newest one."""
        try:
            decoded = _int_times.decode(self.raw)
        except msgspec.ValidationError:
            return max(self.times(section, kept).values(), default=0)
        times = decoded.conda if section == "packages.conda" else decoded.packages
        top = max(map(_timestamp, times.values()), default=0)
        if any(times[fn].timestamp == top for fn in dropped):
            top = max((times[fn].timestamp for fn in kept), default=0)
        return max(top, 0)


def open_cached(data: bytes, hashes: bytes) -> CachedShard | None:
    """A shard's compressed bytes and its records' hashes (in shard order: each section's
    filenames sorted) as a cache; None on any doubt (then every record is encoded again).
    The caller checks that `data` hashes to the shard's name."""
    try:
        raw = decompress_sized(data)
        split = _split.decode(raw)
    except (ValueError, msgspec.DecodeError):
        return None
    parts = {"packages": split.packages, "packages.conda": split.conda}
    if len(hashes) != (len(split.packages) + len(split.conda)) * RECORD_HASH:
        return None
    names: dict[str, list[str]] = {}
    by_section: dict[str, list[bytes]] = {}
    at = 0
    for key, records in parts.items():
        ordered = list(records)
        if ordered != sorted(ordered):
            return None  # not a shard of ours: the hashes' order is not known
        end = at + len(ordered) * RECORD_HASH
        names[key] = ordered
        by_section[key] = [hashes[i : i + RECORD_HASH] for i in range(at, end, RECORD_HASH)]
        at = end
    return CachedShard(names, by_section, parts, raw)


@dataclass
class Encoded:
    """A name's records, each encoded on its own (section -> {filename: msgpack}), and each
    one's newest timestamp as written: what `assemble_shard` makes a shard of."""

    sections: dict[str, dict[str, msgspec.Raw]]
    times: dict[str, int]  # filename -> its int timestamp as written (0: none)


@dataclass
class Shard:
    """An encoded shard: sha256 of its compressed bytes, those bytes, its newest record
    timestamp in ms, and its records' hashes (see open_cached; empty: none kept)."""

    sha: bytes
    data: bytes
    newest: int
    hashes: bytes = b""
    reused: int = 0  # records whose encoding came from the cache
    encoded: Encoded | None = None  # with build_shard's `keep`


def _finish(doc: dict[str, Any], removed: Iterable[str], newest: int) -> Shard:
    doc["removed"] = sorted(removed)
    data = compress(shard_encoder.encode(doc))
    return Shard(hashlib.sha256(data).digest(), data, _ms(newest))


def build_shard(group: NameRecords, cached: CachedShard | None = None, keep: bool = False) -> Shard:
    """zstd of msgpack `{"packages", "packages.conda", "removed"}`, with the frame's content
    size, keys sorted. A record whose JSON hashes as in `cached` takes its encoding from
    there. `keep`: the records' encodings come along (`Shard.encoded`), for shards of some
    of them (assemble_shard)."""
    doc: dict[str, Any] = {}
    hashes: list[bytes] = []
    encoded = Encoded({}, {}) if keep else None
    newest = reused = 0
    for key, records in zip(SECTIONS, (group.packages, group.conda), strict=True):
        ordered = sorted(records)
        hashed = record_hashes(ordered, records)
        hashes += hashed
        if cached is None and encoded is None:  # all afresh: the shard encoded in one go
            docs = _decode_records(ordered, records)
            newest = max(newest, _newest(docs))
            doc[key] = dict(zip(ordered, docs, strict=True))
            continue
        out: dict[str, msgspec.Raw] = {}
        todo = ordered
        if cached is not None:
            old_names, old_hashes = cached.names[key], cached.hashes[key]
            if old_names == ordered and old_hashes == hashed:  # the whole section as it was
                out, todo, dropped = dict(cached.records[key]), [], []
            else:  # (filename, hash) pairs the cache has: those are encoded already
                same = set(zip(ordered, hashed, strict=True))
                same.intersection_update(zip(old_names, old_hashes, strict=True))
                old = cached.records[key]
                out = {fn: old[fn] for fn, _ in same}
                todo = [fn for fn in ordered if fn not in out]
                dropped = [fn for fn in old_names if fn not in out]
            if out:
                newest = max(newest, cached.newest(key, out, dropped))
                if encoded is not None:
                    encoded.times.update(cached.times(key, out))
                reused += len(out)
        fresh = _decode_records(todo, records)
        encode = shard_encoder.encode
        for fn, record in zip(todo, fresh, strict=True):
            out[fn] = msgspec.Raw(encode(record))
            ts = _newest((record,))
            if ts > newest:
                newest = ts
            if encoded is not None:
                encoded.times[fn] = ts
        if encoded is not None:
            encoded.sections[key] = out
        doc[key] = out
    shard = _finish(doc, group.removed, newest)
    shard.hashes, shard.reused, shard.encoded = b"".join(hashes), reused, encoded
    return shard


def assemble_shard(encoded: Encoded, removed: Iterable[str], exclude: Set[str]) -> Shard:
    """The shard of `encoded`'s records but `exclude` (an interim shard, whose records are
    a subset of a shard encoded this run): nothing is encoded again."""
    doc: dict[str, Any] = {
        key: {fn: value for fn, value in records.items() if fn not in exclude}
        for key, records in encoded.sections.items()
    }
    times = encoded.times
    newest = max((ts for fn, ts in times.items() if fn not in exclude), default=0)
    return _finish(doc, removed, newest)


def encode_shard(group: NameRecords) -> tuple[bytes, bytes, int]:
    """(sha256 of the compressed shard, the compressed shard, its newest record timestamp in
    ms), every record encoded afresh (see build_shard)."""
    shard = build_shard(group)
    return shard.sha, shard.data, shard.newest
