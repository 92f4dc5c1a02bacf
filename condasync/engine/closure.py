"""The selection step (issue 14): which upstream records each subdir publishes. The filters,
plus every package of the lockfiles, plus the solves of --solve, plus the --with-deps closure
of what the filters select, plus what --keep-unselected keeps. Returns filenames per subdir."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from condasync.channel.bigindex import Index, parse_index
from condasync.engine.closure_state import (
    SelectionState,
    inputs_hash,
    keep_ms,
    load_index,
    load_selection,
    save_index,
)
from condasync.engine.fetch import IndexFetch
from condasync.engine.filters import Filters, parse_cutoff, select
from condasync.engine.job import Listener, MirrorJob
from condasync.engine.lockfiles import read_lock
from condasync.engine.plan import select_records
from condasync.engine.solver import (
    SelectionError,
    Solve,
    SolverProcess,
    run_solves,
    virtual_packages,
)
from condasync.engine.solverfiles import HeldIndexes, SolverFiles, write_index_files
from condasync.engine.upstream import Upstream
from condasync.errors import UpstreamError, UsageError
from condasync.models import Event, MirrorReport

REASONS = ("filters", "lock", "solve", "with_deps", "kept")


@dataclass
class ClosureResult:
    """What the step decided: filenames per subdir, the `closure` report, the state to save
    after the run, and the upstream indexes to keep for the next solve."""

    selection: dict[str, set[str]]
    report: dict[str, Any]
    state: SelectionState
    new_bodies: dict[str, bytes]
    mismatch: bool = False
    bodies: dict[str, bytes] = field(default_factory=dict)
    previous: SelectionState = field(default_factory=SelectionState)
    staged: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Work:
    indexes: dict[str, Index]
    reasons: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def add(self, subdir: str, filename: str, reason: str) -> None:
        self.reasons.setdefault(subdir, {}).setdefault(filename, set()).add(reason)

    def having(self, reason: str) -> dict[str, list[str]]:
        return {
            subdir: sorted(fn for fn, why in files.items() if reason in why)
            for subdir, files in self.reasons.items()
        }


def _say(listen: Listener, message: str, warning: bool = False) -> None:
    listen(Event("closure-warning" if warning else "closure", message=message))


async def select_closure(
    job: MirrorJob,
    storage: Any,
    upstreams: list[Upstream],
    refetch: Callable[[Upstream], Awaitable[bytes]],
    listen: Listener,
) -> ClosureResult | None:
    """The selection of this run, or None when upstream and every input are as the last
    run left them (then nothing is solved, and the run is the usual no-op)."""
    inputs = inputs_hash(job)
    prev = load_selection(storage)
    now = int(time.time() * 1000)
    ok = [u for u in upstreams if u.error is None]
    changed = any(u.repodata is not None for u in ok)
    expired = prev.expires_ms is not None and now >= prev.expires_ms
    if not changed and prev.inputs == inputs and not expired:
        _say(listen, "closure: upstream and inputs unchanged, nothing to solve")
        return None
    clock = time.monotonic()
    held = HeldIndexes({}, {}, {u.subdir: u for u in ok})
    indexes: dict[str, Index] = {}
    for u in ok:
        u.fetched.zst = None  # a selection is never published as upstream's own .zst
        if u.repodata is not None and u.fetched.body is not None:
            indexes[u.subdir], held.bodies[u.subdir] = u.repodata, u.fetched.body
            held.new_bodies[u.subdir] = u.fetched.body
            continue
        body = await asyncio.to_thread(load_index, storage, u.subdir)
        if body is None:  # not kept (a run before --lock/--solve): fetch it once
            body = await refetch(u)
            held.new_bodies[u.subdir] = body
        held.bodies[u.subdir] = body
        indexes[u.subdir] = await asyncio.to_thread(parse_index, body, u.subdir, lazy=True)
    work = _Work(indexes, report=_empty_report())
    work.report["timings"]["indexes"] = round(time.monotonic() - clock, 3)
    mismatch = _apply_locks(job, work, listen, now)
    _apply_filters(job, work)
    staged: dict[str, Path] = {}  # new upstream indexes written where they are kept, as .new
    try:
        with tempfile.TemporaryDirectory(prefix="condasync-solve-") as tmp:
            files = SolverFiles(Path(tmp), staged)
            solved = await _solve_all(job, storage, work, held, prev, files, listen)
    except BaseException:
        for path in staged.values():
            path.unlink(missing_ok=True)  # an unsolvable --solve writes nothing
        raise
    state = _keep_and_count(job, work, prev, now, inputs, solved, listen)
    selection = {subdir: set(work.reasons.get(subdir, {})) for subdir in indexes}
    result = ClosureResult(
        selection, work.report, state, held.new_bodies, mismatch, held.bodies, prev
    )
    result.staged = staged
    return result


def _empty_report() -> dict[str, Any]:
    return {
        "no_op": False,
        "inputs": [],
        "solves": [],
        "selected": {},
        "foreign": [],
        "lock_mismatch": [],
        "excluded_but_locked": [],
        "unsolvable": [],
        "skipped": 0,
        "timings": {},  # seconds: index files written for the solver, the solver process
    }


def _apply_locks(job: MirrorJob, work: _Work, listen: Listener, now: int) -> bool:
    """Select every conda package of every lockfile whose subdir and filename upstream
    lists with the same hash. Returns whether any hash differed."""
    mismatch = False
    for path in job.closure.locks:
        lock = read_lock(path)
        foreign: list[str] = []
        unmirrored = 0  # in a subdir -s leaves out: upstream was not asked, so not foreign
        views = {
            subdir: index.views(p.filename for p in lock.packages if p.subdir == subdir)
            for subdir, index in work.indexes.items()
        }
        for p in lock.packages:
            lite = views.get(p.subdir, {}).get(p.filename)
            if lite is None and job.subdirs and p.subdir not in (*job.subdirs, "noarch"):
                unmirrored += 1
                continue
            if lite is None:
                foreign.append(f"{p.subdir}/{p.filename}")
                work.report["foreign"].append(
                    {"lock": path, "subdir": p.subdir, "filename": p.filename}
                )
                continue
            kind, ours, theirs = _compare(p.sha256, p.md5, lite.sha256, lite.md5)
            if kind is not None:
                mismatch = True
                work.report["lock_mismatch"].append(
                    {"lock": path, "subdir": p.subdir, "filename": p.filename, "hash": kind,
                     "lock_value": ours, "upstream_value": theirs}
                )  # fmt: skip
                _say(listen, f"error: {path}: {p.subdir}/{p.filename}: {kind} {ours} in the"
                     f" lockfile, {theirs} upstream; not mirrored", warning=True)  # fmt: skip
                continue
            work.add(p.subdir, p.filename, "lock")
        work.report["skipped"] += len(lock.skipped)
        work.report["inputs"].append(
            {"lock": path, "kind": lock.kind, "packages": len(lock.packages),
             "foreign": len(foreign), "skipped": len(lock.skipped), "not_mirrored": unmirrored}
        )  # fmt: skip
        elsewhere = f", {unmirrored} in subdirs not mirrored" if unmirrored else ""
        _say(listen, f"lock {path} ({lock.kind}): {len(lock.packages)} conda packages,"
             f" {len(lock.skipped)} skipped (PyPI/source), {len(foreign)} foreign"
             + elsewhere)  # fmt: skip
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            _say(listen, f"warning: {path}: {len(foreign)} locked package(s) not listed"
                 f" upstream (foreign): {shown}", warning=True)  # fmt: skip
    _check_excluded_locked(job, work, now)
    return mismatch


def _compare(
    sha256: str | None, md5: str | None, up_sha256: str | None, up_md5: str | None
) -> tuple[str | None, str | None, str | None]:
    """sha256 when both have one, else md5: (kind, lock's, upstream's) on a mismatch."""
    if sha256 and up_sha256:
        return (None, None, None) if sha256 == up_sha256.lower() else ("sha256", sha256, up_sha256)
    if md5 and up_md5:
        return (None, None, None) if md5 == up_md5.lower() else ("md5", md5, up_md5)
    return None, None, None


def _check_excluded_locked(job: MirrorJob, work: _Work, now: int) -> None:
    """A locked package is never dropped by a filter; say which ones a filter would drop."""
    drop = Filters(exclude=job.filters.exclude, exclude_newer=job.filters.exclude_newer)
    if not drop.active:
        return
    for subdir, names in work.having("lock").items():
        found = work.indexes[subdir].records(set(names))
        records = {fn: msgspec.json.decode(raw) for fn, raw in found.items()}
        when = datetime.fromtimestamp(now / 1000, timezone.utc)
        kept = select(records, drop, subdir, when)
        for fn in sorted(set(records) - kept):
            work.report["excluded_but_locked"].append({"subdir": subdir, "filename": fn})


def _apply_filters(job: MirrorJob, work: _Work) -> None:
    """What --include (with --exclude, --latest, --exclude-newer) selects; nothing without
    an --include."""
    if not job.filters.include:
        return
    for subdir, index in work.indexes.items():
        for fn in select_records(index, job.filters, subdir):
            work.add(subdir, fn, "filters")


def _platforms(job: MirrorJob, work: _Work) -> list[str]:
    platforms = list(job.closure.platforms) or [s for s in work.indexes if s != "noarch"]
    for platform in platforms:
        if platform not in work.indexes:
            raise UsageError(
                f"--platform {platform}: not a mirrored subdir upstream has"
                f" (mirrored: {', '.join(sorted(work.indexes))})"
            )
    return platforms


async def _solve_all(
    job: MirrorJob,
    storage: Any,
    work: _Work,
    held: HeldIndexes,
    prev: SelectionState,
    files: SolverFiles,
    listen: Listener,
) -> dict[str, list[str]]:
    """Every --solve platform and --with-deps group, in one child process."""
    c = job.closure
    platforms = _platforms(job, work) if c.solve else []
    if c.solve and not platforms:
        raise UsageError("--solve: no platform to solve for (give --platform or --subdir)")
    groups = _with_deps_groups(work) if c.with_deps else {}
    if not platforms and not groups:
        return {}
    clock = time.monotonic()
    with SolverProcess() as child:  # it starts up while the index files are written
        paths, exact = await asyncio.to_thread(
            write_index_files, job, storage, work.indexes, held, files
        )
        work.report["timings"]["index_files"] = round(time.monotonic() - clock, 3)
        solves = _solves(job, platforms, groups, paths, prev)
        started = time.monotonic()
        held.release(work.indexes, exact)
        results = await asyncio.to_thread(run_solves, solves, c.solve_timeout, child)
    work.report["timings"]["solver_process"] = round(time.monotonic() - started, 3)
    await asyncio.to_thread(held.restore, work.indexes)
    return _take_results(work, solves, results, groups, time.monotonic() - started, listen)


def _solves(
    job: MirrorJob,
    platforms: list[str],
    groups: dict[str, tuple[str, list[str], list[str], list[str]]],
    paths: dict[str, str],
    prev: SelectionState,
) -> list[Solve]:
    """The --solve of each platform (preferring the last selection), then the --with-deps
    groups."""
    c = job.closure
    cutoff = None
    if job.filters.exclude_newer:
        cutoff = parse_cutoff(job.filters.exclude_newer, datetime.now(timezone.utc))
    solves: list[Solve] = []
    for platform in platforms:
        solves.append(Solve(
            f"solve:{platform}", platform, list(c.solve), _sources(paths, platform),
            virtual_packages(platform, c.virtual_packages),
            locked=prev.solved.get(platform, []), exclude_newer_ms=cutoff,
        ))  # fmt: skip
    for key, (platform, specs, constraints, _members) in groups.items():
        solves.append(Solve(
            key, platform, specs, _sources(paths, platform),
            virtual_packages(platform, c.virtual_packages), constraints,
            exclude_newer_ms=cutoff,
        ))  # fmt: skip
    return solves


def _sources(paths: dict[str, str], platform: str) -> dict[str, str]:
    return {s: paths[s] for s in dict.fromkeys((platform, "noarch")) if s in paths}


def _with_deps_groups(work: _Work) -> dict[str, tuple[str, list[str], list[str], list[str]]]:
    """One solve per platform and distinct (depends, constrains) of the records the filters
    select; a noarch record on each mirrored platform. Virtual packages a record depends on
    itself are the client's to have, so they are left out of its specs."""
    platforms = [s for s in work.indexes if s != "noarch"]
    groups: dict[str, tuple[str, list[str], list[str], list[str]]] = {}
    for subdir, names in work.having("filters").items():
        found = work.indexes[subdir].records(set(names))
        for fn, raw in sorted(found.items()):
            record = msgspec.json.decode(raw)
            depends = sorted(d for d in record.get("depends") or [] if not d.startswith("__"))
            constrains = sorted(record.get("constrains") or [])
            if not depends:
                continue
            for platform in platforms if subdir == "noarch" else [subdir]:
                key = f"deps:{platform}:{msgspec.json.encode([depends, constrains]).decode()}"
                group = groups.setdefault(key, (platform, depends, constrains, []))
                group[3].append(f"{subdir}/{fn}")
    return groups


def _take_results(
    work: _Work,
    solves: list[Solve],
    results: list[Any],
    groups: dict[str, tuple[str, list[str], list[str], list[str]]],
    seconds: float,
    listen: Listener,
) -> dict[str, list[str]]:
    solved: dict[str, list[str]] = {}
    by_key = {s.key: s for s in solves}
    deps_records: dict[str, int] = {}
    for result in results:
        solve = by_key[result.key]
        if result.key.startswith("solve:"):
            if result.files is None:
                raise SelectionError(
                    f"cannot solve {' '.join(solve.specs)} for {solve.platform}"
                    f" (nothing was written):\n{result.error}"
                )
            for subdir, fn in result.files:
                work.add(subdir, fn, "solve")
            solved[solve.platform] = sorted(fn for _, fn in result.files)
            work.report["solves"].append({
                "platform": solve.platform, "specs": solve.specs,
                "virtual_packages": ["=".join(vp) for vp in solve.virtual_packages],
                "records": len(result.files), "seconds": result.seconds,
            })  # fmt: skip
            _say(listen, f"solve {solve.platform}: {len(result.files)} records in"
                 f" {result.seconds:.1f} s")  # fmt: skip
            continue
        platform, _specs, _cons, members = groups[result.key]
        if result.files is None:
            first = (result.error or "").splitlines()
            for member in members:
                subdir, _, fn = member.partition("/")
                work.report["unsolvable"].append({
                    "subdir": subdir, "filename": fn, "platform": platform,
                    "error": (result.error or "")[:2000],
                })  # fmt: skip
            _say(listen, f"warning: with-deps {platform}: {', '.join(members[:3])} not"
                 f" installable upstream: {first[0] if first else ''}", warning=True)  # fmt: skip
            continue
        for subdir, fn in result.files:
            work.add(subdir, fn, "with_deps")
        deps_records[platform] = deps_records.get(platform, 0) + len(result.files)
    for platform, count in sorted(deps_records.items()):
        n = sum(1 for g in groups.values() if g[0] == platform)
        _say(listen, f"with-deps {platform}: {n} solves, {count} records in {seconds:.1f} s")
    return solved


def _keep_and_count(
    job: MirrorJob,
    work: _Work,
    prev: SelectionState,
    now: int,
    inputs: str,
    solved: dict[str, list[str]],
    listen: Listener,
) -> SelectionState:
    """Add what --keep-unselected keeps, report the selection per subdir, and build the
    state the next run starts from."""
    keep = keep_ms(job.closure.keep_unselected)
    state = SelectionState(inputs=inputs, solved=solved)
    expires: list[int] = []
    for subdir, index in work.indexes.items():
        before = prev.subdirs.get(subdir, {})
        listed = index.views(before)
        for fn, last in before.items():
            if fn in work.reasons.get(subdir, {}) or fn not in listed:
                continue
            if keep and now - last < keep:
                work.add(subdir, fn, "kept")
                expires.append(last + keep)
        files = work.reasons.get(subdir, {})
        state.subdirs[subdir] = {
            fn: before.get(fn, now) if why == {"kept"} else now for fn, why in files.items()
        }
        counts = {reason: sum(1 for why in files.values() if reason in why) for reason in REASONS}
        work.report["selected"][subdir] = {"total": len(files), **counts}
        detail = ", ".join(f"{r} {counts[r]}" for r in REASONS if counts[r])
        _say(listen, f"{subdir}: selected {len(files)}" + (f" ({detail})" if detail else ""))
    for subdir, held in prev.subdirs.items():
        if subdir not in work.indexes:  # not synced this run (an upstream error): as it was
            state.subdirs[subdir] = held
    state.expires_ms = min(expires) if expires else None
    return state


def apply_selection(
    result: ClosureResult, previous: SelectionState, upstreams: list[Upstream]
) -> None:
    """Hand each subdir its selection. A subdir whose upstream did not change but whose
    selection did (another subdir's solve moved, a lockfile changed, a kept file expired)
    is re-planned from its kept index."""
    for u in upstreams:
        if u.error is not None or u.subdir not in result.selection:
            continue
        u.selection = result.selection[u.subdir]
        if u.repodata is not None or u.selection == set(previous.subdirs.get(u.subdir, {})):
            continue
        body = result.bodies[u.subdir]
        u.repodata = parse_index(body, u.subdir, lazy=True)
        u.fetched.body = body
        if u.meta is not None:
            u.fetched.source = u.fetched.source or u.meta.source
            u.fetched.etag = u.fetched.etag or u.meta.etag
            u.fetched.last_modified = u.fetched.last_modified or u.meta.last_modified
            u.body_sha256 = u.body_sha256 or u.meta.upstream_sha256


async def select_for_run(
    job: MirrorJob,
    storage: Any,
    upstreams: list[Upstream],
    refetch: Callable[[str], Awaitable[IndexFetch]],
    ensure_lock: Callable[[], None],
    report: MirrorReport,
    listen: Listener,
) -> ClosureResult | None:
    """Select, hand each subdir its selection, and keep the upstream indexes for the next
    run's solves. Writes nothing before the selection is known (exit 6 writes nothing)."""

    async def refetch_body(upstream: Upstream) -> bytes:
        fetched = await refetch(upstream.subdir)
        if fetched.body is None:
            raise UpstreamError(f"{upstream.subdir}: upstream index vanished during the run")
        upstream.fetched = fetched
        return fetched.body

    result = await select_closure(job, storage, upstreams, refetch_body, listen)
    if result is None:
        report.closure = {"no_op": True, "solves": []}
        return None
    report.closure = result.report
    apply_selection(result, result.previous, upstreams)
    if not job.dry_run and result.new_bodies:
        ensure_lock()
        for subdir, body in result.new_bodies.items():
            staged = result.staged.get(subdir)
            if staged is not None:
                os.replace(staged, staged.with_name(staged.name.removesuffix(".new")))
            else:
                await asyncio.to_thread(save_index, storage, subdir, body)
    result.new_bodies = result.bodies = {}
    return result
