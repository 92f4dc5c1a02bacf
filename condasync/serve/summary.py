"""Per-channel package summaries for the pages: a small SQLite file per channel (in
DIR/.condasync/pages/) rebuilt from a subdir's repodata.json when that index changes, so a
page reads a few rows and never parses a whole index per request."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson
from rattler import Version

from condasync.channel.repodata import gc_paused
from condasync.serve.packages import _newer, _version
from condasync.serve.store import LocalChannels, S3Channels

RECHECK = 2.0  # seconds the index validators of a channel are trusted before a new look
PAGE_SIZE = 200  # package names per channel page
WAIT_BELOW = 32 << 20  # changed index bytes a page waits for (about 50k records, ~2 s)
FORMAT = "1"  # bump when the schema or what is extracted changes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS subdirs(subdir TEXT PRIMARY KEY, validator TEXT, records INTEGER);
CREATE TABLE IF NOT EXISTS builds(subdir TEXT, name TEXT, version TEXT, build TEXT, fn TEXT,
    size INTEGER, timestamp INTEGER, sha256 TEXT, license TEXT);
CREATE INDEX IF NOT EXISTS builds_name ON builds(name, subdir);
CREATE TABLE IF NOT EXISTS subdir_names(subdir TEXT, name TEXT, latest TEXT, license TEXT,
    summary TEXT, builds INTEGER, PRIMARY KEY(subdir, name));
CREATE TABLE IF NOT EXISTS names(name TEXT PRIMARY KEY, latest TEXT, license TEXT, summary TEXT,
    subdirs TEXT, builds INTEGER);
"""


@dataclass(frozen=True)
class PackageRow:
    name: str
    latest: str
    license: str
    summary: str
    subdirs: list[str]
    builds: int


@dataclass(frozen=True)
class BuildRow:
    subdir: str
    version: str
    build: str
    fn: str
    size: int
    timestamp: int  # milliseconds, 0 when unknown
    sha256: str
    license: str


class Summaries:
    """The summaries of every channel a replica serves (each replica keeps its own files:
    they are derived data, rebuilt from the indexes in the store)."""

    def __init__(self, folder: Path, store: LocalChannels | S3Channels) -> None:
        self.folder = folder
        self.store = store
        self._locks: dict[str, threading.Lock] = {}
        self._checked: dict[str, float] = {}
        self._guard = threading.Lock()
        self._building: set[str] = set()  # channels rebuilt by a background thread now

    def _path(self, channel: str) -> Path:
        return self.folder / f"{channel}.sqlite"

    @contextlib.contextmanager
    def _connect(self, channel: str) -> Iterator[sqlite3.Connection]:
        self.folder.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path(channel), timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")  # derived data: rebuilt if ever lost
            conn.executescript(_SCHEMA)
            yield conn
        finally:
            conn.close()

    def _lock(self, channel: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(channel, threading.Lock())

    # building ------------------------------------------------------------------------------

    def validators(self, channel: str) -> dict[str, str]:
        """subdir -> the version of its repodata.json in the store (size and mtime)."""
        storage = self.store.storage(channel)
        out = {}
        for subdir in self.store.subdirs(channel):
            st = storage.stat(f"{subdir}/repodata.json")
            if st is not None:
                out[subdir] = f"{FORMAT}:{st[0]}:{st[1]}"
        return out

    def stale(self, channel: str) -> dict[str, str] | None:
        """The validators to build from when the summary is behind the indexes, else None.
        Looked at most every RECHECK seconds per channel."""
        now = time.monotonic()
        if now - self._checked.get(channel, -RECHECK) < RECHECK:
            return None
        self._checked[channel] = now
        current = self.validators(channel)
        with self._connect(channel) as conn:
            built = dict(conn.execute("SELECT subdir, validator FROM subdirs").fetchall())
        return None if built == current else current

    def has(self, channel: str) -> bool:
        if not self._path(channel).is_file():
            return False
        with self._connect(channel) as conn:
            return conn.execute("SELECT 1 FROM subdirs LIMIT 1").fetchone() is not None

    def refresh(
        self, channel: str, force: bool = False, background_above: int | None = None
    ) -> bool:
        """Rebuild the subdirs whose index changed (one builder per channel at a time);
        True when something was rebuilt. With background_above, a page request: when more
        index bytes than that changed and an older summary exists, that one is shown while a
        background thread rebuilds it."""
        if force:
            self._checked.pop(channel, None)
        if background_above is not None and channel in self._building:
            return False
        with self._lock(channel):
            current = self.stale(channel)
            if current is None:
                return False
            if background_above is not None and self.has(channel):
                with self._connect(channel) as conn:
                    built = dict(conn.execute("SELECT subdir, validator FROM subdirs").fetchall())
                changed = sum(int(v.split(":")[1]) for k, v in current.items() if built.get(k) != v)
                if changed > background_above:
                    self._in_background(channel, current)
                    return False
            self._build(channel, current)
            return True

    def _in_background(self, channel: str, current: dict[str, str]) -> None:
        if channel in self._building:
            return
        self._building.add(channel)

        def run() -> None:
            try:
                with self._lock(channel):
                    self._build(channel, current)
            finally:
                self._building.discard(channel)

        threading.Thread(target=run, name=f"summary-{channel}", daemon=True).start()

    def _build(self, channel: str, current: dict[str, str]) -> None:
        with self._connect(channel) as conn:
            built = dict(conn.execute("SELECT subdir, validator FROM subdirs").fetchall())
        channeldata = _channeldata(self.store.read(channel, "channeldata.json"))
        for subdir in sorted(set(built) - set(current)):
            with self._connect(channel) as conn, conn:
                for table in ("builds", "subdir_names", "subdirs"):
                    conn.execute(f"DELETE FROM {table} WHERE subdir = ?", (subdir,))
        for subdir, validator in sorted(current.items()):
            if built.get(subdir) == validator:
                continue
            raw = self.store.read(channel, f"{subdir}/repodata.json")
            builds, names = _extract(raw or b"{}", subdir, channeldata)
            with self._connect(channel) as conn, conn:
                conn.execute("DELETE FROM builds WHERE subdir = ?", (subdir,))
                conn.execute("DELETE FROM subdir_names WHERE subdir = ?", (subdir,))
                conn.executemany("INSERT INTO builds VALUES (?,?,?,?,?,?,?,?,?)", builds)
                conn.executemany("INSERT INTO subdir_names VALUES (?,?,?,?,?,?)", names)
                conn.execute(
                    "INSERT OR REPLACE INTO subdirs VALUES (?,?,?)",
                    (subdir, validator, len(builds)),
                )
            del builds, names
        with self._connect(channel) as conn, conn:
            conn.execute("DELETE FROM names")
            conn.executemany(
                "INSERT INTO names VALUES (?,?,?,?,?,?)",
                _merge(conn.execute("SELECT * FROM subdir_names ORDER BY name, subdir")),
            )

    def drop(self, channel: str) -> None:
        with contextlib.suppress(OSError):
            for suffix in ("", "-wal", "-shm"):
                os.unlink(f"{self._path(channel)}{suffix}")

    # reading -------------------------------------------------------------------------------

    def packages(
        self, channel: str, query: str = "", offset: int = 0, limit: int = PAGE_SIZE
    ) -> tuple[list[PackageRow], int]:
        """A page of package names (containing query) and how many there are in all."""
        where, args = (
            ("WHERE name LIKE ? ESCAPE '\\'", [f"%{_like(query)}%"]) if query else ("", [])
        )
        with self._connect(channel) as conn:
            total = conn.execute(f"SELECT count(*) FROM names {where}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT name, latest, license, summary, subdirs, builds FROM names {where} "
                "ORDER BY name LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [PackageRow(r[0], r[1], r[2], r[3], r[4].split(","), r[5]) for r in rows], total

    def package(self, channel: str, name: str) -> tuple[PackageRow | None, list[BuildRow]]:
        with self._connect(channel) as conn:
            row = conn.execute(
                "SELECT name, latest, license, summary, subdirs, builds FROM names WHERE name = ?",
                (name,),
            ).fetchone()
            builds = conn.execute(
                "SELECT subdir, version, build, fn, size, timestamp, sha256, license FROM builds "
                "WHERE name = ?",
                (name,),
            ).fetchall()
        if row is None:
            return None, []
        found = [BuildRow(*b) for b in builds]
        found.sort(key=lambda b: (b.subdir, _sort_key(b.version), b.build), reverse=True)
        found.sort(key=lambda b: b.subdir)
        return PackageRow(row[0], row[1], row[2], row[3], row[4].split(","), row[5]), found

    def counts(self, channel: str) -> tuple[int, int]:
        """(package names, records) of the summary."""
        with self._connect(channel) as conn:
            names = conn.execute("SELECT count(*) FROM names").fetchone()[0]
            records = conn.execute("SELECT coalesce(sum(records), 0) FROM subdirs").fetchone()[0]
        return int(names), int(records)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _sort_key(version: str) -> tuple[int, Any]:
    parsed = _version(version)
    return (1, parsed) if parsed is not None else (0, version)


def _channeldata(raw: bytes | None) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    packages = doc.get("packages") if isinstance(doc, dict) else None
    return packages if isinstance(packages, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class _Rec(msgspec.Struct, gc=False):
    """The fields a page shows of a record (the rest of the record is skipped unparsed)."""

    name: str
    version: str
    build: str = ""
    size: int = 0
    timestamp: int = 0
    sha256: str | None = None
    license: str | None = None
    summary: str | None = None


class _Doc(msgspec.Struct, gc=False):
    packages: dict[str, _Rec] = msgspec.field(default_factory=dict)
    packages_conda: dict[str, _Rec] = msgspec.field(default_factory=dict, name="packages.conda")


_decode_doc = msgspec.json.Decoder(_Doc)


Row = tuple[str, str, str, str, int, int, str, str, str]  # fn name version build size ...


def _records(raw: bytes) -> Iterator[Row]:
    """(fn, name, version, build, size, timestamp, sha256, license, summary) per record:
    from typed views when every record fits (fast, small), else from the plain JSON objects,
    where a record without a string name and version is skipped (untrusted input)."""
    try:
        with gc_paused():
            typed = _decode_doc.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        typed = None
    if typed is not None:
        for section in (typed.packages, typed.packages_conda):
            for fn, r in section.items():
                yield (fn, r.name, r.version, r.build, r.size, r.timestamp, r.sha256 or "",
                       r.license or "", r.summary or "")  # fmt: skip
        return
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if not isinstance(doc, dict):
        return
    for key in ("packages", "packages.conda"):
        plain = doc.get(key)
        if not isinstance(plain, dict):
            continue
        for fn, rec in plain.items():
            if not isinstance(rec, dict):
                continue
            name, version = rec.get("name"), rec.get("version")
            if not isinstance(name, str) or not isinstance(version, str):
                continue
            size, stamp = rec.get("size"), rec.get("timestamp")
            yield (
                fn, name, version, _text(rec.get("build")),
                size if isinstance(size, int) else 0, stamp if isinstance(stamp, int) else 0,
                _text(rec.get("sha256")), _text(rec.get("license")), _text(rec.get("summary")),
            )  # fmt: skip


def _extract(
    raw: bytes, subdir: str, channeldata: dict[str, Any]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows of builds, and per name (latest version, license, summary, count), of one index."""
    builds: list[tuple[Any, ...]] = []
    best: dict[str, list[Any]] = {}  # name -> [version text, parsed, license, summary, count]
    parsed_cache: dict[str, Version | None] = {}
    append = builds.append
    for fn, name, version, build, size, stamp, sha256, license_, summary in _records(raw):
        append((subdir, name, version, build, fn, size, stamp, sha256, license_))
        entry = best.get(name)
        if entry is None:
            if version not in parsed_cache:
                parsed_cache[version] = _version(version)
            best[name] = [version, parsed_cache[version], license_, summary, 1]
            continue
        entry[4] += 1
        if version != entry[0]:
            if version not in parsed_cache:
                parsed_cache[version] = _version(version)
            parsed = parsed_cache[version]
            if _newer(parsed, version, (entry[1], entry[0])):
                entry[0], entry[1], entry[2] = version, parsed, license_ or entry[2]
    names = []
    for name, (version, _parsed, license_, summary, count) in best.items():
        info = channeldata.get(name)
        if isinstance(info, dict):
            summary = summary or _text(info.get("summary"))
            license_ = license_ or _text(info.get("license"))
        names.append((subdir, name, version, license_, summary, count))
    return builds, names


def _merge(rows: Any) -> Iterator[tuple[Any, ...]]:
    """names rows from subdir_names rows ordered by name: the latest version across subdirs."""
    current: list[Any] | None = None
    for _subdir, name, latest, license_, summary, count in rows:
        if current is not None and current[0] == name:
            current[4].append(_subdir)
            current[5] += count
            if latest != current[1] and _newer(
                _version(latest), latest, (_version(current[1]), current[1])
            ):
                current[1], current[2] = latest, license_ or current[2]
            current[3] = current[3] or summary
            continue
        if current is not None:
            yield (current[0], current[1], current[2], current[3], ",".join(current[4]), current[5])
        current = [name, latest, license_, summary, [_subdir], count]
    if current is not None:
        yield (current[0], current[1], current[2], current[3], ",".join(current[4]), current[5])
