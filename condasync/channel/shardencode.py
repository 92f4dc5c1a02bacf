"""PURE: encoding one package name's shard (CEP-16): zstd of msgpack `{"packages": {fn:
record}, "packages.conda": {...}, "removed": [...]}`, every map's keys sorted, so each record's
msgpack is a self-contained piece of the shard that depends on that record's JSON alone. A shard
of some of a name's records (an interim shard) is put together from the encodings made for the
name's final shard, and is byte for byte what encoding those records afresh gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET

from condasync.channel.shards import (
    SECTIONS,
    NameRecords,
    check_written,
    compress,
    shard_encoder,
)

_MAX_SECONDS = 253402300799  # a larger timestamp is in ms already (year 9999 in seconds)


class _Record(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """The fields conda records have, each kept as decoded (a record with another field is
    decoded as a dict instead). Fewer objects than a dict per record, and, encoded with
    sorted fields and unset ones left out, the same msgpack as that dict."""

    arch: Any = UNSET
    build: Any = UNSET
    build_number: Any = UNSET
    constrains: Any = UNSET
    date: Any = UNSET
    depends: Any = UNSET
    features: Any = UNSET
    legacy_bz2_md5: Any = UNSET
    legacy_bz2_size: Any = UNSET
    license: Any = UNSET
    license_family: Any = UNSET
    md5: Any = UNSET
    name: Any = UNSET
    noarch: Any = UNSET
    platform: Any = UNSET
    python_site_packages_path: Any = UNSET
    sha256: Any = UNSET
    size: Any = UNSET
    subdir: Any = UNSET
    timestamp: Any = UNSET
    track_features: Any = UNSET
    version: Any = UNSET


_decode_structs = msgspec.json.Decoder(list[_Record])
_split_records = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
_decode_any = msgspec.json.Decoder(list[Any])
_decode_struct_map = msgspec.json.Decoder(dict[str, _Record])
_decode_any_map = msgspec.json.Decoder(dict[str, Any])


def _binary(text: Any, size: int) -> bytes | None:
    """A hex digest as the `size` bytes it spells; None when it is not one (then it is left
    out, never sent as text: rattler fails on it)."""
    if text.__class__ is str and len(text) == 2 * size:  # fromhex skips whitespace
        try:
            value = bytes.fromhex(text)
        except ValueError:
            return None
        return value if len(value) == size else None
    return None


def _decode_records(
    ordered: list[str], records: Mapping[str, bytes | msgspec.Raw]
) -> tuple[list[Any], int]:
    """(the records of `ordered` decoded, their newest int timestamp as written), sha256 and
    md5 as bin (32 and 16 bytes), as rattler has them."""
    if not ordered:
        return [], 0
    data = b"".join([b"[", b",".join([records[fn] for fn in ordered]), b"]"])
    try:
        structs = _decode_structs.decode(data)
    except msgspec.ValidationError:  # another field, or a record that is not an object
        docs = _decode_any.decode(data)
        if len(docs) != len(ordered):  # a value that is not one JSON value: never from msgspec
            raise ValueError("a record's JSON is not a single value") from None
        return docs, _bin_dicts(docs)
    if len(structs) != len(ordered):  # a value that is not one JSON value: never from msgspec
        raise ValueError("a record's JSON is not a single value")
    return structs, _bin_structs(structs)


def _decode_written(data: bytes, keys: list[str]) -> tuple[list[str], list[Any], int]:
    """`_decode_records` for a `written` section (NameRecords): (its filenames sorted, their
    records, the newest timestamp)."""
    try:
        entries: dict[str, Any] = _decode_struct_map.decode(data)
        structs = True
    except msgspec.ValidationError:  # another field, or a record that is not an object
        entries, structs = _decode_any_map.decode(data), False
    check_written(entries, keys)
    ordered = sorted(entries)
    docs = [entries[fn] for fn in ordered]
    return ordered, docs, _bin_structs(docs) if structs else _bin_dicts(docs)


def _bin_structs(structs: list[Any]) -> int:
    """Hashes to bin in typed records (see _binary); returns the newest int timestamp."""
    newest = 0
    fromhex = bytes.fromhex
    for record in structs:  # _binary, inlined (a call per hash costs 0.1 s in 600k records)
        text = record.sha256
        if text is not UNSET and text is not None:
            if text.__class__ is str and len(text) == 64:
                try:
                    value = fromhex(text)
                except ValueError:
                    value = b""
                record.sha256 = value if len(value) == 32 else UNSET
            else:
                record.sha256 = UNSET
        text = record.md5
        if text is not UNSET and text is not None:
            if text.__class__ is str and len(text) == 32:
                try:
                    value = fromhex(text)
                except ValueError:
                    value = b""
                record.md5 = value if len(value) == 16 else UNSET
            else:
                record.md5 = UNSET
        ts = record.timestamp
        if ts.__class__ is int and ts > newest:
            newest = ts
    return newest


def _bin_dicts(docs: list[Any]) -> int:
    """`_bin_structs` for records of any shape."""
    newest = 0
    for record in docs:
        if record.__class__ is not dict:
            continue
        for key, size in (("sha256", 32), ("md5", 16)):
            text = record.get(key)
            if text is not None:
                value = _binary(text, size)
                if value is None:
                    del record[key]
                else:
                    record[key] = value
        ts = record.get("timestamp")
        if ts.__class__ is int and ts > newest:
            newest = ts
    return newest


def _newest(record: Any) -> int:
    """A decoded record's int timestamp as written (0: none)."""
    is_dict = record.__class__ is dict
    ts = record.get("timestamp") if is_dict else getattr(record, "timestamp", None)
    return ts if ts.__class__ is int and ts > 0 else 0


def _ms(newest: int) -> int:
    return newest if newest > _MAX_SECONDS else newest * 1000


@dataclass
class Encoded:
    """A name's records, each encoded on its own (section -> {filename: msgpack}), and each
    one's timestamp: what `assemble_shard` makes a shard of."""

    sections: dict[str, dict[str, msgspec.Raw]]
    times: dict[str, int]  # filename -> its int timestamp as written (0: none)


@dataclass
class Shard:
    """An encoded shard: its msgpack and newest record timestamp in ms; compressed (see
    `compressed`), the sha256 of its compressed bytes and those bytes."""

    raw: bytes
    newest: int
    encoded: Encoded | None = None  # with build_shard's `keep`
    sha: bytes = b""
    data: bytes = b""

    def compressed(self) -> Shard:
        """zstd with the frame's content size (this may run in another thread: the GIL is
        released while it does)."""
        if not self.data:
            self.data = compress(self.raw)
            self.sha = hashlib.sha256(self.data).digest()
            self.raw = b""
        return self


def _finish(doc: dict[str, Any], removed: Iterable[str], newest: int) -> Shard:
    doc["removed"] = sorted(removed)
    return Shard(shard_encoder.encode(doc), _ms(newest))


def build_shard(group: NameRecords, keep: bool = False, compressed: bool = True) -> Shard:
    """zstd of msgpack `{"packages", "packages.conda", "removed"}`, with the frame's content
    size, keys sorted (not yet compressed unless `compressed`). `keep`: each record's
    encoding comes along (`Shard.encoded`), for shards of some of the records
    (assemble_shard)."""
    doc: dict[str, Any] = {}
    encoded = Encoded({}, {}) if keep else None
    newest = 0
    encode = shard_encoder.encode
    for key in SECTIONS:
        if group.written is not None:  # decoded straight from upstream's bytes
            data, keys = group.written.get(key, (b"{}", []))
            ordered, docs, top = _decode_written(data, keys)
        else:
            records = group.packages if key == "packages" else group.conda
            ordered = sorted(records)
            docs, top = _decode_records(ordered, records)
        newest = max(newest, top)
        if encoded is None:  # the shard encoded in one go
            doc[key] = dict(zip(ordered, docs, strict=True))
            continue
        # encoded in one go, then cut into its records (views of those bytes)
        out = _split_records.decode(encode(dict(zip(ordered, docs, strict=True))))
        doc[key] = encoded.sections[key] = out
        encoded.times.update(zip(ordered, map(_newest, docs), strict=True))
    shard = _finish(doc, group.removed, newest)
    shard.encoded = encoded
    return shard.compressed() if compressed else shard


def assemble_shard(encoded: Encoded, removed: Iterable[str], exclude: Set[str]) -> Shard:
    """The shard of `encoded`'s records but `exclude` (an interim shard, whose records are
    a subset of a shard encoded this run): nothing is encoded again."""
    doc: dict[str, Any] = {
        key: {fn: value for fn, value in records.items() if fn not in exclude}
        for key, records in encoded.sections.items()
    }
    times = encoded.times
    newest = max((ts for fn, ts in times.items() if fn not in exclude), default=0)
    return _finish(doc, removed, newest).compressed()


def encode_shard(group: NameRecords) -> tuple[bytes, bytes, int]:
    """(sha256 of the compressed shard, the compressed shard, its newest record timestamp in
    ms), every record encoded afresh (see build_shard)."""
    shard = build_shard(group)
    return shard.sha, shard.data, shard.newest
