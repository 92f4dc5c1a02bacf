"""The mirror run (DESIGN.md §2): lock, fetch every index before any write, select (closure),
then sync each subdir (engine/subdirsync.py: plan, download, publish, delete, save state).

The engine emits `Event`s to a listener and returns a `MirrorReport`; it never prints.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from condasync.channel.repodata import KNOWN_SUBDIRS, is_subdir, suggest_subdir
from condasync.channel.urls import join, mask, mask_url, normalize_channel, secrets_of
from condasync.engine import fetch
from condasync.engine.closure import ClosureResult, select_for_run
from condasync.engine.closure_state import inputs_hash, save_closure_state
from condasync.engine.job import Listener, MirrorJob
from condasync.engine.runrecord import record_run
from condasync.engine.state import GENERATION, mirrored_subdirs
from condasync.engine.subdirsync import Locker, Run, sync_subdir
from condasync.engine.upstream import (
    Upstream,
    discover_subdirs,
    fetch_upstream,
    is_json_object,
    resolve_missing,
)
from condasync.errors import (
    EXIT_PARTIAL,
    EXIT_UPSTREAM,
    CondasyncError,
    MassDeleteError,
    UpstreamError,
    UsageError,
)
from condasync.models import Event, MirrorReport, SubdirReport
from condasync.storage import Storage, describe_os_error, open_storage


def run_mirror(job: MirrorJob, listen: Listener = lambda _e: None) -> MirrorReport:
    """Run one mirror job to completion. Errors end up in the report, with their exit code."""
    started = time.monotonic()
    secrets = secrets_of(job.url)
    report = MirrorReport(url=mask_url(job.url), target=job.target, dry_run=job.dry_run)
    storage: Storage | None = None
    try:
        try:
            channel = normalize_channel(job.url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if job.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        storage = open_storage(job.target, create=not job.dry_run, s3=job.s3)
        with Locker(storage, enabled=not job.dry_run and not job.s3.no_lock) as locker:
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
        error = describe_os_error(exc, job.target)
        report.error = mask(str(error), secrets)
        report.exit_code = error.exit_code
    errors = [s.error for s in report.subdirs if s.error]
    if errors and report.exit_code in (0, EXIT_PARTIAL):
        report.exit_code = EXIT_UPSTREAM
        report.error = report.error or mask("; ".join(errors), secrets)
    mismatch = bool(report.closure and report.closure.get("lock_mismatch"))
    if report.exit_code == 0 and (mismatch or any(s.failed for s in report.subdirs)):
        report.exit_code = 1
    for sub in report.subdirs:
        sub.failed = {k: mask(v, secrets) for k, v in sub.failed.items()}
    report.seconds = time.monotonic() - started
    report.runs = record_run(storage, report)
    return report


def options_hash(job: MirrorJob, channel: str) -> str:
    """Options that shape the published index; when they change, the next run re-plans."""
    doc: dict[str, object] = {
        "url": channel,
        "filters": [job.filters.include, job.filters.exclude, job.filters.latest],
        "exclude_newer": job.filters.exclude_newer,
        "keep_removed": job.keep_removed,
        "bz2": job.bz2,
        "zstd": job.zstd_level,
        "generation": GENERATION,
        "shards": job.shards,
    }
    if job.proxied:
        doc["proxied"] = tuple(sorted(job.proxied))
    if job.closure.active:  # lockfile bytes, specs, platforms...: a change re-selects
        doc["closure"] = inputs_hash(job)
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()


async def _mirror(
    job: MirrorJob,
    channel: str,
    storage: Storage,
    locker: Locker,
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
                raise UsageError(f"invalid subdir {subdir!r}{suggest_subdir(subdir)}")
        if subdirs and "noarch" not in subdirs:
            subdirs.append("noarch")  # clients reject a channel without it
        if not subdirs:
            channeldata = await fetch.fetch_optional(client, join(base, "channeldata.json"))
            found = await discover_subdirs(client, base, channeldata)
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
            *(fetch_upstream(job, client, base, storage, s, options) for s in subdirs)
        )
        upstreams = resolve_missing(job, storage, list(fetched), base)
        run = Run(job, client, base, storage, locker, options, listen)
        closure = await _select(run, upstreams, report)
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
                await sync_subdir(run, upstream, sub)
            except MassDeleteError as exc:
                sub.error = str(exc)
                listen(Event("error", upstream.subdir, message=str(exc)))
            finally:
                upstream.release()
        if closure is not None and not job.dry_run:
            locker.ensure()
            save_closure_state(storage, closure, report)
        if not job.dry_run and channeldata is not None and is_json_object(channeldata):
            locker.ensure()
            storage.write_if_changed("channeldata.json", channeldata)


async def _select(
    run: Run, upstreams: list[Upstream], report: MirrorReport
) -> ClosureResult | None:
    """The closure step (engine/closure.py): each subdir's selection, before any write."""
    job, client, base = run.job, run.client, run.base

    async def refetch(subdir: str) -> fetch.IndexFetch:
        return await fetch.fetch_index(client, join(base, subdir), None, job.retries, job.backoff)

    if not job.closure.active:
        return None
    return await select_for_run(
        job, run.storage, upstreams, refetch, run.locker.ensure, report, run.listen
    )
