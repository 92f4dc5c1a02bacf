"""Preparing, encoding and publishing one subdir's index files (.zst, then .json), written
while the downloads run and renamed into place only once their packages are."""

from __future__ import annotations

import asyncio
import bz2
from concurrent.futures import ThreadPoolExecutor

import msgspec

from condasync.channel.bigindex import Index, encode_index, parse_index, published_sections
from condasync.channel.cut import cut
from condasync.channel.repodata import compress_zst, zst_stored
from condasync.channel.shards import SHARD_INDEX
from condasync.engine import fetch
from condasync.engine.job import DEFAULT_ZSTD, INDEX_FILES, MirrorJob
from condasync.engine.state import SubdirMeta
from condasync.models import Plan
from condasync.storage import Data, Prepared, Storage, joined

_PUBLISHED = (*INDEX_FILES, SHARD_INDEX)  # the shard index only when we wrote one


def published_intact(storage: Storage, subdir: str, meta: SubdirMeta) -> bool:
    for name in _PUBLISHED:
        st = storage.stat(f"{subdir}/{name}")
        want = meta.published.get(name)
        if name == SHARD_INDEX and want is None and st is None:
            continue  # --no-shards (or a state from before shards): nothing to compare
        if st is None or list(st) != want:
            return False
    return True


def publishable_as_is(index: Index, subdir: str) -> bool:
    """Upstream's document needs none of our changes (a base_url to drop, a subdir to set, a
    key or `info` listed twice, which clients may read either way)."""
    return (
        index.info.get("subdir") == subdir
        and "base_url" not in index.info
        and index.unique
        and index.info_once()
    )


def encode_published(
    index: Index,
    subdir: str,
    published: set[str] | None,
    skip: set[str],
    kept_removed: dict[str, msgspec.Raw],
) -> bytes:
    """The index to publish: `published` records but `skip`, in upstream order, then kept ones."""
    return encode_index(index, subdir, published_sections(index, published, skip, kept_removed))


def kept_removed_records(
    storage: Storage, subdir: str, plan: Plan, index: Index, keep_removed: bool
) -> dict[str, msgspec.Raw]:
    """--keep-removed: records upstream dropped come from the index we published last time."""
    if not keep_removed:
        return {}
    kept = plan.kept_removed
    if not kept:
        return {}
    raw = storage.read(f"{subdir}/repodata.json")
    if raw is None:
        return {}
    try:
        previous = parse_index(raw, subdir)
    except ValueError:
        return {}
    found = {fn: previous.raw(fn) for fn in sorted(kept)}
    return {fn: record for fn, record in found.items() if record is not None}


def prepare_indexes(
    storage: Storage,
    subdir: str,
    index: Index,
    published: set[str] | None,
    kept_removed: dict[str, msgspec.Raw],
    plan: Plan,
    job: MirrorJob,
    as_is: bytes | None,
) -> tuple[Prepared | None, Prepared | None]:
    """(interim, final) index files, written but not yet published (runs during downloads).

    The interim index lists only records whose files are already in place and stay so: not
    the adds (they may fail) and not the replacements (their bytes are about to change).
    With `as_is` (upstream's body), the final index is that (see prepare_as_is): None here,
    and the interim one is that body with records cut out, when they line up (cut.py).
    """
    interim = None
    if plan.replace:
        skip = set(plan.add) | set(plan.replace)
        parts = None if as_is is None else cut(as_is, index.spans, skip)
        if parts is None:
            parts = [encode_published(index, subdir, published, skip, kept_removed)]
        # It is live only while the replaced files are moved in. On a local disk its .zst
        # is stored, not compressed, so it takes no CPU from the downloads, and the parts go
        # to disk as they are; an object store gets the fastest zstd (fewer bytes to PUT).
        if not storage.local:
            parts = [joined(parts)]  # compressed and uploaded whole: join once
        stored = zst_stored(parts) if storage.local else None
        interim = prepare_index(storage, subdir, parts, job, level=1, zst=stored)
        del parts, stored
    if as_is is not None:
        return interim, None
    try:
        data = encode_published(index, subdir, published, set(), kept_removed)
        return interim, prepare_index(storage, subdir, data, job)
    except BaseException:
        if interim is not None:
            interim.discard()
        raise


async def discard_when_ready(
    ahead: asyncio.Future[tuple[Prepared | None, Prepared | None]] | asyncio.Future[Prepared],
) -> None:
    """Wait for an index thread, then drop what it wrote and is not published."""
    try:
        result = await asyncio.shield(ahead)
    except BaseException:
        return
    for prepared in result if isinstance(result, tuple) else (result,):
        if prepared is not None:
            prepared.discard()


def prepare_as_is(
    storage: Storage, subdir: str, fetched: fetch.IndexFetch, job: MirrorJob
) -> Prepared:
    """Upstream's body as the final index, and the .zst upstream sent (unless a zstd level
    was asked for): nothing to encode or compress."""
    assert fetched.body is not None
    zst = fetched.zst if job.zstd_level is None else None
    return prepare_index(storage, subdir, fetched.body, job, zst=zst)


def prepare_index(
    storage: Storage,
    subdir: str,
    data: bytes | list[bytes | memoryview],
    job: MirrorJob,
    level: int | None = None,
    zst: bytes | list[bytes | memoryview] | None = None,
) -> Prepared:
    """.zst first, then .json (clients prefer .zst); zstd runs in its own thread while the
    JSON temp file is written. `zst` is that .zst already made (upstream's, or stored)."""
    with ThreadPoolExecutor(2) as pool:
        compressed: Data = zst or pool.submit(
            compress_zst, joined(data), level or job.zstd_level or DEFAULT_ZSTD, 0 if level else 2
        )
        files: list[tuple[str, Data]] = [(f"{subdir}/repodata.json.zst", compressed)]
        if job.bz2:
            bz = pool.submit(bz2.compress, joined(data), 9)
            files.append((f"{subdir}/repodata.json.bz2", bz))
        files.append((f"{subdir}/repodata.json", data))
        return storage.prepare(files, staged=True)


def index_stats(storage: Storage, subdir: str) -> dict[str, list[int]]:
    """What we published, for state: size and mtime of each index file."""
    stats = {}
    for name in _PUBLISHED:
        st = storage.stat(f"{subdir}/{name}")
        if st is not None:
            stats[name] = list(st)
    return stats


def delete_all(storage: Storage, subdir: str, filenames: tuple[str, ...]) -> None:
    for filename in filenames:
        storage.delete(f"{subdir}/{filename}")
