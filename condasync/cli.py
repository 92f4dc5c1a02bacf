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
from condasync.channel.urls import mask_url
from condasync.config import metrics_file_of
from condasync.display import (
    JsonListener,
    PlainListener,
    RichListener,
    json_line,
    print_json_summary,
    print_plain_summary,
    print_summary,
)
from condasync.engine.job import MirrorJob
from condasync.engine.state import load_meta, mirrored_subdirs
from condasync.errors import EXIT_INTERRUPTED, EXIT_USAGE, EXIT_VERIFY, CondasyncError
from condasync.mirror_options import (
    AsJsonOpt,
    ConfigOpt,
    DryRunOpt,
    ExcludeNewerOpt,
    ExcludeOpt,
    Given,
    IncludeOpt,
    JobsOpt,
    KeepRemovedOpt,
    KeepUnselectedOpt,
    LatestOpt,
    LockOpt,
    LogFormatOpt,
    MaxDeleteOpt,
    MetricsFileOpt,
    NoShardsOpt,
    PlatformOpt,
    QuietOpt,
    RepairOpt,
    RetriesOpt,
    S3Endpoint,
    S3NoLockOpt,
    S3PathStyle,
    ShardGraceOpt,
    SolveOpt,
    SubdirOpt,
    TargetOpt,
    UrlOpt,
    VirtualPackageOpt,
    WithDepsOpt,
    WriteBz2Opt,
    ZstdLevelOpt,
    job_of,
    mirror_tables,
)
from condasync.models import MirrorReport
from condasync.serve.commands import apikey_app
from condasync.serve.commands import serve as serve_command
from condasync.storage import LocalStorage, S3Options, open_storage

app = typer.Typer(
    help="Mirror a conda channel as a verified, always-consistent static tree.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: 16]": plain text, never rich markup
)


def _emit_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def _run_one_json(job: MirrorJob, quiet: bool) -> MirrorReport:
    """`--log-format json`: every line on stderr is one JSON object, the summary included."""
    from condasync.engine.sync import run_mirror

    report = run_mirror(job, JsonListener(quiet=quiet))
    if report.error:
        json_line("error", "error", message=report.error, exit_code=report.exit_code)
    if report.subdirs and (not quiet or report.exit_code):
        print_json_summary(report)
    return report


def _fail(message: str, code: int, log_format: str) -> typer.Exit:
    if log_format == "json":
        json_line("error", "error", message=message, exit_code=code)
    else:
        print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _run_one(job: MirrorJob, as_json: bool, quiet: bool, log_format: str = "plain") -> MirrorReport:
    if log_format == "json":
        return _run_one_json(job, quiet or as_json)
    from condasync.engine.sync import run_mirror  # not imported by status, verify, serve

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
    url: UrlOpt = None,
    target: TargetOpt = None,
    subdir: SubdirOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    latest: LatestOpt = None,
    exclude_newer: ExcludeNewerOpt = None,
    jobs: JobsOpt = None,
    dry_run: DryRunOpt = False,
    keep_removed: KeepRemovedOpt = False,
    as_json: AsJsonOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    write_bz2: WriteBz2Opt = False,
    retries: RetriesOpt = None,
    repair: RepairOpt = False,
    zstd_level: ZstdLevelOpt = None,
    max_delete: MaxDeleteOpt = None,
    lock: LockOpt = None,
    solve: SolveOpt = None,
    platform: PlatformOpt = None,
    virtual_package: VirtualPackageOpt = None,
    with_deps: WithDepsOpt = False,
    keep_unselected: KeepUnselectedOpt = None,
    s3_endpoint: S3Endpoint = None,
    s3_force_path_style: S3PathStyle = False,
    s3_no_lock: S3NoLockOpt = False,
    metrics_file: MetricsFileOpt = None,
    log_format: LogFormatOpt = "plain",
    no_shards: NoShardsOpt = False,
    shard_grace: ShardGraceOpt = None,
) -> None:
    """Bring DIR (a folder, or s3://bucket/prefix) up to date with the channel at URL."""
    if log_format not in ("plain", "json"):
        raise _fail("--log-format must be plain or json", EXIT_USAGE, "plain")
    given = Given(
        subdir, include, exclude, latest, exclude_newer, jobs, dry_run, keep_removed, write_bz2,
        retries, repair, zstd_level, max_delete,
        S3Options(s3_endpoint, s3_force_path_style or None, s3_no_lock), no_shards, shard_grace,
        lock, solve, platform, virtual_package, with_deps, keep_unselected,
    )  # fmt: skip
    try:
        tables = mirror_tables(url, target, config)
        if config is not None:
            metrics_file = metrics_file or metrics_file_of(config)
        jobs_list = [job_of(table, given) for table in tables]
    except CondasyncError as exc:
        raise _fail(str(exc), exc.exit_code, log_format) from None
    reports = [_run_one(job, as_json, quiet, log_format) for job in jobs_list]
    if metrics_file is not None:
        _write_metrics_file(metrics_file, reports, log_format)
    if as_json:
        doc = (
            reports[0].to_dict() if config is None else {"mirrors": [r.to_dict() for r in reports]}
        )
        if log_format == "json":
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")  # one object, one line
        else:
            _emit_json(doc)
    codes = [r.exit_code for r in reports]
    raise typer.Exit(EXIT_INTERRUPTED if EXIT_INTERRUPTED in codes else max(codes))


def _write_metrics_file(path: str, reports: list[MirrorReport], log_format: str) -> None:
    """The textfile for node_exporter; a failure to write it is reported, not fatal."""
    from condasync.engine.textfile import carry_over, render, series_of, write_atomic

    mirrors = [series_of(r) for r in reports]
    try:
        with open(path, encoding="utf-8") as fh:
            carry_over(fh.read(), mirrors)
    except OSError:
        pass  # no previous file: nothing to carry over
    try:
        write_atomic(path, render(mirrors))
    except OSError as exc:
        message = f"cannot write the metrics file {path}: {exc.strerror}"
        if log_format == "json":
            json_line("error", "error", message=message)
        else:
            print(f"error: {message}", file=sys.stderr)


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
        for warning in doc["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        verdict = "ok" if report.ok else f"{len(doc['problems'])} problem(s)"
        print(f"{target}: {doc['files_checked']} files checked, {verdict}", file=sys.stderr)
        if doc["problems"]:
            print(f"to repair: {_repair_command(target)}", file=sys.stderr)
    raise typer.Exit(0 if report.ok else EXIT_VERIFY)


def _repair_command(target: str) -> str:
    """The mirror command that re-fetches what verify found missing or corrupt, with the
    upstream URL our state remembers (tokens masked)."""
    url = "URL"
    try:
        storage = open_storage(target, create=False)
        for subdir in mirrored_subdirs(storage):
            meta = load_meta(storage, subdir)
            if meta is not None and meta.source.count("/") >= 3:
                url = mask_url(meta.source.rsplit("/", 2)[0])
                break
    except (CondasyncError, OSError):
        pass
    return f"condasync mirror {url} {target} --repair"


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
        if doc["ignored"]:
            shown = ", ".join(doc["ignored"][:5]) + (", ..." if len(doc["ignored"]) > 5 else "")
            print(
                f"warning: {len(doc['ignored'])} package file(s) at the top of {target} were"
                f" ignored ({shown}): packages belong in a subdir folder, {target}/noarch/ or"
                f" {target}/<platform>/ such as linux-64/, as their info/index.json says",
                file=sys.stderr,
            )
        for name, sub in doc["subdirs"].items():
            for filename, reason in sub.get("skipped", {}).items():
                print(f"warning: skipped {name}/{_printable(filename)}: {reason}", file=sys.stderr)
            print(f"{name}: {sub['packages']} packages indexed", file=sys.stderr)


def _printable(name: str) -> str:
    """A filename as is, unless it holds control characters (then escaped, never raw)."""
    return name if name.isprintable() else repr(name)[1:-1]


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    stamp = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({_age(now - ts)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@app.command()
def status(
    target: Annotated[
        str, typer.Argument(metavar="DIR", help="Mirror tree (or s3://bucket/prefix).")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON report on stdout.")
    ] = False,
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age",
            metavar="DURATION",
            help="Exit 4 when any subdir's last full success is older (90s, 30m, 2h, 1d).",
        ),
    ] = None,
    s3_endpoint: S3Endpoint = None,
    s3_force_path_style: S3PathStyle = False,
) -> None:
    """How old the mirror in DIR is, per subdir, and whether a run holds its lock now.

    Reads only the state, never the packages or the indexes' records."""
    import time

    from condasync.engine.status import mirror_status, parse_duration

    try:
        limit = parse_duration(max_age) if max_age is not None else None
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE, "plain") from None
    if not target.startswith("s3://") and not Path(target).is_dir():
        raise _fail(f"{target} is not a directory", EXIT_USAGE, "plain")
    try:
        storage = open_storage(
            target, create=False, s3=S3Options(s3_endpoint, s3_force_path_style or None)
        )
        report = mirror_status(storage, target)
    except CondasyncError as exc:
        raise _fail(str(exc), exc.exit_code, "plain") from None
    if not report.subdirs:
        raise _fail(f"{target} holds no mirror state (never mirrored?)", EXIT_USAGE, "plain")
    now = time.time()
    stale = report.stale(limit, now) if limit is not None else []
    if as_json:
        _emit_json(report.to_dict() | {"max_age_seconds": limit, "stale": stale})
    else:
        _print_status(report, now)
    for subdir in stale:
        last = next(s.last_success for s in report.subdirs if s.subdir == subdir)
        print(f"stale: {subdir}: last full success {_when(last, now)}; --max-age is {max_age}",
              file=sys.stderr)  # fmt: skip
    raise typer.Exit(EXIT_VERIFY if stale else 0)


def _print_status(report: Any, now: float) -> None:
    lock = report.lock
    if lock is None:
        print(f"{report.target}: no run holds the lock")
    else:
        print(f"{report.target}: locked by a run (pid {lock.pid or '?'} on {lock.host or '?'})")
    for s in report.subdirs:
        state = "INCOMPLETE" if s.incomplete else "complete"
        print(
            f"{s.subdir}: {state}; upstream {s.upstream or '?'}; last run {_when(s.last_run, now)};"
            f" last full success {_when(s.last_success, now)};"
            f" {s.packages if s.packages is not None else '?'} packages,"
            f" {s.bytes if s.bytes is not None else '?'} bytes"
        )


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
