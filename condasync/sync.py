"""The mirror run (DESIGN.md §2): lock, fetch indexes, plan, download, publish, delete, save state.

The engine emits `Event`s to a listener and returns a `MirrorReport`; it never prints.
"""

from __future__ import annotations

import asyncio
import bz2
import dataclasses
import difflib
import gc
import hashlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urljoin

import httpx
import msgspec
import orjson

from condasync import fetch
from condasync.bigindex import Index, Lite, encode_index, parse_index
from condasync.cut import cut
from condasync.errors import (
    EXIT_PARTIAL,
    EXIT_UPSTREAM,
    CondasyncError,
    MassDeleteError,
    StorageError,
    UpstreamError,
    UsageError,
)
from condasync.filters import Filters, include_names, select
from condasync.indexer import is_package_name
from condasync.models import Event, FileState, MirrorReport, Plan, SubdirReport
from condasync.plan import build_plan, changed
from condasync.repodata import (
    check_filename,
    check_record,
    compress_zst,
    dump_repodata,
    empty_repodata,
    gc_paused,
    is_subdir,
    split_filename,
    zst_stored,
)
from condasync.state import (
    GENERATION,
    FilesState,
    SubdirMeta,
    compact_files,
    load_files,
    load_meta,
    mirrored_subdirs,
    save_files,
    save_meta,
)
from condasync.storage import (
    Data,
    Prepared,
    S3Options,
    StagedFile,
    Storage,
    describe_os_error,
    joined,
    open_storage,
)
from condasync.urls import join, mask, mask_url, normalize_channel, secrets_of

KNOWN_SUBDIRS = (
    "noarch", "linux-64", "linux-aarch64", "linux-ppc64le", "linux-s390x", "linux-armv6l",
    "linux-armv7l", "linux-32", "linux-riscv64", "osx-64", "osx-arm64", "win-64", "win-32",
    "win-arm64", "emscripten-wasm32", "wasi-wasm32", "zos-z",
)  # fmt: skip
DEFAULT_ZSTD = 3  # level for repodata.json.zst: ~1 s for conda-forge's linux-64 (measured)
INLINE_BYTES = 256 * 1024  # below this, file work runs on the event loop (measured faster)
T = TypeVar("T")
INDEX_FILES = ("repodata.json", "repodata.json.zst")


@dataclass(frozen=True)
class MirrorJob:
    """Everything one mirror run needs; built by the CLI from options or a config table."""

    url: str
    target: str
    subdirs: tuple[str, ...] = ()
    filters: Filters = field(default_factory=Filters)
    jobs: int = 16
    dry_run: bool = False
    keep_removed: bool = False
    bz2: bool = False
    retries: int = 3
    backoff: float = 0.5
    zstd_level: int | None = None  # None: 3, and an index published as is keeps upstream's .zst
    repair: bool = False
    max_delete: float = 50.0  # percent of a subdir's packages one run may delete
    s3: S3Options = field(default_factory=S3Options)


Listener = Callable[[Event], None]


@dataclass
class _Upstream:
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

    def release(self) -> None:
        """Free the index once it is published (before the next subdir's work)."""
        self.repodata = None
        self.fetched.body = self.fetched.zst = None


def run_mirror(job: MirrorJob, listen: Listener = lambda _e: None) -> MirrorReport:
    """Run one mirror job to completion. Errors end up in the report, with their exit code."""
    started = time.monotonic()
    secrets = secrets_of(job.url)
    report = MirrorReport(url=mask_url(job.url), target=job.target, dry_run=job.dry_run)
    try:
        try:
            channel = normalize_channel(job.url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if job.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        storage = open_storage(job.target, create=not job.dry_run, s3=job.s3)
        with _Locker(storage, enabled=not job.dry_run and not job.s3.no_lock) as locker:
            try:
                asyncio.run(_mirror(job, channel, storage, locker, report, listen))
            finally:
                gc.unfreeze()
    except CondasyncError as exc:
        report.error = mask(str(exc), secrets)
        report.exit_code = exc.exit_code
    except KeyboardInterrupt:
        report.error = "interrupted"
        report.exit_code = 130
    except OSError as exc:
        report.error = mask(str(describe_os_error(exc, job.target)), secrets)
        report.exit_code = EXIT_PARTIAL
    errors = [s.error for s in report.subdirs if s.error]
    if errors and report.exit_code in (0, EXIT_PARTIAL):
        report.exit_code = EXIT_UPSTREAM
        report.error = report.error or mask("; ".join(errors), secrets)
    if report.exit_code == 0 and any(s.failed for s in report.subdirs):
        report.exit_code = 1
    for sub in report.subdirs:
        sub.failed = {k: mask(v, secrets) for k, v in sub.failed.items()}
    report.seconds = time.monotonic() - started
    return report


class _Locker:
    """The run lock. A local tree is locked at once (a flock costs nothing); an object store
    only before the first write, so a no-op run issues no PUT at all."""

    def __init__(self, storage: Storage, enabled: bool) -> None:
        self._storage = storage
        self._enabled = enabled
        self._held: AbstractContextManager[None] | None = None
        self._claimed = False

    def __enter__(self) -> _Locker:
        if self._storage.local and self._enabled:
            held = self._storage.lock()
            held.__enter__()
            self._held = held
        return self

    def ensure(self) -> None:
        if self._held is None and self._enabled:
            held = self._storage.lock()
            held.__enter__()
            self._held = held
        if not self._claimed and self._held is not None:
            self._storage.claim_lock()
            self._claimed = True

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.__exit__(None, None, None)
            self._held = None


def options_hash(job: MirrorJob, channel: str) -> str:
    """Options that shape the published index; when they change, the next run re-plans."""
    doc = {
        "url": channel,
        "filters": [job.filters.include, job.filters.exclude, job.filters.latest],
        "exclude_newer": job.filters.exclude_newer,
        "keep_removed": job.keep_removed,
        "bz2": job.bz2,
        "zstd": job.zstd_level,
        "generation": GENERATION,
    }
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()


def _published_intact(storage: Storage, subdir: str, meta: SubdirMeta) -> bool:
    for name in INDEX_FILES:
        st = storage.stat(f"{subdir}/{name}")
        if st is None or list(st) != meta.published.get(name):
            return False
    return True


def _folder_untouched(storage: Storage, subdir: str, meta: SubdirMeta) -> bool:
    """One stat instead of 600k: adding or deleting a file changes its folder's mtime.
    An object store has no folders; there --repair is the way to re-check the objects."""
    if not storage.local:
        return True
    st = storage.stat(subdir)
    return st is not None and st[1] == meta.dir_mtime_ns


async def _mirror(
    job: MirrorJob,
    channel: str,
    storage: Storage,
    locker: _Locker,
    report: MirrorReport,
    listen: Listener,
) -> None:
    # File creation is slow on some filesystems and blocks; let every download have a thread.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max(8, job.jobs)))
    client, base = fetch.make_client(channel, job.jobs)
    async with client:
        channeldata: bytes | None = None
        subdirs = list(dict.fromkeys(job.subdirs))
        for subdir in subdirs:
            if not is_subdir(subdir):
                raise UsageError(f"invalid subdir {subdir!r}{_suggest_subdir(subdir)}")
        if subdirs and "noarch" not in subdirs:
            subdirs.append("noarch")  # clients reject a channel without it
        if not subdirs:
            channeldata = await fetch.fetch_optional(client, join(base, "channeldata.json"))
            found = await _discover_subdirs(client, base, channeldata)
            if not found:
                raise UpstreamError(
                    f"no conda channel at {mask_url(job.url)} (no subdirs in channeldata.json,"
                    f" and no <subdir>/repodata.json(.zst) for any of {len(KNOWN_SUBDIRS)}"
                    " known subdirs)"
                )
            # a subdir we mirrored before and upstream no longer has is an error, not a delete
            subdirs = sorted(set(found) | set(mirrored_subdirs(storage)) | {"noarch"})
        options = options_hash(job, base)
        listen(Event("fetching", count=len(subdirs), message=" ".join(subdirs)))
        # Fetch and validate every index before any write: an upstream error leaves the tree as is.
        fetched = await asyncio.gather(
            *(_fetch_upstream(job, client, base, storage, s, options) for s in subdirs)
        )
        upstreams = _resolve_missing(job, storage, list(fetched), base)
        changed = any(u.repodata is not None for u in upstreams)
        if changed and channeldata is None:
            channeldata = await fetch.fetch_optional(client, join(base, "channeldata.json"))
        for upstream in upstreams:
            sub = SubdirReport(subdir=upstream.subdir)
            report.subdirs.append(sub)
            if upstream.error is not None:
                sub.error = upstream.error
                listen(Event("error", upstream.subdir, message=upstream.error))
                continue
            try:
                await _sync_subdir(
                    job, client, base, storage, locker, upstream, options, sub, listen
                )
            except MassDeleteError as exc:
                sub.error = str(exc)
                listen(Event("error", upstream.subdir, message=str(exc)))
            finally:
                upstream.release()
        if not job.dry_run and channeldata is not None and _is_json_object(channeldata):
            locker.ensure()
            storage.write_if_changed("channeldata.json", channeldata)


def check_max_delete(
    job: MirrorJob, subdir: str, deletes: int, held: int, raise_error: bool = True
) -> bool:
    """The mass-deletion guard: an empty or truncated upstream index, or a filter changed by
    mistake, must not empty a mirror. True when the run may go on."""
    if held == 0 or deletes * 100 <= job.max_delete * held:
        return True
    if not raise_error:
        return False
    raise MassDeleteError(
        f"{subdir}: this run would delete {deletes} of {held} packages"
        f" ({deletes * 100 / held:.0f}%, more than --max-delete {job.max_delete:g}%);"
        " nothing was published or deleted there. If the shrink is intended, run again"
        " with --max-delete 100"
    )


def _suggest_subdir(name: str) -> str:
    close = difflib.get_close_matches(name, KNOWN_SUBDIRS, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _resolve_missing(
    job: MirrorJob, storage: Storage, upstreams: list[_Upstream], base: str
) -> list[_Upstream]:
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


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


async def _discover_subdirs(
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


async def _fetch_upstream(
    job: MirrorJob,
    client: httpx.AsyncClient,
    base: str,
    storage: Storage,
    subdir: str,
    options: str,
) -> _Upstream:
    meta = load_meta(storage, subdir)
    untouched = meta is not None and not job.repair and _folder_untouched(storage, subdir, meta)
    intact = (
        meta is not None
        and untouched
        and meta.complete
        and meta.options == options
        and _published_intact(storage, subdir, meta)
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
    if fetched.missing:  # decided once every subdir is fetched (_resolve_missing)
        return _Upstream(subdir, meta, fetched, None, timings=timings)
    if fetched.unchanged:
        return _Upstream(subdir, meta, fetched, None, timings=timings)
    assert fetched.body is not None
    body_sha256 = fetched.sha256
    if meta is not None and intact and body_sha256 and meta.upstream_sha256 == body_sha256:
        return _Upstream(subdir, meta, fetched, None, body_sha256, timings=timings)
    started = time.monotonic()
    try:
        repodata = await asyncio.to_thread(parse_index, fetched.body, subdir)
    except ValueError as exc:
        raise UpstreamError(f"invalid upstream repodata: {exc}") from None
    # the records are views into the decompressed body: keeping it (to publish as is) is free
    timings["parse"] = round(time.monotonic() - started, 3)
    return _Upstream(
        subdir,
        meta,
        fetched,
        repodata,
        body_sha256,
        check_files=not untouched,
        timings=timings,
        files_state=loaded[0] if loaded else None,
    )


async def _sync_subdir(
    job: MirrorJob,
    client: httpx.AsyncClient,
    base: str,
    storage: Storage,
    locker: _Locker,
    upstream: _Upstream,
    options: str,
    report: SubdirReport,
    listen: Listener,
) -> None:
    subdir = upstream.subdir
    if not job.dry_run:
        storage.clear_staging(subdir)  # leftovers of a killed run
    if upstream.repodata is None:
        report.unchanged = True
        listen(Event("uptodate", subdir))
        if not job.dry_run and upstream.meta is not None and not upstream.fetched.unchanged:
            locker.ensure()
            upstream.meta.etag = upstream.fetched.etag  # same bytes, new validators
            upstream.meta.last_modified = upstream.fetched.last_modified
            upstream.meta.source = upstream.fetched.source
            save_meta(storage, subdir, upstream.meta)
        return
    report.timings.update(upstream.timings)
    # Nothing of ours to change (no filters, nothing kept, info as we publish it): upstream's
    # bytes are the final index, and go to disk on the other core while we plan. A record
    # rejected by the plan means our own encoding after all; this one is then dropped.
    early: asyncio.Future[Prepared] | None = None
    if (
        not job.dry_run
        and not job.filters.active
        and not job.keep_removed
        and upstream.files_state is not None
        and check_max_delete(
            job,
            subdir,
            len(upstream.repodata.not_listed(upstream.files_state.files.keys())),
            len(upstream.files_state.files),
            raise_error=False,
        )
        and _publishable_as_is(upstream.repodata, subdir)
    ):
        locker.ensure()
        early = asyncio.get_running_loop().run_in_executor(
            None, _prepare_as_is, storage, subdir, upstream.fetched, job
        )
    try:
        await _sync_changed(
            job, client, base, storage, locker, upstream, options, report, listen, early
        )
    finally:
        if early is not None:
            await _discard_when_ready(early)  # nothing left to drop once it is published
        if not job.dry_run:
            storage.clear_staging(subdir)


async def _sync_changed(
    job: MirrorJob,
    client: httpx.AsyncClient,
    base: str,
    storage: Storage,
    locker: _Locker,
    upstream: _Upstream,
    options: str,
    report: SubdirReport,
    listen: Listener,
    early: asyncio.Future[Prepared] | None,
) -> None:
    """Plan, download and publish one subdir whose upstream index changed."""
    subdir, index = upstream.subdir, upstream.repodata
    assert index is not None
    clock = time.monotonic()
    with gc_paused():  # hundreds of thousands of new objects, none of them cyclic
        state = upstream.files_state or load_files(storage, subdir)
        upstream.files_state = None
        local = state.files
        on_disk: dict[str, tuple[int, int]] = {}
        dropped: set[str] = set()  # in our state, but not on disk as we left them
        if upstream.check_files:  # keep only what is still there as we left it
            on_disk = storage.listing(subdir)
            local = {
                fn: st for fn, st in local.items() if on_disk.get(fn) == (st.size, st.mtime_ns)
            }
            dropped = set(_copies(state.files.keys() - local.keys()))
            state.files = local
        valid, rejected, differ = _validate(index, local)
        selected = _select(index, valid, job.filters, subdir)
        removed_upstream = index.not_listed(local.keys()) if job.keep_removed else set()
        plan = build_plan(
            selected, local, job.keep_removed, removed_upstream, differ, on_disk.keys()
        )
        # Names taken from the state map get their own copies: a few thousand of them
        # outliving the map, spread through its memory, kept about 190 MB of it resident
        # after it was freed (measured on a freshly synced 600k-file mirror).
        plan = dataclasses.replace(
            plan, delete=tuple(_copies(plan.delete)), kept_removed=tuple(_copies(plan.kept_removed))
        )
        report.filtered = len(valid) - len(selected)
        check_max_delete(job, subdir, len(plan.delete), len(local))
        # From here on only the records to fetch need their typed view; drop the rest.
        wanted = {fn: selected[fn] for fn in plan.add + plan.replace}
        # None: every upstream record is published (the common case; no 600k-name set)
        published = None if len(selected) == index.count() else set(selected)
        n_published = len(selected)
        del valid, selected, differ
        index.lite, index.order = {}, {}
        gc.freeze()  # later collections during downloads need not walk all that again
    for key, reason in rejected.items():
        report.rejected[key] = reason
        listen(Event("rejected", subdir, name=key, message=reason))
    clock = report.timed("plan", clock)
    if job.dry_run:
        report.added, report.replaced = list(plan.add), list(plan.replace)
        report.deleted = sorted(plan.delete + plan.strays)
        report.packages = plan.unchanged + len(plan.kept_removed) + len(plan.add + plan.replace)
        return
    todo = plan.add + plan.replace
    locker.ensure()
    if state.needs_compaction():
        await asyncio.to_thread(compact_files, storage, subdir, state)
    # The end of the run records only what changed, so the 600k-entry map can go now.
    state.release()
    del local
    listen(Event("plan", subdir, count=len(todo), size=sum(wanted[fn].size for fn in todo)))
    # Strays free their space before the downloads need it, unless the published index may
    # name them (a run killed after publishing its index, before saving its state).
    meta = upstream.meta
    strays_first = meta is not None and _published_intact(storage, subdir, meta)
    if strays_first and plan.strays:
        await asyncio.to_thread(_delete_all, storage, subdir, plan.strays)
    deletes = tuple(sorted(plan.delete + plan.strays))
    kept_removed = _kept_removed_records(storage, subdir, plan, index, job.keep_removed)
    package_base = _package_base(join(base, subdir), index.info)
    # Files a killed run already put in place are adopted (after hashing) instead of
    # fetched again. A local folder whose mtime is as our last run left it holds none (a
    # new name changes it), and one that changed was just listed; an object store has no
    # folder mtime, so it is listed (one LIST per 1000 objects, not one HEAD per package).
    present = on_disk if storage.local or not todo else storage.listing(subdir)
    # The indexes to publish are written out while the packages download (the other core
    # compresses and writes them): an interim one when files change under their name, and
    # the final one as it will be if every download succeeds (unless upstream's own bytes
    # are that, and already on their way).
    as_is = upstream.fetched.body if early is not None and published is None else None
    if early is not None and as_is is None:
        await _discard_when_ready(early)
    ahead = asyncio.ensure_future(
        asyncio.to_thread(
            _prepare_indexes, storage, subdir, index, published, kept_removed, plan, job, as_is
        )
    )
    try:
        done, staged = await _download_all(
            job, client, package_base, storage, subdir, plan, wanted, present, report, listen
        )
    except BaseException:
        await _discard_when_ready(ahead)
        raise
    clock = report.timed("download", clock)
    interim, final = await ahead
    if final is None:
        assert early is not None
        final = await early
    clock = report.timed("index", clock)
    skip = set(report.failed)  # a failed download keeps its old bytes but loses its record
    if skip:  # the final index was written for all downloads succeeding: write it again
        final.discard()
        data = await asyncio.to_thread(_encode, index, subdir, published, skip, kept_removed)
        final = await asyncio.to_thread(_prepare_index, storage, subdir, data, job)
        del data
        clock = report.timed("reindex", clock)
    if interim is not None and staged:
        # Interim index without the files about to change, so no reader ever sees an
        # index whose record disagrees with the bytes on disk. Until now readers saw
        # the old snapshot, old files included.
        await asyncio.to_thread(interim.publish)
        clock = report.timed("interim", clock)
    elif interim is not None:
        interim.discard()
    if storage.local:  # renames: one thread does them all (a hand-off each costs more)
        mtimes = await asyncio.to_thread(lambda: [f.commit() for f in staged.values()])
    else:  # object-store requests: side by side
        mtimes = await asyncio.gather(*(asyncio.to_thread(f.commit) for f in staged.values()))
    for filename, mtime_ns in zip(staged, mtimes, strict=True):
        record = wanted[filename]
        done[filename] = FileState(record.size, record.digest, mtime_ns)
    clock = report.timed("commit", clock)
    await asyncio.to_thread(final.publish)
    stats = _index_stats(storage, subdir)
    clock = report.timed("publish", clock)
    report.packages = n_published - len(skip) + len(kept_removed)
    listen(Event("published", subdir, count=report.packages))
    await asyncio.to_thread(_delete_all, storage, subdir, plan.delete if strays_first else deletes)
    clock = report.timed("delete", clock)
    for filename in deletes:
        report.deleted.append(filename)
        listen(Event("deleted", subdir, name=filename))
    # Our state minus what is gone, plus what we fetched; a failed replacement keeps
    # its old entry (its old bytes are still there).
    changes: dict[str, FileState | None] = dict.fromkeys(dropped, None)
    changes.update(dict.fromkeys(deletes, None))
    changes.update(done)
    save_files(storage, subdir, state, changes)
    storage.clear_staging(subdir)  # before the folder's mtime is recorded
    report.timed("state", clock)
    folder = storage.stat(subdir)
    save_meta(
        storage,
        subdir,
        SubdirMeta(
            source=upstream.fetched.source,
            etag=upstream.fetched.etag,
            last_modified=upstream.fetched.last_modified,
            upstream_sha256=upstream.body_sha256,
            options=options,
            published=stats,
            complete=not report.failed,
            dir_mtime_ns=folder[1] if folder else 0,
        ),
    )


def _copies(names: Iterable[str]) -> list[str]:
    """New string objects equal to `names` (see the plan in _sync_changed)."""
    return [name.encode().decode() for name in names]


def _package_base(subdir_url: str, info: dict[str, object]) -> str:
    """CEP-15: packages live under info.base_url (absolute or relative) when it is set."""
    base_url = info.get("base_url")
    if isinstance(base_url, str) and base_url:
        return urljoin(subdir_url + "/", base_url).rstrip("/")
    return subdir_url


def _validate(
    index: Index, local: dict[str, FileState]
) -> tuple[dict[str, Lite], dict[str, str], set[str]]:
    """Records safe to mirror, why the others are not, and which differ from our files.

    A record that matches a file we already verified (same name, size and digest) passed these
    checks on an earlier run; only new and changed records are checked again.
    """
    differ = changed(index.lite, local)
    rejected = dict(index.rejected)
    found = index.records(differ)
    for filename in differ:
        reason = check_filename(filename) or check_record(msgspec.json.decode(found[filename]))
        if reason is not None:
            rejected[filename] = reason
    if len(rejected) == len(index.rejected):
        return index.lite, rejected, differ
    valid = {fn: lite for fn, lite in index.lite.items() if fn not in rejected}
    return valid, rejected, differ


def _raw(index: Index, filename: str) -> msgspec.Raw:
    """The upstream JSON of a record known to be listed (it has a typed view)."""
    found = index.raw(filename)
    assert found is not None
    return found


class _Brief(msgspec.Struct, gc=False):
    """What --latest and --exclude-newer look at."""

    name: str
    version: str
    timestamp: int | float | None = None


_brief = msgspec.json.Decoder(_Brief)


def _select(index: Index, valid: dict[str, Lite], filters: Filters, subdir: str) -> dict[str, Lite]:
    """Apply the filters, decoding as little of 600k records as each filter needs."""
    if not filters.active:
        return valid
    names = include_names(filters)  # `--include numpy`: only numpy-* files are candidates
    candidates = [
        fn
        for fn in valid
        if names is None or ((parts := split_filename(fn)) is not None and parts[0] in names)
    ]
    records: dict[str, dict[str, Any]] = {}
    for fn in candidates:
        if filters.include or filters.exclude:  # MatchSpecs see whole records
            records[fn] = msgspec.json.decode(_raw(index, fn))
        else:
            try:
                brief = _brief.decode(_raw(index, fn))
                records[fn] = {"name": brief.name, "version": brief.version}
                records[fn]["timestamp"] = brief.timestamp
            except msgspec.ValidationError:
                records[fn] = msgspec.json.decode(_raw(index, fn))
    chosen = select(records, filters, subdir, datetime.now(timezone.utc))
    return {fn: lite for fn, lite in valid.items() if fn in chosen}


def _encode(
    index: Index,
    subdir: str,
    published: set[str] | None,
    skip: set[str],
    kept_removed: dict[str, msgspec.Raw],
) -> bytes:
    """The index to publish: `published` records but `skip`, in upstream order, then kept ones."""
    sections: dict[str, dict[str, msgspec.Raw]] = {}
    for key, records in index.sections.items():
        if published is not None:
            records = {fn: r for fn, r in records.items() if fn in published and fn not in skip}
        elif skip:
            records = {fn: r for fn, r in records.items() if fn not in skip}
        sections[key] = records
    by_section: dict[str, dict[str, msgspec.Raw]] = {}
    for filename, raw in kept_removed.items():
        key = "packages.conda" if filename.endswith(".conda") else "packages"
        by_section.setdefault(key, {})[filename] = raw
    for key, kept in by_section.items():  # one copy per section (never the upstream's dict)
        sections[key] = {**sections[key], **kept}
    return encode_index(index, subdir, sections)


def _delete_all(storage: Storage, subdir: str, filenames: tuple[str, ...]) -> None:
    for filename in filenames:
        storage.delete(f"{subdir}/{filename}")


def _kept_removed_records(
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


def _publishable_as_is(index: Index, subdir: str) -> bool:
    """Upstream's document needs none of our changes (a base_url to drop, a subdir to set, a
    key or `info` listed twice, which clients may read either way)."""
    return (
        index.info.get("subdir") == subdir
        and "base_url" not in index.info
        and index.unique
        and index.info_once()
    )


def _prepare_indexes(
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
    With `as_is` (upstream's body), the final index is that (see _prepare_as_is): None here,
    and the interim one is that body with records cut out, when they line up (cut.py).
    """
    interim = None
    if plan.replace:
        skip = set(plan.add) | set(plan.replace)
        parts = None if as_is is None else cut(as_is, index.spans, skip)
        if parts is None:
            parts = [_encode(index, subdir, published, skip, kept_removed)]
        # It is live only while the replaced files are moved in. On a local disk its .zst
        # is stored, not compressed, so it takes no CPU from the downloads, and the parts go
        # to disk as they are; an object store gets the fastest zstd (fewer bytes to PUT).
        if not storage.local:
            parts = [joined(parts)]  # compressed and uploaded whole: join once
        stored = zst_stored(parts) if storage.local else None
        interim = _prepare_index(storage, subdir, parts, job, level=1, zst=stored)
        del parts, stored
    if as_is is not None:
        return interim, None
    try:
        data = _encode(index, subdir, published, set(), kept_removed)
        return interim, _prepare_index(storage, subdir, data, job)
    except BaseException:
        if interim is not None:
            interim.discard()
        raise


async def _discard_when_ready(
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


def _prepare_as_is(
    storage: Storage, subdir: str, fetched: fetch.IndexFetch, job: MirrorJob
) -> Prepared:
    """Upstream's body as the final index, and the .zst upstream sent (unless a zstd level
    was asked for): nothing to encode or compress."""
    assert fetched.body is not None
    zst = fetched.zst if job.zstd_level is None else None
    return _prepare_index(storage, subdir, fetched.body, job, zst=zst)


def _prepare_index(
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


def _index_stats(storage: Storage, subdir: str) -> dict[str, list[int]]:
    """What we published, for state: size and mtime of each index file."""
    stats = {}
    for name in INDEX_FILES:
        st = storage.stat(f"{subdir}/{name}")
        if st is not None:
            stats[name] = list(st)
    return stats


async def _download_all(
    job: MirrorJob,
    client: httpx.AsyncClient,
    package_base: str,
    storage: Storage,
    subdir: str,
    plan: Plan,
    wanted: dict[str, Lite],
    present: dict[str, tuple[int, int]],
    report: SubdirReport,
    listen: Listener,
) -> tuple[dict[str, FileState], dict[str, StagedFile]]:
    """Fetch adds (committed at once) and replacements (staged, committed by the caller)."""
    done: dict[str, FileState] = {}
    staged: dict[str, StagedFile] = {}
    replacing = set(plan.replace)
    queue = iter(plan.add + plan.replace)

    def on_bytes(n: int) -> None:
        report.bytes += n
        listen(Event("bytes", subdir, size=n))

    async def worker() -> None:
        for filename in queue:
            record = wanted[filename]
            try:
                state, pending = await _fetch_one(
                    job, client, package_base, storage, subdir, filename, record,
                    filename in replacing, present, on_bytes,
                )  # fmt: skip
            except (StorageError, asyncio.CancelledError):
                raise
            except Exception as exc:
                report.failed[filename] = fetch.describe(exc)
                listen(Event("failed", subdir, name=filename, message=report.failed[filename]))
                continue
            if pending is not None:
                staged[filename] = pending
            else:
                assert state is not None
                done[filename] = state
            (report.replaced if filename in replacing else report.added).append(filename)
            listen(Event("file", subdir, name=filename, size=record.size))

    tasks = [
        asyncio.ensure_future(worker())
        for _ in range(min(job.jobs, len(replacing) + len(plan.add)))
    ]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pending in staged.values():
            pending.discard()
        raise
    report.added.sort()
    report.replaced.sort()
    return done, staged


async def _fetch_one(
    job: MirrorJob,
    client: httpx.AsyncClient,
    package_base: str,
    storage: Storage,
    subdir: str,
    filename: str,
    record: Lite,
    replace: bool,
    present: dict[str, tuple[int, int]],
    on_bytes: Callable[[int], None],
) -> tuple[FileState | None, StagedFile | None]:
    relpath = f"{subdir}/{filename}"
    size, digest = record.size, record.digest
    algo, expected = digest.split(":", 1)
    inline = storage.local and size <= INLINE_BYTES
    adopted = None
    known = present.get(filename)
    if known is not None and known[0] == size:
        adopted = await _maybe_thread(inline, _adopt, storage, relpath, algo, expected, known)
    if adopted is not None:
        return FileState(size, digest, adopted), None
    url = join(package_base, filename)

    async def attempt() -> tuple[FileState | None, StagedFile | None]:
        staged = storage.stage(relpath)
        try:
            await fetch.download(client, url, staged, size, digest, on_bytes)
            # one call puts the bytes on disk (and in place, for an add)
            if replace:
                await _maybe_thread(inline, staged.close)
                return None, staged
            mtime_ns = await _maybe_thread(inline, staged.commit)
        except BaseException:
            staged.discard()
            raise
        return FileState(size, digest, mtime_ns), None

    return await fetch.with_retries(attempt, job.retries, job.backoff)


async def _maybe_thread(inline: bool, func: Callable[..., T], *args: Any) -> T:
    """Small local-file work runs inline (a thread hand-off costs more than the syscalls);
    big files and object-store requests go to a worker thread."""
    if inline:
        return func(*args)
    return await asyncio.to_thread(func, *args)


def _adopt(
    storage: Storage, relpath: str, algo: str, expected: str, known: tuple[int, int]
) -> int | None:
    """A file an interrupted run already put in place (size and mtime from a listing): keep
    it, with its mtime, if its bytes are right."""
    _, actual = storage.hash(relpath, (algo,))
    return known[1] if actual[algo] == expected else None
