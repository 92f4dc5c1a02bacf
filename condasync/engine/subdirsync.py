"""One subdir of a mirror run (DESIGN.md §2): plan against the saved state, download, publish
the indexes and shards, delete, save the state; and what every step shares (Run, Locker)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx
import msgspec

from condasync.channel.bigindex import LOCATE_MAX, Lite
from condasync.channel.repodata import gc_paused
from condasync.channel.urls import join
from condasync.engine.download import download_all
from condasync.engine.job import Listener, MirrorJob
from condasync.engine.plan import build_plan, check_max_delete, select_and_validate, without_proxied
from condasync.engine.publish import (
    delete_all,
    discard_when_ready,
    encode_published,
    index_stats,
    kept_removed_records,
    prepare_as_is,
    prepare_index,
    prepare_indexes,
    publishable_as_is,
    published_intact,
)
from condasync.engine.shardsync import SubdirShards, collect_unchanged
from condasync.engine.state import (
    FilesState,
    SubdirMeta,
    compact_files,
    load_files,
    save_files,
    save_meta,
)
from condasync.engine.upstream import Upstream
from condasync.models import Event, FileState, Plan, SubdirReport
from condasync.storage import Prepared, StagedFile, Storage


class Locker:
    """The run lock. A local tree is locked at once (a flock costs nothing); an object store
    only before the first write, so a no-op run issues no PUT at all."""

    def __init__(self, storage: Storage, enabled: bool) -> None:
        self._storage = storage
        self._enabled = enabled
        self._held: AbstractContextManager[None] | None = None
        self._claimed = False

    def __enter__(self) -> Locker:
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


@dataclass
class Run:
    """What every step of one run shares: the job, the HTTP client and the channel's URL, the
    target and its lock, the options hash, and the listener."""

    job: MirrorJob
    client: httpx.AsyncClient
    base: str
    storage: Storage
    locker: Locker
    options: str
    listen: Listener


async def sync_subdir(run: Run, upstream: Upstream, report: SubdirReport) -> None:
    job, storage, locker, listen = run.job, run.storage, run.locker, run.listen
    subdir = upstream.subdir
    if not job.dry_run:
        storage.clear_staging(subdir)  # leftovers of a killed run
    if upstream.repodata is None:
        report.unchanged = True
        listen(Event("uptodate", subdir))
        meta = upstream.meta
        if meta is None:
            return
        changed = not upstream.fetched.unchanged
        if meta.packages is None:  # state written by an older version: count once
            meta.packages = len(load_files(storage, subdir).files)
            changed = True
        report.packages = meta.packages
        if not job.dry_run and changed:
            locker.ensure()
            if not upstream.fetched.unchanged:
                meta.etag = upstream.fetched.etag  # same bytes, new validators
                meta.last_modified = upstream.fetched.last_modified
                meta.source = upstream.fetched.source
            save_meta(storage, subdir, meta)
        if not job.dry_run:  # orphan shards whose grace has passed
            deleted = collect_unchanged(storage, subdir, job.shard_grace, locker.ensure)
            report.shards = {"written": 0, "deleted": len(deleted)}
        return
    report.timings.update(upstream.timings)
    # Nothing of ours to change (no filters, nothing kept, info as we publish it): upstream's
    # bytes are the final index, and go to disk on the other core while we plan. A record
    # rejected by the plan means our own encoding after all; this one is then dropped.
    early: asyncio.Future[Prepared] | None = None
    if (
        not job.dry_run
        and not job.filters.active
        and upstream.selection is None
        and not job.keep_removed
        and upstream.files_state is not None
        and check_max_delete(
            job.max_delete,
            subdir,
            len(upstream.repodata.not_listed(upstream.files_state.files.keys())),
            len(upstream.files_state.files),
            raise_error=False,
        )
        and publishable_as_is(upstream.repodata, subdir)
    ):
        locker.ensure()
        early = asyncio.get_running_loop().run_in_executor(
            None, prepare_as_is, storage, subdir, upstream.fetched, job
        )
    try:
        await _sync_changed(run, upstream, report, early)
    finally:
        if early is not None:
            await discard_when_ready(early)  # nothing left to drop once it is published
        if not job.dry_run:
            storage.clear_staging(subdir)


@dataclass
class _Planned:
    """One subdir's plan and what carrying it out needs (the output of _plan_changes)."""

    plan: Plan
    state: FilesState
    wanted: dict[str, Lite]  # the typed records of the files to fetch
    published: set[str] | None  # None: every upstream record is published
    n_published: int
    n_bytes: int  # total size of the selected records
    dropped: set[str]  # in our state, but not on disk as we left them
    on_disk: dict[str, tuple[int, int]]
    deletes: tuple[str, ...] = ()
    strays_first: bool = False
    kept_removed: dict[str, msgspec.Raw] = field(default_factory=dict)
    shards: SubdirShards | None = None
    order: dict[str, list[str]] | None = None  # the index's filenames, for the shards


async def _sync_changed(
    run: Run, upstream: Upstream, report: SubdirReport, early: asyncio.Future[Prepared] | None
) -> None:
    """One subdir whose upstream index changed, in the order of DESIGN.md §2: plan, download
    (indexes are prepared meanwhile), publish, delete, save state."""
    clock = time.monotonic()
    planned = _plan_changes(run, upstream, report)
    clock = report.timed("plan", clock)
    plan = planned.plan
    report.planned_bytes = sum(planned.wanted[fn].size for fn in plan.add + plan.replace)
    if run.job.dry_run:
        report.added, report.replaced = list(plan.add), list(plan.replace)
        _split_repaired(report, planned.dropped)
        report.deleted = sorted(plan.delete + plan.strays)
        report.packages = plan.unchanged + len(plan.kept_removed) + len(plan.add + plan.replace)
        _announce_dry_run(run.listen, upstream.subdir, report)
        return
    run.locker.ensure()
    await _before_downloads(run, upstream, planned)
    try:
        done, final = await _download_and_prepare(run, upstream, planned, report, early)
        _split_repaired(report, planned.dropped)
        stats = await _publish(run, upstream, planned, done, final, report)
        await _delete_and_save(run, upstream, planned, done, stats, report)
    finally:
        if planned.shards is not None:  # shard files staged and never published
            await asyncio.to_thread(planned.shards.discard)


def _plan_changes(run: Run, upstream: Upstream, report: SubdirReport) -> _Planned:
    """Validate, select and plan, from upstream's index and our state alone (no writes)."""
    job, storage, listen = run.job, run.storage, run.listen
    subdir, index = upstream.subdir, upstream.repodata
    assert index is not None
    with gc_paused():  # hundreds of thousands of new objects, none of them cyclic
        state = upstream.files_state or load_files(storage, subdir)
        upstream.files_state = None
        local = state.files
        on_disk: dict[str, tuple[int, int]] = {}
        dropped: set[str] = set()
        if upstream.check_files:  # keep only what is still there as we left it
            on_disk = storage.listing(subdir)
            local = {
                fn: st for fn, st in local.items() if on_disk.get(fn) == (st.size, st.mtime_ns)
            }
            dropped = set(_copies(state.files.keys() - local.keys()))
            state.files = local
        selected, rejected, differ = select_and_validate(
            index, local, job.filters, subdir, upstream.selection
        )
        removed_upstream = index.not_listed(local.keys()) if job.keep_removed else set()
        plan = build_plan(
            without_proxied(selected, job.proxied),
            local,
            job.keep_removed,
            removed_upstream,
            differ,
            on_disk.keys(),
        )
        # Names taken from the state map get their own copies: a few thousand of them
        # outliving the map, spread through its memory, kept about 190 MB of it resident
        # after it was freed (measured on a freshly synced 600k-file mirror).
        plan = dataclasses.replace(
            plan, delete=tuple(_copies(plan.delete)), kept_removed=tuple(_copies(plan.kept_removed))
        )
        report.filtered = index.count() - len(selected) - len(rejected)
        check_max_delete(job.max_delete, subdir, len(plan.delete), len(local))
        planned = _Planned(
            plan=plan,
            state=state,
            # From here on only the records to fetch need their typed view; drop the rest.
            wanted={fn: selected[fn] for fn in plan.add + plan.replace},
            published=None if len(selected) == index.count() else set(selected),
            n_published=len(selected),
            n_bytes=sum(lite.size for lite in selected.values()),
            dropped=dropped,
            on_disk=on_disk,
        )
        if planned.published is not None and len(planned.published) <= LOCATE_MAX:
            index.records(planned.published)  # located now: publishing needs no raw pass
        elif planned.published is None and job.shards:
            planned.order = index.order  # shards find changed names by them (shardruns)
        del selected, differ, local
        index.forget_views()
        gc.freeze()  # later collections during downloads need not walk all that again
    for key, reason in rejected.items():
        report.rejected[key] = reason
        listen(Event("rejected", subdir, name=key, message=reason))
    return planned


def _announce_dry_run(listen: Listener, subdir: str, report: SubdirReport) -> None:
    """--dry-run: what would be downloaded and deleted, file by file."""
    todo = sorted(report.added + report.repaired + report.replaced)
    listen(Event("dry-run", subdir, count=len(todo), size=report.planned_bytes))
    for filename in todo:
        listen(Event("dry-run", subdir, name=filename, message="would fetch"))
    for filename in report.deleted:
        listen(Event("dry-run", subdir, name=filename, message="would delete"))


async def _before_downloads(run: Run, upstream: Upstream, planned: _Planned) -> None:
    """Compact the state if due, free strays' space, and announce the plan."""
    job, storage, listen = run.job, run.storage, run.listen
    subdir, plan, state = upstream.subdir, planned.plan, planned.state
    assert upstream.repodata is not None
    if state.needs_compaction():
        await asyncio.to_thread(compact_files, storage, subdir, state)
    # The end of the run records only what changed, so the 600k-entry map can go now.
    state.release()
    todo = plan.add + plan.replace
    size = sum(planned.wanted[fn].size for fn in todo)
    listen(Event("plan", subdir, count=len(todo), size=size))
    # Strays free their space before the downloads need it, unless the published index may
    # name them (a run killed after publishing its index, before saving its state).
    meta = upstream.meta
    planned.strays_first = meta is not None and published_intact(storage, subdir, meta)
    if planned.strays_first and plan.strays:
        await asyncio.to_thread(delete_all, storage, subdir, plan.strays)
    planned.deletes = tuple(sorted(plan.delete + plan.strays))
    planned.kept_removed = kept_removed_records(
        storage, subdir, plan, upstream.repodata, job.keep_removed
    )


async def _download_and_prepare(
    run: Run,
    upstream: Upstream,
    planned: _Planned,
    report: SubdirReport,
    early: asyncio.Future[Prepared] | None,
) -> tuple[dict[str, FileState], _Prepared]:
    """Download the packages while the other core writes the indexes to publish: an interim
    one when files change under their name, and the final one as it will be if every
    download succeeds (unless upstream's own bytes are that, and already on their way)."""
    job, client, storage, listen = run.job, run.client, run.storage, run.listen
    subdir, index, plan = upstream.subdir, upstream.repodata, planned.plan
    assert index is not None
    clock = time.monotonic()
    package_base = _package_base(join(run.base, subdir), index.info)
    # Files a killed run already put in place are adopted (after hashing) instead of
    # fetched again. A local folder whose mtime is as our last run left it holds none (a
    # new name changes it), and one that changed was just listed; an object store has no
    # folder mtime, so it is listed (one LIST per 1000 objects, not one HEAD per package).
    todo = plan.add + plan.replace
    present = planned.on_disk if storage.local or not todo else storage.listing(subdir)
    as_is = upstream.fetched.body if early is not None and planned.published is None else None
    if early is not None and as_is is None:
        await discard_when_ready(early)
    # CEP-16 shards encoded (and staged) meanwhile too; forked (if so) before any thread starts
    shards = planned.shards = SubdirShards(storage, subdir, job.shards, job.shard_grace)
    # nothing to download: the other core is free, so two children share the names
    parts = 2 if not todo and (os.cpu_count() or 1) > 1 else 1
    shards.begin(
        index, planned.published, planned.kept_removed, plan.replace, planned.order, job.fork,
        parts,
    )  # fmt: skip
    planned.order = None  # freed once the shards are published
    shards_ahead = asyncio.ensure_future(asyncio.to_thread(shards.complete))
    indexes = (index, planned.published, planned.kept_removed, plan, job, as_is)
    ahead = asyncio.ensure_future(asyncio.to_thread(prepare_indexes, storage, subdir, *indexes))
    try:
        done, staged = await download_all(
            job, client, package_base, storage, subdir, plan, planned.wanted, present, report,
            listen,
        )  # fmt: skip
    except BaseException:
        shards.cancel()
        await asyncio.gather(shards_ahead, return_exceptions=True)
        await discard_when_ready(ahead)
        raise
    await shards_ahead
    clock = report.timed("download", clock)
    interim, final = await ahead
    if final is None:
        assert early is not None
        final = await early
    report.timed("index", clock)
    return done, _Prepared(interim, final, staged)


@dataclass
class _Prepared:
    """Written but not yet published: the interim and final indexes, and replaced files."""

    interim: Prepared | None
    final: Prepared
    staged: dict[str, StagedFile]


async def _publish(
    run: Run,
    upstream: Upstream,
    planned: _Planned,
    done: dict[str, FileState],
    ready: _Prepared,
    report: SubdirReport,
) -> dict[str, list[int]]:
    """Interim index, replaced files, final index: at every instant a reader sees an index
    whose files are all in place and match it. Returns the published files' stats."""
    job, storage = run.job, run.storage
    subdir, index = upstream.subdir, upstream.repodata
    assert index is not None
    clock = time.monotonic()
    final, interim, staged = ready.final, ready.interim, ready.staged
    skip = set(report.failed)  # a failed download keeps its old bytes but loses its record
    shards = planned.shards
    assert shards is not None
    await asyncio.to_thread(shards.drop, skip)  # shards were prepared for no failures
    if skip:  # the final index was written for all downloads succeeding: write it again
        final.discard()
        data = await asyncio.to_thread(
            encode_published, index, subdir, planned.published, skip, planned.kept_removed
        )
        final = await asyncio.to_thread(prepare_index, storage, subdir, data, job)
        del data
        clock = report.timed("reindex", clock)
    if interim is not None and staged:
        # Interim index without the files about to change, so no reader ever sees an
        # index whose record disagrees with the bytes on disk. Until now readers saw
        # the old snapshot, old files included. Shards likewise, first.
        await asyncio.to_thread(shards.publish_interim, set(planned.plan.replace) - skip)
        await asyncio.to_thread(interim.publish)
        clock = report.timed("interim", clock)
    elif interim is not None:
        interim.discard()
    if storage.local:  # renames: one thread does them all (a hand-off each costs more)
        mtimes = await asyncio.to_thread(lambda: [f.commit() for f in staged.values()])
    else:  # object-store requests: side by side
        mtimes = await asyncio.gather(*(asyncio.to_thread(f.commit) for f in staged.values()))
    for filename, mtime_ns in zip(staged, mtimes, strict=True):
        record = planned.wanted[filename]
        done[filename] = FileState(record.size, record.digest, mtime_ns)
    clock = report.timed("commit", clock)
    await asyncio.to_thread(shards.publish_final)  # new shards and their index before .zst
    await asyncio.to_thread(final.publish)
    stats = index_stats(storage, subdir)
    report.timed("publish", clock)
    report.packages = planned.n_published - len(skip) + len(planned.kept_removed)
    report.published_bytes = planned.n_bytes - sum(
        planned.wanted[fn].size for fn in skip if fn in planned.wanted
    )
    run.listen(Event("published", subdir, count=report.packages))
    return stats


async def _delete_and_save(
    run: Run,
    upstream: Upstream,
    planned: _Planned,
    done: dict[str, FileState],
    stats: dict[str, list[int]],
    report: SubdirReport,
) -> None:
    """Delete what is no longer listed, then save state: last, so a kill before it only
    costs the next run a re-plan."""
    storage = run.storage
    subdir, deletes = upstream.subdir, planned.deletes
    clock = time.monotonic()
    doomed = planned.plan.delete if planned.strays_first else deletes
    await asyncio.to_thread(delete_all, storage, subdir, doomed)
    clock = report.timed("delete", clock)
    for filename in deletes:
        report.deleted.append(filename)
        run.listen(Event("deleted", subdir, name=filename))
    # Our state minus what is gone, plus what we fetched; a failed replacement keeps
    # its old entry (its old bytes are still there).
    changes: dict[str, FileState | None] = dict.fromkeys(planned.dropped, None)
    changes.update(dict.fromkeys(deletes, None))
    changes.update(done)
    save_files(storage, subdir, planned.state, changes)
    storage.clear_staging(subdir)  # before the folder's mtime is recorded
    if planned.shards is not None:
        deleted = await asyncio.to_thread(planned.shards.finish)
        report.shards = {"written": planned.shards.files_written, "deleted": len(deleted)}
        report.timings["shards"] = round(planned.shards.seconds, 3)
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
            options=run.options,
            published=stats,
            complete=not report.failed,
            dir_mtime_ns=folder[1] if folder else 0,
            packages=report.packages,
        ),
    )


def _split_repaired(report: SubdirReport, dropped: set[str]) -> None:
    """Files we held that were gone or changed on disk (--repair, or a touched folder) and are
    fetched again are reported as repaired, not added."""
    if dropped:
        report.repaired = [fn for fn in report.added if fn in dropped]
        report.added = [fn for fn in report.added if fn not in dropped]


def _copies(names: Iterable[str]) -> list[str]:
    """New string objects equal to `names` (see the plan in _sync_changed)."""
    return [name.encode().decode() for name in names]


def _package_base(subdir_url: str, info: dict[str, object]) -> str:
    """CEP-15: packages live under info.base_url (absolute or relative) when it is set."""
    base_url = info.get("base_url")
    if isinstance(base_url, str) and base_url:
        return urljoin(subdir_url + "/", base_url).rstrip("/")
    return subdir_url
