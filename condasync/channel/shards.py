"""PURE: sharded repodata (CEP-16) as rattler 0.28 reads it: grouping a published index's
records by package name, encoding and decoding shards and the shard index (DESIGN.md §1).
"""

from __future__ import annotations

import datetime
import hashlib
import re
import threading
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

import msgspec
import zstandard

SHARD_INDEX = "repodata_shards.msgpack.zst"
SHARDS_DIR = "shards"
SHARD_SUFFIX = ".msgpack.zst"
SHARD_LEVEL = 3  # small files: level 3 compresses a 600k-record subdir's shards in ~1 s
MAX_SHARD_INDEX = 256 * 1024 * 1024  # decompressed bytes we accept for an index or a shard
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_SHARD_FILE = re.compile(r"^[0-9a-f]{64}\.msgpack\.zst$")

# sorted keys (records' too): the same name, the same bytes
shard_encoder = msgspec.msgpack.Encoder(order="sorted")
_decoder = msgspec.msgpack.Decoder()


def shard_filename(digest: bytes) -> str:
    """`<sha256 hex>.msgpack.zst`, the shard's file name in `shards/`."""
    return digest.hex() + SHARD_SUFFIX


def is_shard_filename(filename: str) -> bool:
    return bool(_SHARD_FILE.match(filename))


def package_name(filename: str) -> str:
    """The package name of `<name>-<version>-<build>.<ext>` (a validated filename)."""
    return filename.rsplit("-", 2)[0]


Written = dict[str, tuple[bytes, list[str]]]  # section -> (JSON object, its keys in order)
SECTIONS = ("packages", "packages.conda")
_raw_entries = msgspec.json.Decoder(dict[str, msgspec.Raw])


class NameRecords:
    """One package name's records, as raw JSON, and its `removed` filenames.

    The records may come `written` instead (see shardruns): per section, one JSON object of
    exactly these entries as upstream wrote them, and its keys in order. `packages` and
    `conda` are then decoded from it on first use, and `build_shard` decodes it straight
    into records."""

    __slots__ = ("_conda", "_packages", "hasher", "removed", "written")

    def __init__(
        self,
        packages: dict[str, bytes | msgspec.Raw] | None = None,
        conda: dict[str, bytes | msgspec.Raw] | None = None,
        removed: list[str] | None = None,
        hasher: Any = None,  # the digest so far, fed while grouping (None: from the records)
        written: Written | None = None,
    ) -> None:
        self._packages = packages if packages is not None or written else {}
        self._conda = conda if conda is not None or written else {}
        self.removed = removed if removed is not None else []
        self.hasher = hasher
        self.written = written

    @property
    def packages(self) -> dict[str, bytes | msgspec.Raw]:
        return self._unpack()[0]

    @property
    def conda(self) -> dict[str, bytes | msgspec.Raw]:
        return self._unpack()[1]

    def _unpack(self) -> tuple[dict[str, bytes | msgspec.Raw], dict[str, bytes | msgspec.Raw]]:
        """(packages, conda), decoded from `written` on first use (which they then replace)."""
        if self.written is not None:
            found = {key: written_entries(data, keys) for key, (data, keys) in self.written.items()}
            self._packages = found.get("packages", {})
            self._conda = found.get("packages.conda", {})
            self.written = None
        assert self._packages is not None and self._conda is not None
        return self._packages, self._conda

    def filenames(self) -> tuple[list[str], list[str]]:
        """The filenames of `packages` and of `conda` (not decoding `written` ones)."""
        if self.written is not None:
            packages, conda = (self.written.get(key, (b"", [])) for key in SECTIONS)
            return list(packages[1]), list(conda[1])
        return list(self.packages), list(self.conda)

    def without(self, exclude: Set[str]) -> NameRecords:
        """These records but `exclude` (its digest then comes from its records)."""
        return NameRecords(
            {fn: r for fn, r in self.packages.items() if fn not in exclude},
            {fn: r for fn, r in self.conda.items() if fn not in exclude},
            list(self.removed),
        )

    def empty(self) -> bool:
        """No record (a name listed only in `removed`)."""
        if self.written is not None:
            return not any(keys for _, keys in self.written.values())
        return not self.packages and not self.conda

    def digest(self) -> bytes:
        """A hash of what this name publishes, in upstream order: unchanged records give the
        same digest, and a patched record (new depends, same file) a new one."""
        h = self.hasher.copy() if self.hasher is not None else _record_hasher(self)
        for filename in sorted(self.removed):
            h.update(b"\x01" + filename.encode())
        result: bytes = h.digest()
        return result


def written_entries(data: bytes, keys: list[str]) -> dict[str, bytes | msgspec.Raw]:
    """The entries of a `written` section; ValueError unless they are exactly `keys`."""
    return check_written(_raw_entries.decode(data), keys)


def check_written(entries: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """A decoded `written` section's entries, which must be exactly `keys`, in order."""
    if list(entries) != keys:
        raise ValueError("a written section does not hold the entries it should")
    return entries


def _record_hasher(group: NameRecords) -> Any:
    h = hashlib.sha256()
    for section in (group.packages, group.conda):
        for filename, raw in section.items():
            h.update(filename.encode() + b"\x00")
            h.update(raw)
    return h


def group_by_name(
    sections: Mapping[str, Mapping[str, bytes | msgspec.Raw]], removed: Iterable[object] = ()
) -> dict[str, NameRecords]:
    """The published records grouped by package name, each group's digest fed on the way
    (one pass over 600k records). A name listed only in `removed` gets no group (it needs no
    shard); removed filenames of other names go with their records."""
    groups: dict[str, NameRecords] = {}
    get = groups.get
    sha256 = hashlib.sha256
    for key in ("packages", "packages.conda"):  # the order NameRecords.digest hashes them in
        conda = key == "packages.conda"
        current = None
        for filename, raw in sections.get(key, {}).items():
            name = filename.rsplit("-", 2)[0]
            if name != current:  # a name's records are usually adjacent
                current = name
                group = get(name)
                if group is None:
                    group = groups[name] = NameRecords(hasher=sha256())
                target = group.conda if conda else group.packages
                update = group.hasher.update
            # Raw views of the index document: no copy of 340 MB of records
            target[filename] = raw
            update(filename.encode() + b"\x00")
            update(raw)
    for gone in removed:
        if isinstance(gone, str) and gone.endswith((".conda", ".tar.bz2")):
            found = groups.get(package_name(gone))
            if found is not None:
                found.removed.append(gone)
    return groups


def timestamp_ms(record: Any) -> int:
    """A record's timestamp in ms (old records have seconds), 0 when it has none."""
    ts = record.get("timestamp") if isinstance(record, dict) else None
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts <= 0:
        return 0
    return int(ts if ts > 253402300799 else ts * 1000)


def created_at(newest_ms: int) -> str:
    """RFC 3339 for the shard index's `created_at`: the newest record's time, so the same
    records give the same index bytes on every run and in every fresh mirror."""
    moment = datetime.datetime.fromtimestamp(newest_ms / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{newest_ms % 1000:03d}Z"


class _Compressors(threading.local):
    compressor: zstandard.ZstdCompressor | None = None


_compressors = _Compressors()


def compress(data: bytes) -> bytes:
    """zstd with the content size in the frame header (rattler's writer leaves it out, and
    Python's `zstandard.decompress()` then fails). One compressor per thread, reused."""
    compressor = _compressors.compressor
    if compressor is None:
        compressor = zstandard.ZstdCompressor(level=SHARD_LEVEL, write_content_size=True)
        _compressors.compressor = compressor
    return compressor.compress(data)


def encode_shard_index(subdir: str, shards: Mapping[str, bytes], created_at: str) -> bytes:
    """The shard index: relative `base_url` (packages beside it) and `shards_base_url`, so
    the same tree works under any URL prefix; `created_at` an RFC 3339 string."""
    doc = {
        "info": {
            "subdir": subdir,
            "base_url": "./",
            "shards_base_url": f"./{SHARDS_DIR}/",
            "created_at": created_at,
        },
        "shards": dict(shards),
    }
    return compress(shard_encoder.encode(doc))


def decompress(data: bytes) -> bytes:
    """Decompress a shard or shard index, refusing absurd sizes (zip-bomb guard)."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        with reader:
            out = reader.read(MAX_SHARD_INDEX + 1)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt zstd data: {exc}") from None
    if len(out) > MAX_SHARD_INDEX:
        raise ValueError("decompressed shard data is implausibly large")
    return out


@dataclass
class ShardIndex:
    """A decoded shard index."""

    info: dict[str, Any]
    shards: dict[str, bytes]


def decode_shard_index(data: bytes) -> ShardIndex:
    """Parse a shard index; ValueError when it is not one rattler could read."""
    try:
        doc = _decoder.decode(decompress(data))
    except msgspec.DecodeError as exc:
        raise ValueError(f"shard index is not msgpack: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("shard index is not a map")
    info, shards = doc.get("info"), doc.get("shards")
    if not isinstance(info, dict) or not isinstance(shards, dict):
        raise ValueError("shard index lacks `info` or `shards`")
    for key in ("subdir", "base_url", "shards_base_url"):
        if not isinstance(info.get(key), str):
            raise ValueError(f"shard index info has no {key}")
    if "created_at" in info and not isinstance(info["created_at"], str):
        raise ValueError("shard index created_at is not a string")
    for name, digest in shards.items():
        if not isinstance(name, str) or not isinstance(digest, bytes) or len(digest) != 32:
            raise ValueError(f"shard index entry {name!r} is not a 32-byte sha256")
    return ShardIndex(info, shards)


def decode_shard(data: bytes) -> dict[str, Any]:
    """Parse a shard into `{"packages", "packages.conda", "removed"}` (records as stored)."""
    try:
        doc = _decoder.decode(decompress(data))
    except msgspec.DecodeError as exc:
        raise ValueError(f"shard is not msgpack: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("packages"), dict):
        raise ValueError("shard has no `packages` map")
    doc.setdefault("packages.conda", {})
    doc.setdefault("removed", [])
    if not isinstance(doc["packages.conda"], dict) or not isinstance(doc["removed"], list):
        raise ValueError("shard `packages.conda` or `removed` has the wrong type")
    return doc


def json_record(record: Any) -> Any:
    """A shard record as repodata.json has it (sha256 and md5 back to hex)."""
    if isinstance(record, dict):
        return {k: v.hex() if isinstance(v, bytes) else v for k, v in record.items()}
    return record


def shard_records(shard: Mapping[str, Any]) -> dict[str, Any]:
    """{filename: record as JSON} of both sections of a decoded shard."""
    out: dict[str, Any] = {}
    for key in ("packages", "packages.conda"):
        for filename, record in shard.get(key, {}).items():
            out[filename] = json_record(record)
    return out


def rewrite_index_urls(data: bytes, base_url: str, shards_base_url: str) -> bytes:
    """An upstream shard index with its URLs pointing where we say (a proxy's own paths)."""
    index = decode_shard_index(data)
    info = {**index.info, "base_url": base_url, "shards_base_url": shards_base_url}
    return compress(shard_encoder.encode({"info": info, "shards": index.shards}))
