"""`verify` for a subdir's shards: the shard index decodes, every shard it names exists and
hashes to its name and holds exactly repodata.json's records for that name; old orphans warn.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from condasync.channel.shards import (
    SHARD_INDEX,
    SHARD_SUFFIX,
    decode_shard,
    decode_shard_index,
    is_shard_filename,
    package_name,
    shard_records,
)

SHARD_KINDS = {
    "shard-index": "repodata_shards.msgpack.zst cannot be decoded or names another subdir",
    "shard-missing": "a shard the shard index names does not exist",
    "shard-hash": "a shard's sha256 differs from its name in the shard index",
    "shard-records": "a shard's records differ from repodata.json's for that name",
}
DEFAULT_GRACE = 15 * 60.0


@dataclass
class ShardFindings:
    """(filename, kind, detail) problems, and warnings (old orphan shards)."""

    problems: list[tuple[str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_shards(
    subdir: str,
    read: Callable[[str], bytes | None],
    shard_files: Mapping[str, tuple[int, int]],
    records: Mapping[str, Any],
    grace: float = DEFAULT_GRACE,
) -> ShardFindings:
    """`read(relpath within the subdir)`; `shard_files`: {filename: (size, mtime_ns)} in
    `shards/`; `records`: repodata.json's records by filename. No shard index: no findings."""
    found = ShardFindings()
    data = read(SHARD_INDEX)
    if data is None:
        return found
    try:
        index = decode_shard_index(data)
    except ValueError as exc:
        found.problems.append((SHARD_INDEX, "shard-index", str(exc)))
        return found
    if index.info.get("subdir") != subdir:
        detail = f"info.subdir is {index.info.get('subdir')!r}, but it is in {subdir!r}"
        found.problems.append((SHARD_INDEX, "shard-index", detail))
    by_name: dict[str, dict[str, Any]] = {}
    for filename, record in records.items():
        by_name.setdefault(package_name(filename), {})[filename] = record
    for name in sorted(by_name.keys() - index.shards.keys()):
        detail = f"repodata.json lists {len(by_name[name])} records of {name!r}, no shard does"
        found.problems.append((SHARD_INDEX, "shard-records", detail))
    for name, digest in sorted(index.shards.items()):
        _check_one(name, digest.hex(), read, by_name.get(name, {}), found)
    named = {digest.hex() for digest in index.shards.values()}
    now = time.time_ns()
    for filename, (_, mtime_ns) in sorted(shard_files.items()):
        if is_shard_filename(filename) and filename.split(".", 1)[0] not in named:
            age = (now - mtime_ns) / 1e9
            if age >= grace:
                found.warnings.append(
                    f"{subdir}/shards/{filename}: orphan shard, {age / 60:.0f} min old"
                    " (the next mirror run deletes it)"
                )
    return found


def _check_one(
    name: str,
    hexdigest: str,
    read: Callable[[str], bytes | None],
    expected: Mapping[str, Any],
    found: ShardFindings,
) -> None:
    relpath = f"shards/{hexdigest}{SHARD_SUFFIX}"
    data = read(relpath)
    if data is None:
        found.problems.append((relpath, "shard-missing", f"shard of {name!r} does not exist"))
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != hexdigest:
        found.problems.append((relpath, "shard-hash", f"sha256 is {actual} ({name!r})"))
        return
    try:
        records = shard_records(decode_shard(data))
    except ValueError as exc:
        found.problems.append((relpath, "shard-records", f"{name!r}: {exc}"))
        return
    if records != dict(expected):
        missing = sorted(expected.keys() - records.keys())
        extra = sorted(records.keys() - expected.keys())
        differ = sorted(
            fn for fn in records.keys() & expected.keys() if records[fn] != expected[fn]
        )
        detail = f"{name!r}: missing {missing[:5]}, extra {extra[:5]}, differ {differ[:5]}"
        found.problems.append((relpath, "shard-records", detail))
