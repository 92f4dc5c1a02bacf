"""Downloading one subdir's packages: concurrent, verified while streamed, retried; files a
killed run left in place are adopted after hashing instead of fetched again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from condasync.channel.bigindex import Lite
from condasync.channel.urls import join
from condasync.engine import fetch
from condasync.engine.job import Listener, MirrorJob
from condasync.errors import StorageError
from condasync.models import Event, FileState, Plan, SubdirReport
from condasync.storage import StagedFile, Storage

INLINE_BYTES = 256 * 1024  # below this, file work runs on the event loop (measured faster)

T = TypeVar("T")


async def download_all(
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
