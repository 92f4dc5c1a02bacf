"""`condasync status`: how old a mirror is, per subdir, and whether a run holds its lock now.

It reads only the run record, the small per-subdir state and the lock, never a package or a
600k-record index, so it stays fast on the biggest mirrors.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from condasync.channel.urls import mask_url
from condasync.engine.runrecord import load_runs
from condasync.engine.state import load_meta, mirrored_subdirs
from condasync.models import SubdirRun
from condasync.storage import STATE_DIR, LocalStorage, Storage


@dataclass
class LockHolder:
    """A run holding the target's lock now (pid and host, when it said)."""

    pid: int | None
    host: str | None


@dataclass
class SubdirStatus:
    subdir: str
    upstream: str
    last_run: float | None
    last_success: float | None
    packages: int | None
    bytes: int | None
    incomplete: bool
    exit_code: int | None


@dataclass
class MirrorStatus:
    target: str
    subdirs: list[SubdirStatus] = field(default_factory=list)
    lock: LockHolder | None = None

    def stale(self, max_age: float, now: float) -> list[str]:
        """Subdirs whose last full success is older than max_age seconds (or never was)."""
        return [
            s.subdir
            for s in self.subdirs
            if s.last_success is None or now - s.last_success > max_age
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": self.target,
            "locked": self.lock is not None,
            "lock": asdict(self.lock) if self.lock else None,
            "subdirs": {s.subdir: asdict(s) for s in self.subdirs},
        }


def _local_lock(storage: LocalStorage) -> LockHolder | None:
    """Who holds DIR/.condasync/lock: from /proc/locks on Linux (nothing is taken), else by a
    non-blocking flock attempt, released at once."""
    path = storage.path(f"{STATE_DIR}/lock")
    try:
        st = os.stat(path)
    except OSError:
        return None
    holder_pid = _proc_locks_pid(st)
    written = _written_holder(path)
    if holder_pid is None:
        if os.path.exists("/proc/locks"):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return written or LockHolder(None, None)
        finally:
            os.close(fd)  # drops our shared lock, if we got it
        return None
    if written is not None and written.pid == holder_pid:
        return written
    return LockHolder(holder_pid, socket.gethostname())


def _proc_locks_pid(st: os.stat_result) -> int | None:
    """The pid of a process holding a flock on this file, from /proc/locks."""
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a "->" after the index: waiting)
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted:
            try:
                return int(parts[4])
            except ValueError:
                return None
    return None


def _written_holder(path: object) -> LockHolder | None:
    try:
        with open(str(path)) as fh:
            text = fh.read(200).split()
    except OSError:
        return None
    if len(text) >= 2 and text[0].isdigit():
        return LockHolder(int(text[0]), text[1])
    return None


def _object_lock(storage: Storage) -> LockHolder | None:
    """The S3 lock object names its holder; it counts while it has not expired."""
    raw = storage.read(f"{STATE_DIR}/lock")
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or float(doc.get("expires") or 0) < time.time():
        return None
    pid, host = doc.get("pid"), doc.get("host")
    return LockHolder(
        pid if isinstance(pid, int) else None, host if isinstance(host, str) else None
    )


def _from_record(subdir: str, run: SubdirRun | None, upstream: str, complete: bool) -> SubdirStatus:
    if run is None:
        # mirrored by a version that kept no record: only the state says what it was
        return SubdirStatus(subdir, upstream, None, None, None, None, not complete, None)
    return SubdirStatus(
        subdir=subdir,
        upstream=run.upstream or upstream,
        last_run=run.last_run or None,
        last_success=run.last_success,
        packages=run.packages,
        bytes=run.bytes,
        incomplete=run.incomplete or not complete,
        exit_code=run.exit_code,
    )


def mirror_status(storage: Storage, target: str) -> MirrorStatus:
    runs = load_runs(storage)
    status = MirrorStatus(target)
    for subdir in sorted(set(mirrored_subdirs(storage)) | set(runs)):
        meta = load_meta(storage, subdir)
        upstream = _channel_of(meta.source) if meta is not None else ""
        complete = meta.complete if meta is not None else True
        status.subdirs.append(_from_record(subdir, runs.get(subdir), upstream, complete))
    if isinstance(storage, LocalStorage):
        status.lock = _local_lock(storage)
    else:
        status.lock = _object_lock(storage)
    return status


def _channel_of(source: str) -> str:
    """The channel URL from the index URL saved with the validators (masked)."""
    url = mask_url(source)
    for _ in range(2):  # .../<subdir>/repodata.json(.zst)
        url = url.rsplit("/", 1)[0] if "/" in url else url
    return url


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `2h`, `1d`, `1w` or plain seconds."""
    found = _DURATION.match(text.lower())
    if found is None:
        raise ValueError(f"invalid duration {text!r} (use 90s, 30m, 2h, 1d or 1w)")
    return float(found.group(1)) * _UNIT[found.group(2)]
