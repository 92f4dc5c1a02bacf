"""CLI-side output: rich progress on a TTY, plain lines otherwise, and the summary table."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from condasync.errors import EXIT_INTERRUPTED
from condasync.models import Event, MirrorReport, SubdirReport

err = Console(stderr=True, highlight=False)


def _safe(text: str) -> str:
    """Keys come from untrusted repodata: show them escaped, never raw control characters."""
    return repr(text)[1:-1]


DRY_RUN_SHOWN = 50  # --dry-run file lines per subdir on a terminal


def dry_run_line(event: Event) -> str:
    """--dry-run: a subdir's plan, or one file it would fetch or delete."""
    if event.name:
        return f"{event.subdir}: {event.message} {_safe(event.name)}"
    return f"{event.subdir}: {event.count} files to fetch ({event.size} bytes) (dry run)"


class PlainListener:
    """One line per event on stderr, for cron mail and CI logs."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, event: Event) -> None:
        kind, where = event.kind, event.subdir
        if kind == "rejected":
            print(
                f"warning: {where}: skipped key {_safe(event.name)}: {event.message}",
                file=sys.stderr,
            )
        elif kind == "failed":
            print(f"error: {where}/{event.name}: {event.message}", file=sys.stderr)
        elif kind == "closure-warning":  # lockfile and solve problems (issue 14)
            print(event.message, file=sys.stderr)
        elif self.quiet:
            return
        elif kind == "closure":
            print(event.message, file=sys.stderr)
        elif self.quiet:
            return
        elif kind == "fetching":
            print(f"fetching {event.count} indexes: {event.message}", file=sys.stderr)
        elif kind == "plan":
            print(f"{where}: {event.count} files to fetch ({event.size} bytes)", file=sys.stderr)
        elif kind == "dry-run":
            print(dry_run_line(event), file=sys.stderr)
        elif kind == "file":
            print(f"{where}: fetched {event.name}", file=sys.stderr)
        elif kind == "deleted":
            print(f"{where}: deleted {event.name}", file=sys.stderr)
        elif kind == "published":
            print(f"{where}: published index with {event.count} packages", file=sys.stderr)
        elif kind == "uptodate":
            print(f"{where}: up to date", file=sys.stderr)
        sys.stderr.flush()


class RichListener:
    """Progress on a TTY: which indexes are being fetched, then per subdir a bar of bytes with
    its file count beside it, and an overall bar."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=False,
        )
        self.total: TaskID | None = None
        self.fetching: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}
        self.files: dict[str, list[int]] = {}  # subdir -> [done, planned]
        self.planned = 0  # bytes, all subdirs
        self.dry_lines: dict[str, int] = {}  # --dry-run file lines shown, per subdir

    def __enter__(self) -> RichListener:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _fetched(self) -> None:
        if self.fetching is not None:
            self.progress.remove_task(self.fetching)
            self.fetching = None

    def _files_text(self, subdir: str) -> str:
        done, planned = self.files[subdir]
        return f"{done}/{planned} files"

    def __call__(self, event: Event) -> None:
        kind, where = event.kind, event.subdir
        if kind == "fetching":
            names = event.message.replace(" ", ", ")
            self.fetching = self.progress.add_task(
                f"fetching {event.count} indexes: {names}", total=None, files=""
            )
        elif kind == "plan":
            self._fetched()
            if self.total is None:
                self.total = self.progress.add_task("total", total=0, files="")
            self.files[where] = [0, event.count]
            self.tasks[where] = self.progress.add_task(
                where, total=event.size, files=self._files_text(where)
            )
            self.planned += event.size
            self.progress.update(self.total, total=self.planned)
        elif kind == "bytes" and where in self.tasks and self.total is not None:
            self.progress.advance(self.tasks[where], event.size)
            self.progress.advance(self.total, event.size)
        elif kind in ("file", "failed") and where in self.tasks:
            self.files[where][0] += 1
            self.progress.update(self.tasks[where], files=self._files_text(where))
            if kind == "failed":
                self.progress.console.print(
                    f"[red]error[/]: {where}/{_safe(event.name)}: {escape(event.message)}"
                )
        elif kind == "rejected":
            self.progress.console.print(
                f"[yellow]warning[/]: {where}: skipped key {escape(_safe(event.name))}:"
                f" {escape(event.message)}"
            )
        elif kind == "uptodate":
            self._fetched()
            self.progress.console.print(f"{where}: up to date")
        elif kind == "error":
            self._fetched()
        elif kind in ("closure", "closure-warning"):
            self.progress.console.print(escape(_safe(event.message)))
        elif kind == "dry-run":
            self._fetched()
            self._dry_run(event)

    def _dry_run(self, event: Event) -> None:
        """A terminal shows the first DRY_RUN_SHOWN files of a subdir (Rich prints about
        6,000 lines a second: a 600k-record dry run would scroll for minutes)."""
        if not event.name:  # the subdir's count and bytes
            self.progress.console.print(escape(dry_run_line(event)))
            return
        shown = self.dry_lines[event.subdir] = self.dry_lines.get(event.subdir, 0) + 1
        if shown <= DRY_RUN_SHOWN:
            self.progress.console.print(escape(dry_run_line(event)))
        elif shown == DRY_RUN_SHOWN + 1:
            self.progress.console.print(
                escape(f"{event.subdir}: ... (the whole list: --json, or stderr to a file)")
            )


def subdir_status(report: MirrorReport, s: SubdirReport) -> str:
    """What happened to one subdir, in a word or two (the summary table's status column)."""
    if s.error:
        return "error"
    if report.exit_code == EXIT_INTERRUPTED and not s.unchanged:
        return "interrupted"
    if s.failed:
        return f"failed {len(s.failed)}"
    if s.unchanged:
        return "up to date"
    return "dry run" if report.dry_run else "synced"


def print_summary(report: MirrorReport) -> None:
    table = Table(
        title=f"condasync mirror {escape(report.url)} -> {escape(report.target)}",
        caption=f"{report.seconds:.1f} s"
        + (" (dry run: bytes are what it would download)" if report.dry_run else ""),
    )
    columns = ("subdir", "status", "added", "repaired", "replaced", "deleted", "failed",
               "rejected", "packages", "bytes")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("subdir", "status") else "right")
    totals = [0] * 8
    for s in report.subdirs:
        moved = s.planned_bytes if report.dry_run else s.bytes
        counts = [len(s.added), len(s.repaired), len(s.replaced), len(s.deleted), len(s.failed),
                  len(s.rejected), s.packages, moved]  # fmt: skip
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        table.add_row(s.subdir, subdir_status(report, s), *map(str, counts))
    if len(report.subdirs) > 1:
        table.add_row("total", "", *map(str, totals), end_section=True, style="bold")
    err.print(table)


def print_plain_summary(report: MirrorReport) -> None:
    data: dict[str, Any] = report.to_dict()
    if report.unchanged:
        packages = sum(s.packages for s in report.subdirs)
        print(f"{report.url}: up to date ({packages} packages)", file=sys.stderr)
        return
    repaired = f", repaired {len(data['repaired'])}" if data["repaired"] else ""
    if report.dry_run:
        tail = f"; would download {data['planned_bytes']} bytes (dry run)"
    else:
        tail = f", {data['bytes']} bytes in {data['seconds']} s"
    if report.exit_code == EXIT_INTERRUPTED:
        tail += " (interrupted)"
    print(
        f"{report.url}: added {len(data['added'])}{repaired}, replaced {len(data['replaced'])},"
        f" deleted {len(data['deleted'])}, failed {len(data['failed'])},"
        f" rejected {len(data['rejected'])}{tail}",
        file=sys.stderr,
    )


def json_line(level: str, event: str, **fields: Any) -> None:
    """One JSON object on one stderr line (`--log-format json`), for log shippers."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc = {"time": now, "level": level, "event": event, **fields}
    sys.stderr.write(orjson.dumps(doc).decode() + "\n")
    sys.stderr.flush()


_JSON_LEVELS = {"rejected": "warning", "failed": "error", "error": "error"}


class JsonListener:
    """`--log-format json`: each event PlainListener would print, as one JSON object."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, event: Event) -> None:
        kind = event.kind
        level = _JSON_LEVELS.get(kind, "info")
        if kind == "bytes" or (self.quiet and level == "info"):
            return
        fields: dict[str, Any] = {"subdir": event.subdir} if event.subdir else {}
        if event.name:
            fields["name"] = event.name
        if kind in ("plan", "published", "fetching") or (kind == "dry-run" and not event.name):
            fields["count"] = event.count
        if kind == "plan" or (kind == "dry-run" and not event.name):
            fields["size"] = event.size
        if event.message:
            fields["message"] = event.message
        json_line(level, kind, **fields)


def print_json_summary(report: MirrorReport) -> None:
    data: dict[str, Any] = report.to_dict()
    json_line(
        "error" if report.exit_code else "info",
        "summary",
        url=report.url,
        dir=report.target,
        unchanged=report.unchanged,
        dry_run=report.dry_run,
        added=len(data["added"]),
        replaced=len(data["replaced"]),
        deleted=len(data["deleted"]),
        failed=len(data["failed"]),
        rejected=len(data["rejected"]),
        bytes=data["bytes"],
        seconds=data["seconds"],
        exit_code=report.exit_code,
        error=report.error,
    )
