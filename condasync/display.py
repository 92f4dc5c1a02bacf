"""CLI-side output: rich progress on a TTY, plain lines otherwise, and the summary table."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from condasync.models import Event, MirrorReport

err = Console(stderr=True, highlight=False)


def _safe(text: str) -> str:
    """Keys come from untrusted repodata: show them escaped, never raw control characters."""
    return repr(text)[1:-1]


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
        elif kind == "plan":
            print(f"{where}: {event.count} files to fetch ({event.size} bytes)", file=sys.stderr)
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
    """Progress bars for bytes and files, overall and per subdir."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=False,
        )
        self.total: TaskID | None = None
        self.bytes_tasks: dict[str, TaskID] = {}
        self.files: dict[str, int] = {}

    def __enter__(self) -> RichListener:
        self.progress.start()
        self.total = self.progress.add_task("total", total=0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        kind, where = event.kind, event.subdir
        assert self.total is not None
        if kind == "plan":
            task = self.progress.add_task(where, total=event.size)
            self.bytes_tasks[where] = task
            self.files[where] = event.count
            total = self.progress.tasks[self.total].total or 0
            self.progress.update(self.total, total=total + event.size)
        elif kind == "bytes":
            self.progress.advance(self.bytes_tasks[where], event.size)
            self.progress.advance(self.total, event.size)
        elif kind == "rejected":
            self.progress.console.print(
                f"[yellow]warning[/]: {where}: skipped key {_safe(event.name)}: {event.message}",
                markup=True,
            )
        elif kind == "failed":
            self.progress.console.print(f"[red]error[/]: {where}/{event.name}: {event.message}")
        elif kind == "uptodate":
            self.progress.console.print(f"{where}: up to date")
        elif kind in ("closure", "closure-warning"):
            self.progress.console.print(_safe(event.message))


def print_summary(report: MirrorReport) -> None:
    table = Table(title=f"condasync mirror {report.url} -> {report.target}")
    for column in (
        "subdir",
        "status",
        "added",
        "replaced",
        "deleted",
        "failed",
        "rejected",
        "packages",
        "bytes",
    ):
        table.add_column(column, justify="left" if column in ("subdir", "status") else "right")
    for s in report.subdirs:
        status = "up to date" if s.unchanged else ("dry run" if report.dry_run else "synced")
        table.add_row(
            s.subdir, status, str(len(s.added)), str(len(s.replaced)), str(len(s.deleted)),
            str(len(s.failed)), str(len(s.rejected)), str(s.packages), str(s.bytes),
        )  # fmt: skip
    err.print(table)


def print_plain_summary(report: MirrorReport) -> None:
    data: dict[str, Any] = report.to_dict()
    if report.unchanged:
        print(f"{report.url}: up to date", file=sys.stderr)
        return
    print(
        f"{report.url}: added {len(data['added'])}, replaced {len(data['replaced'])}, "
        f"deleted {len(data['deleted'])}, failed {len(data['failed'])}, "
        f"rejected {len(data['rejected'])}, {data['bytes']} bytes in {data['seconds']} s"
        + (" (dry run)" if report.dry_run else ""),
        file=sys.stderr,
    )
