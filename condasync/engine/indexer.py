"""Build `<subdir>/repodata.json` (+ `.zst`) from the package files in a local tree (`index`).

Also owns reading package files: streaming hashes and `info/index.json` (shared with verify).
"""

from __future__ import annotations

import bz2
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from conda_package_streaming.package_streaming import stream_conda_info

from condasync.channel.repodata import (
    check_filename,
    check_record,
    compress_zst,
    decompress_zst,
    dump_repodata,
    is_package_name,
    is_subdir,
    parse_repodata,
    split_filename,
)
from condasync.engine.shardsync import publish_index_shards
from condasync.errors import UsageError
from condasync.models import Event, Record, Repodata
from condasync.storage import STATE_DIR, LocalStorage
from condasync.storage import hash_file as hash_file  # re-exported for callers of this module

CHUNK = 1024 * 1024
WORKERS = 4
STATE_GENERATION = 1  # bump when the record layout changes: forces every file to be re-read
MAX_INDEX_JSON = 16 * 1024 * 1024  # a real info/index.json is a few kB

T = TypeVar("T")
R = TypeVar("R")


# --- reading package files ------------------------------------------------------------------


class PackageError(Exception):
    """A package file cannot be read as a conda package; the message says why."""


def read_index_json(path: Path) -> dict[str, Any]:
    """Return a package's `info/index.json`. Raises PackageError for anything unreadable."""
    try:
        with open(path, "rb") as fh:
            for tar, member in stream_conda_info(str(path), fh):
                if member.name != "info/index.json":
                    continue
                if not member.isfile() or member.size > MAX_INDEX_JSON:
                    raise PackageError("info/index.json is not a plain file of sane size")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise PackageError("info/index.json cannot be extracted")
                doc = orjson.loads(extracted.read())
                if not isinstance(doc, dict):
                    raise PackageError("info/index.json is not a JSON object")
                return doc
    except PackageError:
        raise
    except Exception as exc:  # tarfile, zipfile, bz2, zstd and json each raise their own types
        raise PackageError(f"unreadable archive: {type(exc).__name__}: {exc}") from None
    raise PackageError("archive has no info/index.json")


def map_in_order(
    fn: Callable[[T], R], items: Iterable[T], workers: int = WORKERS
) -> Iterator[tuple[T, R]]:
    """Yield (item, fn(item)) in input order, with at most a few tasks per worker in flight.

    hashlib and zlib/bz2/zstd release the GIL, so threads overlap I/O and hashing; the window
    keeps memory flat when a subdir lists hundreds of thousands of files.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    window = workers * 4
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="condasync") as pool:
        pending: deque[tuple[T, Any]] = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def scan_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Regular files in folder as {name: (size, mtime_ns)}, ignoring dot-files and folders."""
    found: dict[str, tuple[int, int]] = {}
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished or dangling: it is simply not there
            found[entry.name] = (st.st_size, st.st_mtime_ns)
    return found


# --- building an index ----------------------------------------------------------------------


IndexEvent = Event  # the same progress event as mirror
IndexListener = Callable[[IndexEvent], None]


@dataclass
class SubdirIndex:
    """The outcome of indexing one subdir."""

    packages: int = 0
    added: list[str] = field(default_factory=list)  # in the new index, not in the old one
    removed: list[str] = field(default_factory=list)  # in the old index, not in the new one
    reused: int = 0  # records taken from state (file unchanged)
    read: int = 0  # files opened and hashed this run
    skipped: dict[str, str] = field(default_factory=dict)
    written: bool = False  # False when the published bytes were already identical

    def to_dict(self) -> dict[str, Any]:
        return {
            "packages": self.packages,
            "added": self.added,
            "removed": self.removed,
            "reused": self.reused,
            "read": self.read,
            "skipped": self.skipped,
            "written": self.written,
        }


@dataclass
class IndexReport:
    dir: str
    subdirs: dict[str, SubdirIndex] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # package files at DIR's top level

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "subdirs": {k: v.to_dict() for k, v in self.subdirs.items()},
            "ignored": self.ignored,
        }


@dataclass(frozen=True)
class _Seen:
    """One file as indexed: what it looked like on disk and the record built from it."""

    size: int
    mtime_ns: int
    record: Record


def index_tree(
    root: Path,
    subdirs: list[str] | None = None,
    on_event: IndexListener | None = None,
    workers: int = WORKERS,
) -> IndexReport:
    """Index every subdir folder under root (or only `subdirs`); `noarch` is always written.

    Holds the same lock as `mirror`. Unchanged files (same size and mtime_ns as recorded in
    `.condasync/index-<subdir>.json`) are not re-read; unreadable files are skipped with a reason.
    """
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    if subdirs is None:
        chosen = _find_subdirs(root)
    else:
        bad = [s for s in subdirs if not is_subdir(s)]
        if bad:
            raise UsageError(f"invalid subdir name(s): {', '.join(map(repr, bad))}")
        chosen = sorted(set(subdirs))
    if "noarch" not in chosen:
        chosen = ["noarch", *chosen]  # clients reject a channel without noarch/repodata.json
    listen: IndexListener = on_event or (lambda _e: None)
    storage = LocalStorage(root)
    report = IndexReport(dir=str(root))
    report.ignored = sorted(n for n in scan_files(root) if is_package_name(n))
    with storage.lock():
        for subdir in chosen:
            report.subdirs[subdir] = _index_subdir(storage, subdir, listen, workers)
    return report


def _find_subdirs(root: Path) -> list[str]:
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if is_subdir(e.name) and e.is_dir())


def _index_subdir(
    storage: LocalStorage, subdir: str, listen: IndexListener, workers: int
) -> SubdirIndex:
    folder = storage.path(subdir)
    folder.mkdir(exist_ok=True)
    result = SubdirIndex()
    previous = _load_state(storage, subdir)
    current: dict[str, _Seen] = {}
    to_read: list[str] = []
    for name, (size, mtime_ns) in sorted(scan_files(folder).items()):
        if not is_package_name(name):
            continue
        reason = check_filename(name)
        if reason is not None:
            result.skipped[name] = reason
            listen(IndexEvent("skipped", subdir, name, message=reason))
            continue
        seen = previous.get(name)
        if seen is not None and seen.size == size and seen.mtime_ns == mtime_ns:
            current[name] = seen
            result.reused += 1
        else:
            to_read.append(name)

    def read(name: str) -> _Seen | str:
        return _read_package(folder / name, subdir)

    for name, outcome in map_in_order(read, to_read, workers):
        if isinstance(outcome, str):
            result.skipped[name] = outcome
            listen(IndexEvent("skipped", subdir, name, message=outcome))
        else:
            current[name] = outcome
            result.read += 1
            listen(IndexEvent("read", subdir, name))

    records = {name: seen.record for name, seen in sorted(current.items())}
    old_names = _published_names(storage, subdir)
    result.packages = len(records)
    result.added = sorted(set(records) - old_names)
    result.removed = sorted(old_names - set(records))
    result.written = _publish(storage, subdir, records)
    listen(IndexEvent("published" if result.written else "uptodate", subdir, count=len(records)))
    _save_state(storage, subdir, current)  # state last, as in mirror: a crash only costs re-reads
    return result


def _read_package(path: Path, subdir: str) -> _Seen | str:
    """Build one record from a package file, or return why the file is skipped."""
    try:
        st = path.stat()
        size, digests = hash_file(path, ("md5", "sha256"))
        index = read_index_json(path)
        after = path.stat()
    except PackageError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    if (st.st_size, st.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or size != st.st_size:
        return "file changed while it was being read"
    reason = _check_index(index, path.name, subdir)
    if reason is not None:
        return reason
    # The record is index.json as the package states it (arch and platform included: conda
    # and rattler still model them, and dropping fields loses information) plus the hashes.
    record: Record = dict(index)
    record.setdefault("subdir", subdir)
    record["md5"] = digests["md5"]
    record["sha256"] = digests["sha256"]
    record["size"] = size
    reason = check_record(record)
    if reason is not None:
        return reason
    return _Seen(st.st_size, st.st_mtime_ns, record)


def _check_index(index: dict[str, Any], filename: str, subdir: str) -> str | None:
    for key in ("name", "version", "build"):
        if not isinstance(index.get(key), str):
            return f"info/index.json has no {key}"
    declared = index.get("subdir")
    if declared is not None and declared != subdir:
        return f"info/index.json says subdir {declared!r}, but the file is in {subdir!r}"
    parts = split_filename(filename)
    if parts is None or parts[:3] != (index["name"], index["version"], index["build"]):
        return "filename does not match name-version-build in info/index.json"
    return None


def _published_names(storage: LocalStorage, subdir: str) -> set[str]:
    raw = storage.read(f"{subdir}/repodata.json")
    if raw is None:
        return set()
    try:
        return set(parse_repodata(raw, subdir).records)
    except ValueError:
        return set()  # a broken index is replaced wholesale


def _publish(storage: LocalStorage, subdir: str, records: dict[str, Record]) -> bool:
    """Publish `.zst` (and an existing `.bz2`) before `.json`, each only if its content differs."""
    data = dump_repodata(Repodata(info={"subdir": subdir}, records=records, removed=[], version=1))
    files: list[tuple[str, bytes]] = []
    zst_path = f"{subdir}/repodata.json.zst"
    if _decompressed(storage.read(zst_path), decompress_zst) != data:
        files.append((zst_path, compress_zst(data)))
    bz2_path = f"{subdir}/repodata.json.bz2"
    old_bz2 = storage.read(bz2_path)
    if old_bz2 is not None and _decompressed(old_bz2, bz2.decompress) != data:
        # a stale .bz2 would contradict the snapshot; only refresh one that already exists
        files.append((bz2_path, bz2.compress(data, 9)))
    files.append((f"{subdir}/repodata.json", data))
    # CEP-16 shards of exactly these records go up first (incrementally), then the index
    written = publish_index_shards(storage, subdir, records)
    return bool(storage.publish(files)) or written > 0


def _decompressed(blob: bytes | None, decompress: Callable[[bytes], bytes]) -> bytes | None:
    if blob is None:
        return None
    try:
        return decompress(blob)
    except (ValueError, OSError, EOFError):
        return None


def _state_path(subdir: str) -> str:
    return f"{STATE_DIR}/index-{subdir}.json"


def _load_state(storage: LocalStorage, subdir: str) -> dict[str, _Seen]:
    raw = storage.read(_state_path(subdir))
    if raw is None:
        return {}
    try:
        doc = orjson.loads(raw)
        if doc.get("generation") != STATE_GENERATION:
            return {}
        return {
            name: _Seen(int(v["size"]), int(v["mtime_ns"]), dict(v["record"]))
            for name, v in doc["files"].items()
            if check_filename(name) is None
        }
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return {}  # unreadable state only costs a full re-read


def _save_state(storage: LocalStorage, subdir: str, current: dict[str, _Seen]) -> None:
    files = {
        name: {"size": s.size, "mtime_ns": s.mtime_ns, "record": s.record}
        for name, s in current.items()
    }
    doc = {"generation": STATE_GENERATION, "files": files}
    storage.write_if_changed(_state_path(subdir), orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
