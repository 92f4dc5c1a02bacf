"""`mirror --metrics-file`: the node_exporter textfile-collector format, per channel URL and
subdir, written atomically (a temp file beside it, then a rename) at the end of every run."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

from condasync.models import MirrorReport, SubdirRun

PREFIX = "condasync_mirror_"
# name, help, the SubdirRun field it shows
GAUGES = (
    ("last_run_timestamp_seconds", "Unix time the last run of this subdir ended", "last_run"),
    ("last_success_timestamp_seconds", "Unix time of the last fully successful run (0: never)",
     "last_success"),
    ("exit_code", "Exit code of the last run, for this subdir", "exit_code"),
    ("incomplete", "1 when the last run left packages out or did not sync", "incomplete"),
    ("packages", "Packages in the published index (as of the last success)", "packages"),
    ("bytes", "Bytes of the packages in the published index (as of the last success)", "bytes"),
    ("added", "Packages the last run added", "added"),
    ("replaced", "Packages the last run replaced", "replaced"),
    ("deleted", "Packages the last run deleted", "deleted"),
    ("failed", "Packages that failed in the last run", "failed"),
    ("rejected", "Index keys the last run rejected as unsafe", "rejected"),
    ("downloaded_bytes", "Bytes the last run downloaded", "downloaded_bytes"),
    ("duration_seconds", "How long the last run took", "duration_s"),
)  # fmt: skip


@dataclass
class Series:
    """One mirror's subdirs: its channel URL (masked), DIR, and the record after the run."""

    url: str
    target: str
    runs: dict[str, SubdirRun] = field(default_factory=dict)
    exit_code: int = 0
    finished: float = 0.0


def series_of(report: MirrorReport) -> Series:
    return Series(report.url, report.target, dict(report.runs), report.exit_code, time.time())


def carry_over(previous: str, mirrors: list[Series]) -> None:
    """A mirror whose record could not be read (its store failing, say) keeps the last
    success values of the previous file, with this run's time and exit code."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {(m.url, m.target): m for m in mirrors if not m.runs and m.exit_code}
    if not wanted:
        return
    try:
        families = list(text_string_to_metric_families(previous))
    except ValueError:
        return
    attrs = {PREFIX + name: attr for name, _help, attr in GAUGES}
    for family in families:
        attr = attrs.get(family.name)
        if attr not in ("last_success", "packages", "bytes"):
            continue
        for sample in family.samples:
            mirror = wanted.get((sample.labels.get("url", ""), sample.labels.get("dir", "")))
            subdir = sample.labels.get("subdir", "")
            if mirror is None or not subdir:
                continue
            run = mirror.runs.setdefault(subdir, SubdirRun(upstream=mirror.url))
            run.last_run, run.exit_code, run.incomplete = mirror.finished, mirror.exit_code, True
            if attr == "last_success":
                run.last_success = sample.value or None
            else:
                setattr(run, attr, int(sample.value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int | bool | None) -> str:
    if value is None:
        return "0"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(round(value, 3))
    return str(value)


def render(mirrors: list[Series]) -> str:
    """PURE: the text, every mirror of a --config run in one file."""
    lines: list[str] = []
    for name, help_text, attr in GAUGES:
        metric = PREFIX + name
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} gauge")
        for mirror in mirrors:
            base = f'url="{_escape(mirror.url)}",dir="{_escape(mirror.target)}"'
            if not mirror.runs and attr in ("last_run", "exit_code"):
                # failed before any subdir was known: still say so
                value = mirror.exit_code if attr == "exit_code" else mirror.finished
                lines.append(f'{metric}{{{base},subdir=""}} {_number(value)}')
            for subdir, run in sorted(mirror.runs.items()):
                value = getattr(run, attr)
                lines.append(f'{metric}{{{base},subdir="{_escape(subdir)}"}} {_number(value)}')
    return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> None:
    """Temp file in the same folder, fsync, rename: node_exporter never reads half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
