"""What one mirror run is asked to do (MirrorJob, built by the CLI, a config table or serve),
and the names every engine module shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from condasync.engine.filters import Filters
from condasync.models import Event
from condasync.storage import S3Options

DEFAULT_ZSTD = 3  # level for repodata.json.zst: ~1 s for conda-forge's linux-64 (measured)

INDEX_FILES = ("repodata.json", "repodata.json.zst")


@dataclass(frozen=True)
class Closure:
    """What environments need (issue 14): lockfiles, specs to solve, dependency closure."""

    locks: tuple[str, ...] = ()  # paths of pixi.lock, conda-lock.yml or @EXPLICIT files
    solve: tuple[str, ...] = ()  # MatchSpecs that together form one environment
    platforms: tuple[str, ...] = ()  # to solve for; () means the mirrored subdirs but noarch
    virtual_packages: tuple[str, ...] = ()  # NAME=VERSION[=BUILD] overriding the defaults
    with_deps: bool = False
    keep_unselected: str = "30d"
    solve_timeout: float = 900.0  # seconds for all solves of one run (one child process)

    @property
    def active(self) -> bool:
        return bool(self.locks or self.solve or self.with_deps)


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
    # Package names listed in the index but not copied: the server proxies their files.
    proxied: tuple[str, ...] = ()
    s3: S3Options = field(default_factory=S3Options)
    shards: bool = True  # CEP-16 shards beside repodata.json (--no-shards)
    shard_grace: float = 900.0  # seconds a shard no longer named stays (--shard-grace)
    fork: bool = False  # shards prepared in a forked child (the CLI; see engine/forked.py)
    closure: Closure = field(default_factory=Closure)


Listener = Callable[[Event], None]
