"""When each subdir of a target was last run and last fully synced, and what it held then:
`DIR/.condasync/runs.json`, written at the end of every run that succeeded or wrote something
(a run that fails before writing leaves DIR untouched, state included), read by `condasync
status`; `mirror --metrics-file` reports every run from it, failed ones included.

It is kept apart from the engine's state (state.py) on purpose: a no-op run must not touch
that state, and on an object store a no-op run writes this record only when the last one is
older than RECORD_EVERY, so a run every minute costs one PUT per ten minutes, not one each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import asdict, fields

import orjson

from condasync.errors import EXIT_LOCKED, EXIT_PARTIAL, EXIT_UPSTREAM, CondasyncError
from condasync.models import MirrorReport, SubdirReport, SubdirRun
from condasync.storage import STATE_DIR, Storage

RUNS_FILE = f"{STATE_DIR}/runs.json"
RECORD_EVERY = 600.0  # seconds: how stale a no-op run may leave the record on an object store


_FIELDS = {f.name for f in fields(SubdirRun)}


def parse_runs(raw: bytes | None) -> dict[str, SubdirRun]:
    """The record's subdirs; anything unreadable reads as nothing known."""
    if raw is None:
        return {}
    try:
        doc = orjson.loads(raw)
        subdirs = doc["subdirs"]
        return {
            name: SubdirRun(**{k: v for k, v in entry.items() if k in _FIELDS})
            for name, entry in subdirs.items()
        }
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {}


def _subdir_exit(report: MirrorReport, sub: SubdirReport) -> int:
    if sub.error:
        return EXIT_UPSTREAM
    done = sub.unchanged or report.dry_run or "publish" in sub.timings
    if not done:
        return report.exit_code or EXIT_PARTIAL  # the run ended before this subdir was done
    return 1 if sub.failed else 0


def update_runs(
    previous: dict[str, SubdirRun], report: MirrorReport, now: float
) -> dict[str, SubdirRun]:
    """PURE: the record after this run. A subdir that failed keeps its last success (time,
    packages, bytes); a run that failed before any subdir marks every known subdir."""
    runs = {name: dataclasses.replace(run) for name, run in previous.items()}
    seen = {sub.subdir for sub in report.subdirs}
    for sub in report.subdirs:
        old = runs.get(sub.subdir) or SubdirRun()
        code = _subdir_exit(report, sub)
        run = SubdirRun(
            upstream=report.url,
            last_run=now,
            last_success=old.last_success,
            exit_code=code,
            incomplete=code != 0,
            unchanged=sub.unchanged,
            packages=old.packages,
            bytes=old.bytes,
            added=len(sub.added),
            replaced=len(sub.replaced),
            deleted=len(sub.deleted),
            failed=len(sub.failed),
            rejected=len(sub.rejected),
            downloaded_bytes=sub.bytes,
            duration_s=round(report.seconds, 3),
        )
        if code == 0:
            run.last_success = now
        if not sub.unchanged and sub.error is None and code in (0, 1):
            run.packages, run.bytes = sub.packages, sub.published_bytes
        runs[sub.subdir] = run
    if report.exit_code not in (0, 1):
        for name, run in runs.items():
            if name not in seen:
                run.last_run, run.exit_code, run.incomplete = now, report.exit_code, True
                run.unchanged = False
                run.added = run.replaced = run.deleted = run.failed = run.rejected = 0
                run.downloaded_bytes, run.duration_s = 0, round(report.seconds, 3)
    return runs


def encode_runs(runs: dict[str, SubdirRun]) -> bytes:
    doc = {"subdirs": {name: asdict(run) for name, run in sorted(runs.items())}}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def load_runs(storage: Storage) -> dict[str, SubdirRun]:
    return parse_runs(storage.read(RUNS_FILE))


def _noop_within_interval(old: dict[str, SubdirRun], new: dict[str, SubdirRun]) -> bool:
    """Whether this run was a no-op that changes nothing the record says but its times, and
    the record is recent enough to leave as it is (an object store's PUT saved)."""
    if old.keys() != new.keys():
        return False
    for name, run in new.items():
        before = old[name]
        if not run.unchanged or before.last_run < time.time() - RECORD_EVERY:
            return False
        kept = ("upstream", "exit_code", "incomplete", "packages", "bytes")
        if any(getattr(run, k) != getattr(before, k) for k in kept):
            return False
        if before.last_success is None:
            return False
    return True


def record_run(storage: Storage | None, report: MirrorReport) -> dict[str, SubdirRun]:
    """Save this run into the target's record; returns the record (also when it cannot be
    read or written: a broken store must not hide the run from --metrics-file)."""
    previous: dict[str, SubdirRun] = {}
    if storage is not None:
        with contextlib.suppress(CondasyncError, OSError):
            previous = load_runs(storage)
    runs = update_runs(previous, report, time.time())
    if storage is None or report.dry_run or report.exit_code == EXIT_LOCKED:
        return runs  # a dry run writes nothing; a locked target belongs to the other run
    if report.exit_code not in (0, 1) and not any("publish" in s.timings for s in report.subdirs):
        return runs  # a run that failed before writing leaves DIR as it was, state included
    if not storage.local and _noop_within_interval(previous, runs):
        return runs
    # the run's own outcome stands if this fails; the record catches up next time
    with contextlib.suppress(CondasyncError, OSError):
        storage.write_if_changed(RUNS_FILE, encode_runs(runs))
    return runs
