"""Frozen data shared by the engine: repodata, local file state, plans and reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

Record = dict[str, Any]

PACKAGE_KEYS = ("packages", "packages.conda")


@dataclass
class Repodata:
    """One subdir's index. `records` maps filename to record across both package sections."""

    info: dict[str, Any]
    records: dict[str, Record]
    removed: list[str] = field(default_factory=list)
    version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """Progress for listeners of mirror and index runs (plan, bytes, file, failed, ...)."""

    kind: str
    subdir: str = ""
    name: str = ""
    size: int = 0
    count: int = 0
    message: str = ""


class FileState(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What the last sync verified about one file on the target (saved as [size, digest, mtime])."""

    size: int
    digest: str  # "sha256:<hex>" or "md5:<hex>"
    mtime_ns: int = 0


@dataclass(frozen=True)
class Plan:
    """What one subdir sync will do. Filenames only; no I/O has happened."""

    add: tuple[str, ...]
    replace: tuple[str, ...]
    delete: tuple[str, ...]
    kept_removed: tuple[str, ...]  # gone upstream, kept by --keep-removed
    unchanged: int  # wanted files we already hold as upstream lists them
    strays: tuple[str, ...]  # package files on disk that no state or record names


@dataclass
class SubdirReport:
    """The outcome of syncing one subdir."""

    subdir: str
    unchanged: bool = False
    added: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # missing or changed on disk, fetched again
    replaced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    filtered: int = 0
    packages: int = 0
    bytes: int = 0
    planned_bytes: int = 0  # what the plan downloads (a --dry-run's "would download")
    published_bytes: int = 0  # total size of the packages the published index lists
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    error: str | None = None  # this subdir was not synced (missing upstream, --max-delete)
    shards: dict[str, int] = field(default_factory=dict)  # shard files "written", "deleted"

    def timed(self, phase: str, started: float) -> float:
        """Add the time since `started` to a phase; return now, for the next phase."""
        now = time.monotonic()
        self.timings[phase] = round(self.timings.get(phase, 0.0) + now - started, 3)
        return now


@dataclass
class SubdirRun:
    """One subdir's last run (counts of that run) and last full success (what it published)."""

    upstream: str = ""  # the channel URL, tokens and passwords masked
    last_run: float = 0.0  # Unix seconds
    last_success: float | None = None  # the last run with no error and no failed package
    exit_code: int = 0  # of the last run, for this subdir
    incomplete: bool = False  # the last run left packages out (failed) or did not sync
    unchanged: bool = False  # the last run found upstream unchanged
    packages: int | None = None  # published in the index (None: not known yet)
    bytes: int | None = None  # total size of the published packages
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    failed: int = 0
    rejected: int = 0
    downloaded_bytes: int = 0
    duration_s: float = 0.0


@dataclass
class MirrorReport:
    """The outcome of one `mirror` run over all its subdirs."""

    url: str
    target: str
    dry_run: bool = False
    subdirs: list[SubdirReport] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0
    runs: dict[str, SubdirRun] = field(default_factory=dict)  # the target's record after it
    closure: dict[str, Any] | None = None  # the selection step's report (lock, solve, ...)

    @property
    def unchanged(self) -> bool:
        return bool(self.subdirs) and all(s.unchanged for s in self.subdirs)

    def to_dict(self) -> dict[str, Any]:
        def merge_list(attr: str) -> list[str]:
            return [name for s in self.subdirs for name in getattr(s, attr)]

        def merge_dict(attr: str) -> dict[str, str]:
            return {k: v for s in self.subdirs for k, v in getattr(s, attr).items()}

        return {
            "url": self.url,
            "dir": self.target,
            "dry_run": self.dry_run,
            "unchanged": self.unchanged,
            "added": merge_list("added"),
            "repaired": merge_list("repaired"),
            "replaced": merge_list("replaced"),
            "deleted": merge_list("deleted"),
            "failed": merge_dict("failed"),
            "rejected": merge_dict("rejected"),
            "bytes": sum(s.bytes for s in self.subdirs),
            "planned_bytes": sum(s.planned_bytes for s in self.subdirs),
            "seconds": round(self.seconds, 3),
            "download_seconds": round(sum(s.timings.get("download", 0) for s in self.subdirs), 3),
            "error": self.error,
            "exit_code": self.exit_code,
            "subdirs": {
                s.subdir: {
                    "unchanged": s.unchanged,
                    "added": s.added,
                    "repaired": s.repaired,
                    "replaced": s.replaced,
                    "deleted": s.deleted,
                    "failed": s.failed,
                    "rejected": s.rejected,
                    "filtered": s.filtered,
                    "packages": s.packages,
                    "bytes": s.bytes,
                    "planned_bytes": s.planned_bytes,
                    "timings": s.timings,
                    "error": s.error,
                    "shards": s.shards,
                }
                for s in self.subdirs
            },
            **({"closure": self.closure} if self.closure is not None else {}),
        }
