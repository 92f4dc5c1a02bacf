"""Upstream's indexes, fetched and vetted before any write: which subdirs a channel has, each
subdir's index (conditional, parsed into a big-index view), and what a subdir missing upstream
means (never "delete everything")."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

import httpx
import orjson

from condasync.channel.bigindex import Index, parse_index
from condasync.channel.repodata import (
    KNOWN_SUBDIRS,
    dump_repodata,
    empty_repodata,
    is_package_name,
    is_subdir,
)
from condasync.channel.urls import join, mask_url
from condasync.engine import fetch
from condasync.engine.filters import include_names
from condasync.engine.job import INDEX_FILES, MirrorJob
from condasync.engine.publish import (
    published_intact,
)
from condasync.engine.state import (
    FilesState,
    SubdirMeta,
    load_files,
    load_meta,
)
from condasync.errors import (
    UpstreamError,
)
from condasync.storage import (
    Storage,
)


@dataclass
class Upstream:
    """One subdir's fetched index, before any write."""

    subdir: str
    meta: SubdirMeta | None
    fetched: fetch.IndexFetch
    repodata: Index | None  # None when upstream is unchanged and the tree intact
    body_sha256: str | None = None
    check_files: bool = False  # stat every file in state: something else touched the folder
    timings: dict[str, float] = field(default_factory=dict)
    files_state: FilesState | None = None  # loaded during the fetch, when there is work
    error: str | None = None  # this subdir is not synced (missing upstream)
    selection: set[str] | None = None  # what the closure step selected (None: the filters)

    def release(self) -> None:
        """Free the index once it is published (before the next subdir's work)."""
        self.repodata = None
        self.fetched.body = self.fetched.zst = None


def folder_untouched(storage: Storage, subdir: str, meta: SubdirMeta) -> bool:
    """One stat instead of 600k: adding or deleting a file changes its folder's mtime.
    An object store has no folders; there --repair is the way to re-check the objects."""
    if not storage.local:
        return True
    st = storage.stat(subdir)
    return st is not None and st[1] == meta.dir_mtime_ns


def resolve_missing(
    job: MirrorJob, storage: Storage, upstreams: list[Upstream], base: str
) -> list[Upstream]:
    """Decide what a subdir missing upstream means. Never "delete everything": a subdir we
    hold packages in is an error for that subdir; only a noarch we hold nothing in, beside
    subdirs upstream does have, is published as an empty index."""
    present = [u for u in upstreams if not u.fetched.missing]
    if not present:
        tried = ", ".join(u.subdir for u in upstreams)
        raise UpstreamError(
            f"no conda channel at {mask_url(job.url)} (tried repodata.json.zst and"
            f" repodata.json for {tried}: all not found)"
        )
    for upstream in upstreams:
        if not upstream.fetched.missing:
            continue
        subdir = upstream.subdir
        if subdir == "noarch" and not _holds_packages(storage, subdir):
            body = dump_repodata(empty_repodata("noarch"))
            upstream.fetched.body = body
            upstream.fetched.sha256 = hashlib.sha256(body).hexdigest()
            upstream.fetched.missing = False
            upstream.repodata = parse_index(body, subdir)
            continue
        held = "; the packages mirrored before are kept" if upstream.meta else ""
        upstream.error = f"{subdir}/repodata.json not found upstream (HTTP 404){held}"
    return upstreams


def _holds_packages(storage: Storage, subdir: str) -> bool:
    return any(is_package_name(fn) for fn in storage.listing(subdir))


def is_json_object(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


async def discover_subdirs(
    client: httpx.AsyncClient, base: str, channeldata: bytes | None
) -> list[str]:
    """Subdirs from channeldata.json, else the known subdirs that exist upstream (probed side
    by side). Empty when upstream has no channel at all."""
    if channeldata is not None:
        try:
            listed = orjson.loads(channeldata).get("subdirs")
        except (orjson.JSONDecodeError, AttributeError):
            listed = None
        if isinstance(listed, list) and listed:
            found = [s for s in listed if isinstance(s, str) and is_subdir(s)]
            if found:
                return sorted(set(found))

    async def probe(subdir: str) -> bool:
        for name in INDEX_FILES[::-1]:  # .zst first: most channels have it
            if await fetch.exists(client, join(base, subdir, name)):
                return True
        return False

    hits = await asyncio.gather(*(probe(s) for s in KNOWN_SUBDIRS))
    return [s for s, hit in zip(KNOWN_SUBDIRS, hits, strict=True) if hit]


async def fetch_upstream(
    job: MirrorJob,
    client: httpx.AsyncClient,
    base: str,
    storage: Storage,
    subdir: str,
    options: str,
) -> Upstream:
    meta = load_meta(storage, subdir)
    untouched = meta is not None and not job.repair and folder_untouched(storage, subdir, meta)
    intact = (
        meta is not None
        and untouched
        and meta.complete
        and meta.options == options
        and published_intact(storage, subdir, meta)
    )
    validators = (meta.source, meta.etag, meta.last_modified) if meta and intact else None
    loaded: list[FilesState] = []

    async def load_state() -> None:
        loaded.append(await asyncio.to_thread(load_files, storage, subdir))

    # A new body means work: our (large) files state loads while it decompresses. Not when
    # only a hash of the body can tell it is unchanged (an upstream without validators).
    expect_work = validators is None or bool(validators[1] or validators[2])
    started = time.monotonic()
    fetched = await fetch.fetch_index(
        client,
        join(base, subdir),
        validators,
        job.retries,
        job.backoff,
        alongside=load_state if expect_work else None,
    )
    timings = {"fetch": round(time.monotonic() - started, 3)}
    if fetched.missing:  # decided once every subdir is fetched (resolve_missing)
        return Upstream(subdir, meta, fetched, None, timings=timings)
    if fetched.unchanged:
        return Upstream(subdir, meta, fetched, None, timings=timings)
    assert fetched.body is not None
    body_sha256 = fetched.sha256
    if meta is not None and intact and body_sha256 and meta.upstream_sha256 == body_sha256:
        return Upstream(subdir, meta, fetched, None, body_sha256, timings=timings)
    started = time.monotonic()
    try:
        # a closure or a name filter types only the records it selects (Index.views)
        lazy = job.closure.active
        if lazy:  # a selection is never published as upstream's own .zst: free it now
            fetched.zst = None
        names = None if lazy else include_names(job.filters)
        repodata = await asyncio.to_thread(parse_index, fetched.body, subdir, names, lazy=lazy)
    except ValueError as exc:
        raise UpstreamError(f"invalid upstream repodata: {exc}") from None
    # the records are views into the decompressed body: keeping it (to publish as is) is free
    timings["parse"] = round(time.monotonic() - started, 3)
    return Upstream(
        subdir,
        meta,
        fetched,
        repodata,
        body_sha256,
        check_files=not untouched,
        timings=timings,
        files_state=loaded[0] if loaded else None,
    )
