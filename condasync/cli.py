"""The Typer app: parse options, call one engine function, print, and map errors to exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from condasync import __version__
from condasync.config import closure_from, filters_from, load_config
from condasync.display import PlainListener, RichListener, print_plain_summary, print_summary
from condasync.engine.closure_options import closure_options
from condasync.engine.filters import Filters, compile_spec, parse_cutoff
from condasync.engine.job import MirrorJob
from condasync.engine.sync import run_mirror
from condasync.errors import EXIT_INTERRUPTED, EXIT_USAGE, EXIT_VERIFY, CondasyncError, UsageError
from condasync.models import MirrorReport
from condasync.serve.commands import apikey_app
from condasync.serve.commands import serve as serve_command
from condasync.storage import LocalStorage, S3Options, open_storage

S3Endpoint = Annotated[
    str | None,
    typer.Option("--s3-endpoint", help="S3-compatible endpoint URL (else AWS_ENDPOINT_URL)."),
]
S3PathStyle = Annotated[
    bool,
    typer.Option("--s3-force-path-style", help="Path-style S3 URLs (bucket in the path)."),
]

app = typer.Typer(
    help="Mirror a conda channel as a verified, always-consistent static tree.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _emit_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def _check_filters(filters: Filters) -> None:
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


def _run_one(job: MirrorJob, as_json: bool, quiet: bool) -> MirrorReport:
    if as_json or quiet or not sys.stderr.isatty():
        report = run_mirror(job, PlainListener(quiet=quiet or as_json))
    else:
        with RichListener() as listener:
            report = run_mirror(job, listener)
    if report.error:
        print(f"error: {report.error}", file=sys.stderr)
    if not as_json and report.subdirs:  # no summary of zeros after an error that synced nothing
        if sys.stderr.isatty() and not quiet:
            print_summary(report)
        elif not quiet or report.exit_code:
            print_plain_summary(report)
    return report


@app.command()
def mirror(
    url: Annotated[
        str | None, typer.Argument(help="Upstream channel: http(s)://, file:// or a path.")
    ] = None,
    target: Annotated[
        str | None, typer.Argument(metavar="DIR", help="Where the mirror tree lives.")
    ] = None,
    subdir: Annotated[
        list[str] | None, typer.Option("-s", "--subdir", help="Subdir to mirror (repeatable).")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="MatchSpec to mirror (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="MatchSpec to skip (repeatable).")
    ] = None,
    latest: Annotated[
        int | None, typer.Option("--latest", help="Keep the N newest versions per name.")
    ] = None,
    exclude_newer: Annotated[
        str | None,
        typer.Option("--exclude-newer", help="Skip packages newer than DATE or DURATION (7d)."),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("-j", "--jobs", help="Concurrent downloads [default: 16].")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan and report only; write nothing.")
    ] = False,
    keep_removed: Annotated[
        bool, typer.Option("--keep-removed", help="Never delete packages upstream dropped.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON report on stdout.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Only warnings, errors and failures.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with [[mirror]] tables.")
    ] = None,
    write_bz2: Annotated[bool, typer.Option("--bz2", help="Also write repodata.json.bz2.")] = False,
    retries: Annotated[
        int | None, typer.Option("--retries", help="Retries per download [default: 3].")
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Stat every file against the saved state; re-fetch any gone."
        ),
    ] = False,
    zstd_level: Annotated[
        int | None,
        typer.Option(
            "--zstd-level",
            help="zstd level for repodata.json.zst [default: 3; an index published"
            " unchanged keeps upstream's own .zst].",
        ),
    ] = None,
    max_delete: Annotated[
        float | None,
        typer.Option(
            "--max-delete",
            metavar="PCT",
            help="Refuse to delete more than PCT percent of a subdir's packages in one run"
            " (an empty or truncated upstream index) \\[default: 50; 100 allows any shrink].",
        ),
    ] = None,
    lock: Annotated[
        list[str] | None,
        typer.Option(
            "--lock",
            metavar="FILE",
            help="Mirror every conda package of this pixi.lock, conda-lock.yml or @EXPLICIT"
            " file (repeatable).",
        ),
    ] = None,
    solve: Annotated[
        list[str] | None,
        typer.Option(
            "--solve", metavar="SPEC", help="Mirror what this environment needs (repeatable)."
        ),
    ] = None,
    platform: Annotated[
        list[str] | None,
        typer.Option(
            "--platform",
            metavar="P",
            help="Platform to solve for (repeatable) [default: the mirrored subdirs].",
        ),
    ] = None,
    virtual_package: Annotated[
        list[str] | None,
        typer.Option(
            "--virtual-package",
            metavar="NAME=VERSION[=BUILD]",
            help="Override a virtual package the solves assume, e.g. __glibc=2.17 (repeatable).",
        ),
    ] = None,
    with_deps: Annotated[
        bool,
        typer.Option("--with-deps", help="Also mirror what the selected packages depend on."),
    ] = False,
    keep_unselected: Annotated[
        str | None,
        typer.Option(
            "--keep-unselected",
            metavar="DURATION",
            help="Keep packages that dropped out of the selection this long [default: 30d;"
            " 0 prunes at once].",
        ),
    ] = None,
    s3_endpoint: S3Endpoint = None,
    s3_force_path_style: S3PathStyle = False,
    s3_no_lock: Annotated[
        bool,
        typer.Option(
            "--s3-no-lock",
            help="S3 stores without conditional writes: run without the lock (one run at a time!).",
        ),
    ] = False,
) -> None:
    """Bring DIR (a folder, or s3://bucket/prefix) up to date with the channel at URL."""
    try:
        if config is not None:
            if url or target:
                raise UsageError("give either URL DIR or --config, not both")
            tables = load_config(config)
        elif url and target:
            tables = [{"url": url, "dir": target}]
        else:
            raise UsageError("missing URL and DIR (or --config FILE)")
        jobs_list = []
        for table in tables:
            filters = filters_from(table)
            if include or exclude or latest or exclude_newer:
                filters = Filters(
                    include=tuple(include or filters.include),
                    exclude=tuple(exclude or filters.exclude),
                    latest=latest if latest is not None else filters.latest,
                    exclude_newer=exclude_newer or filters.exclude_newer,
                )
            _check_filters(filters)
            job = MirrorJob(
                url=table["url"],
                target=table["dir"],
                subdirs=tuple(subdir or table.get("subdirs", ())),
                filters=filters,
                jobs=jobs if jobs is not None else table.get("jobs", 16),
                dry_run=dry_run,
                keep_removed=keep_removed or table.get("keep_removed", False),
                bz2=write_bz2 or table.get("bz2", False),
                retries=retries if retries is not None else table.get("retries", 3),
                zstd_level=zstd_level if zstd_level is not None else table.get("zstd_level"),
                repair=repair,
                max_delete=float(
                    max_delete if max_delete is not None else table.get("max_delete", 50)
                ),
                s3=S3Options(s3_endpoint, s3_force_path_style or None, s3_no_lock),
                closure=closure_options(
                    closure_from(table),
                    lock,
                    solve,
                    platform,
                    virtual_package,
                    with_deps,
                    keep_unselected,
                ),
            )
            level = job.zstd_level
            if job.jobs < 1 or job.retries < 0 or not (level is None or 1 <= level <= 22):
                raise UsageError("--jobs must be >= 1, --retries >= 0, --zstd-level 1..22")
            if not 0 <= job.max_delete <= 100:
                raise UsageError("--max-delete must be a percentage from 0 to 100")
            jobs_list.append(job)
    except CondasyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    reports = [_run_one(job, as_json, quiet) for job in jobs_list]
    if as_json:
        _emit_json(
            reports[0].to_dict() if config is None else {"mirrors": [r.to_dict() for r in reports]}
        )
    codes = [r.exit_code for r in reports]
    raise typer.Exit(EXIT_INTERRUPTED if EXIT_INTERRUPTED in codes else max(codes))


_T = TypeVar("_T")


def _run_on_tree(target: Path, run: Callable[[], _T]) -> _T:
    """Shared by verify and index: DIR must exist; library errors become one line + exit code."""
    if not target.is_dir():
        print(f"error: {target} is not a directory", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE)
    try:
        return run()
    except CondasyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None


@app.command()
def verify(
    target: Annotated[
        str, typer.Argument(metavar="DIR", help="Mirror tree to check (or s3://bucket/prefix).")
    ],
    deep: Annotated[
        bool, typer.Option("--deep", help="Also open each package and check its metadata.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON report on stdout.")
    ] = False,
    s3_endpoint: S3Endpoint = None,
    s3_force_path_style: S3PathStyle = False,
) -> None:
    """Check every indexed file for existence, size and hash; never modifies anything.

    On S3 the check uses object sizes and, where the record's md5 can be compared with a
    plain ETag, the ETag; --deep downloads and hashes every object instead.
    """
    from condasync.engine.verify import verify_storage, verify_tree

    if target.startswith("s3://"):
        options = S3Options(s3_endpoint, s3_force_path_style or None)
        try:
            storage = open_storage(target, s3=options)
            assert not isinstance(storage, LocalStorage)  # an s3:// target
            report = verify_storage(storage, deep=deep)
        except CondasyncError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
    else:
        report = _run_on_tree(Path(target), lambda: verify_tree(Path(target), deep=deep))
    doc = report.to_dict()
    if as_json:
        _emit_json(doc)
    else:
        for problem in doc["problems"]:
            where = "/".join(p for p in (problem["subdir"], problem["filename"]) if p)
            print(f"problem: {where}: {problem['kind']}: {problem['detail']}", file=sys.stderr)
        for orphan in doc["orphans"]:
            print(f"orphan: {orphan}", file=sys.stderr)
        verdict = "ok" if report.ok else f"{len(doc['problems'])} problem(s)"
        print(f"{target}: {doc['files_checked']} files checked, {verdict}", file=sys.stderr)
    raise typer.Exit(0 if report.ok else EXIT_VERIFY)


@app.command("index")
def index_command(
    target: Annotated[
        Path, typer.Argument(metavar="DIR", help="Channel folder with <subdir>/ packages.")
    ],
    subdir: Annotated[
        list[str] | None, typer.Option("-s", "--subdir", help="Only these subdirs.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON report on stdout.")
    ] = False,
) -> None:
    """Build <subdir>/repodata.json (+ .zst) from the package files in DIR."""
    from condasync.engine.indexer import index_tree

    report = _run_on_tree(target, lambda: index_tree(target, subdirs=subdir or None))
    doc = report.to_dict()
    if as_json:
        _emit_json(doc)
    else:
        for name, sub in doc["subdirs"].items():
            for filename, reason in sub.get("skipped", {}).items():
                print(f"warning: {name}/{filename!r}: skipped: {reason}", file=sys.stderr)
            print(f"{name}: {sub['packages']} packages indexed", file=sys.stderr)


app.command("serve")(serve_command)
app.add_typer(apikey_app, name="apikey")


def _version(value: bool) -> None:
    if value:
        print(f"condasync {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """condasync: mirror conda channels."""


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
