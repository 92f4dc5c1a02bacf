"""The mirror command's options (declarations and help), and the jobs built from them and from
the --config tables: the command line wins over a table, a table over the defaults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from condasync.channel.repodata import is_subdir, suggest_subdir
from condasync.config import closure_from, filters_from, load_config
from condasync.engine.closure_options import closure_options
from condasync.engine.filters import Filters, compile_spec, parse_cutoff
from condasync.engine.job import MirrorJob
from condasync.engine.shardpub import parse_duration
from condasync.errors import UsageError
from condasync.storage import S3Options

S3Endpoint = Annotated[
    str | None,
    typer.Option("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)."),
]

S3PathStyle = Annotated[
    bool,
    typer.Option("--s3-force-path-style", help="Path-style S3 URLs (bucket in the path)."),
]

UrlOpt = Annotated[
    str | None,
    typer.Argument(metavar="URL", help="Upstream channel: http(s)://, file:// or a path."),
]

TargetOpt = Annotated[
    str | None, typer.Argument(metavar="DIR", help="Where the mirror tree lives.")
]

SubdirOpt = Annotated[
    list[str] | None, typer.Option("-s", "--subdir", help="Subdir to mirror (repeatable).")
]

IncludeOpt = Annotated[
    list[str] | None, typer.Option("--include", help="MatchSpec to mirror (repeatable).")
]

ExcludeOpt = Annotated[
    list[str] | None, typer.Option("--exclude", help="MatchSpec to skip (repeatable).")
]

LatestOpt = Annotated[
    int | None, typer.Option("--latest", help="Keep the N newest versions per name.")
]

ExcludeNewerOpt = Annotated[
    str | None,
    typer.Option("--exclude-newer", help="Skip packages newer than DATE or DURATION (7d)."),
]

JobsOpt = Annotated[
    int | None, typer.Option("-j", "--jobs", help="Concurrent downloads [default: 16].")
]

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Plan and report only; write nothing.")]

KeepRemovedOpt = Annotated[
    bool, typer.Option("--keep-removed", help="Never delete packages upstream dropped.")
]

AsJsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON report on stdout.")]

QuietOpt = Annotated[
    bool, typer.Option("-q", "--quiet", help="Only warnings, errors and failures.")
]

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML file with [[mirror]] tables.")
]

WriteBz2Opt = Annotated[bool, typer.Option("--bz2", help="Also write repodata.json.bz2.")]

RetriesOpt = Annotated[
    int | None, typer.Option("--retries", help="Retries per download [default: 3].")
]

RepairOpt = Annotated[
    bool,
    typer.Option("--repair", help="Stat every file against the saved state; re-fetch any gone."),
]

ZstdLevelOpt = Annotated[
    int | None,
    typer.Option(
        "--zstd-level",
        help="zstd level for repodata.json.zst [default: 3; an index published"
        " unchanged keeps upstream's own .zst].",
    ),
]

MaxDeleteOpt = Annotated[
    float | None,
    typer.Option(
        "--max-delete",
        metavar="PCT",
        help="Refuse to delete more than PCT percent of a subdir's packages in one run"
        " (an empty or truncated upstream index) [default: 50; 100 allows any shrink].",
    ),
]

LockOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--lock",
        metavar="FILE",
        help="Mirror every conda package of this pixi.lock, conda-lock.yml or @EXPLICIT"
        " file (repeatable).",
    ),
]

SolveOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--solve", metavar="SPEC", help="Mirror what this environment needs (repeatable)."
    ),
]

PlatformOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--platform",
        metavar="P",
        help="Platform to solve for (repeatable) [default: the mirrored subdirs].",
    ),
]

VirtualPackageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--virtual-package",
        metavar="NAME=VERSION[=BUILD]",
        help="Override a virtual package the solves assume, e.g. __glibc=2.17 (repeatable).",
    ),
]

WithDepsOpt = Annotated[
    bool,
    typer.Option("--with-deps", help="Also mirror what the selected packages depend on."),
]

KeepUnselectedOpt = Annotated[
    str | None,
    typer.Option(
        "--keep-unselected",
        metavar="DURATION",
        help="Keep packages that dropped out of the selection this long [default: 30d;"
        " 0 prunes at once].",
    ),
]

S3NoLockOpt = Annotated[
    bool,
    typer.Option(
        "--s3-no-lock",
        help="S3 stores without conditional writes: run without the lock (one run at a time!).",
    ),
]

MetricsFileOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics-file",
        metavar="PATH",
        help="Write node_exporter textfile metrics here at the end of every run.",
    ),
]

LogFormatOpt = Annotated[
    str,
    typer.Option("--log-format", metavar="plain|json", help="json: one object per line."),
]

NoShardsOpt = Annotated[
    bool,
    typer.Option("--no-shards", help="Write no sharded repodata (CEP-16); remove any."),
]

ShardGraceOpt = Annotated[
    str | None,
    typer.Option(
        "--shard-grace",
        metavar="DURATION",
        help="Keep shards no longer named this long after their index was replaced"
        " [default: 15m; 0 deletes them on the next run].",
    ),
]


@dataclass(frozen=True)
class Given:
    """What `mirror`'s command line gives; None (or False) leaves each [[mirror]] table's own
    value, or the default."""

    subdir: list[str] | None
    include: list[str] | None
    exclude: list[str] | None
    latest: int | None
    exclude_newer: str | None
    jobs: int | None
    dry_run: bool
    keep_removed: bool
    bz2: bool
    retries: int | None
    repair: bool
    zstd_level: int | None
    max_delete: float | None
    s3: S3Options
    no_shards: bool
    shard_grace: str | None
    lock: list[str] | None
    solve: list[str] | None
    platform: list[str] | None
    virtual_package: list[str] | None
    with_deps: bool
    keep_unselected: str | None


def mirror_tables(url: str | None, target: str | None, config: Path | None) -> list[dict[str, Any]]:
    """The [[mirror]] tables of --config, or one table of URL DIR."""
    if config is not None:
        if url or target:
            raise UsageError("give either URL DIR or --config, not both")
        return load_config(config)
    if url and target:
        return [{"url": url, "dir": target}]
    if url:
        raise UsageError("missing DIR: where should the mirror of URL go? (mirror URL DIR)")
    raise UsageError("missing URL and DIR (or --config FILE)")


def job_of(table: dict[str, Any], given: Given) -> MirrorJob:
    """One table's job: the command line wins over the table, the table over the defaults."""
    g = given
    filters = filters_from(table)
    if g.include or g.exclude or g.latest is not None or g.exclude_newer:
        filters = Filters(
            include=tuple(g.include or filters.include),
            exclude=tuple(g.exclude or filters.exclude),
            latest=g.latest if g.latest is not None else filters.latest,
            exclude_newer=g.exclude_newer or filters.exclude_newer,
        )
    check_filters(filters)
    job = MirrorJob(
        url=table["url"],
        target=table["dir"],
        subdirs=tuple(g.subdir or table.get("subdirs", ())),
        filters=filters,
        jobs=g.jobs if g.jobs is not None else table.get("jobs", 16),
        dry_run=g.dry_run,
        keep_removed=g.keep_removed or table.get("keep_removed", False),
        bz2=g.bz2 or table.get("bz2", False),
        retries=g.retries if g.retries is not None else table.get("retries", 3),
        zstd_level=g.zstd_level if g.zstd_level is not None else table.get("zstd_level"),
        repair=g.repair,
        max_delete=float(g.max_delete if g.max_delete is not None else table.get("max_delete", 50)),
        s3=g.s3,
        shards=not g.no_shards and table.get("shards", True),
        shard_grace=grace(g.shard_grace or table.get("shard_grace", "15m")),
        fork=True,
        closure=closure_options(
            closure_from(table),
            g.lock,
            g.solve,
            g.platform,
            g.virtual_package,
            g.with_deps,
            g.keep_unselected,
        ),
    )
    check_job(job)
    return job


def check_filters(filters: Filters) -> None:
    for spec in (*filters.include, *filters.exclude):
        try:
            compile_spec(spec)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if filters.exclude_newer:
        try:
            parse_cutoff(filters.exclude_newer, datetime.now(timezone.utc))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if filters.latest is not None and filters.latest < 1:
        raise UsageError("--latest must be at least 1")


def check_job(job: MirrorJob) -> None:
    """One clear message per bad value, before anything runs."""
    if job.jobs < 1:
        raise UsageError(f"--jobs must be at least 1 (got {job.jobs})")
    if job.retries < 0:
        raise UsageError(f"--retries must be 0 or more (got {job.retries})")
    if job.zstd_level is not None and not 1 <= job.zstd_level <= 22:
        raise UsageError(f"--zstd-level must be from 1 to 22 (got {job.zstd_level})")
    if not 0 <= job.max_delete <= 100:
        raise UsageError(
            f"--max-delete must be a percentage from 0 to 100 (got {job.max_delete:g})"
        )
    for subdir in job.subdirs:
        if not is_subdir(subdir):
            raise UsageError(f"invalid subdir {subdir!r}{suggest_subdir(subdir)}")


def grace(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--shard-grace: {exc}") from None
