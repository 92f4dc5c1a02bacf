"""The proxy cache's access record and its size limit (`serve --cache-max-size`): which packages
are cached, their last request (kept in memory and written in batches, never once per request),
hits and misses, and least-recently-used eviction. The record lives in the server's database,
so replicas sharing PostgreSQL and a bucket share it too."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import BigInteger, Float, String, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from condasync.errors import CondasyncError
from condasync.serve.db import Database
from condasync.serve.paths import is_package
from condasync.serve.store import LocalChannels, S3Channels

LOG = logging.getLogger("uvicorn.error")

FLUSH_EVERY = 2.0  # seconds between batched writes of the access record
BUSY_LEASE = 15.0  # seconds a replica's "being streamed" mark protects a file from eviction
RECHECK_EVERY = 10.0  # seconds between size checks when nothing was cached here meanwhile
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """`700K`, `500G`, `20GiB`, `1.5T`, `123` (bytes) -> bytes; K/M/G/T are powers of 1024
    with or without `iB`. ValueError on anything else."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (bytes, or a number with K, M, G or T)")
    number, unit, _suffix = match.groups()
    size = int(float(number) * _UNITS[unit.upper()])
    if size <= 0:
        raise ValueError(f"the size must be positive: {text!r}")
    return size


class _Base(DeclarativeBase):
    pass


class CachedFileRow(_Base):
    """One cached proxy package: its size and last request (Unix seconds)."""

    __tablename__ = "proxy_cache"

    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(300), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    last_access: Mapped[float] = mapped_column(Float, index=True)
    busy_until: Mapped[float] = mapped_column(Float, default=0.0)


class CacheStatsRow(_Base):
    """Requests for packages of a proxy channel answered from the cache (hits) or upstream."""

    __tablename__ = "proxy_cache_stats"

    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    hits: Mapped[int] = mapped_column(BigInteger, default=0)
    misses: Mapped[int] = mapped_column(BigInteger, default=0)
    evictions: Mapped[int] = mapped_column(BigInteger, default=0)


@dataclass(frozen=True)
class CacheUsage:
    """What the pages (and metrics) show of one proxy channel's cache."""

    bytes: int
    files: int
    hits: int
    misses: int
    evictions: int

    @property
    def hit_ratio(self) -> float | None:
        asked = self.hits + self.misses
        return self.hits / asked if asked else None


EvictHook = Callable[[str, str, int], None]


class CacheTracker:
    """Access record, counters and eviction for every proxy channel of one replica."""

    def __init__(
        self,
        db: Database,
        store: LocalChannels | S3Channels,
        max_size: int | None = None,
        flush_every: float = FLUSH_EVERY,
    ) -> None:
        self.db = db
        self.store = store
        self.max_size = max_size
        self.flush_every = flush_every
        _Base.metadata.create_all(db.engine)
        self._lock = threading.Lock()
        self._touched: dict[tuple[str, str], float] = {}
        self._added: dict[tuple[str, str], tuple[int, float]] = {}
        self._hits: Counter[str] = Counter()
        self._misses: Counter[str] = Counter()
        self._streaming: Counter[tuple[str, str]] = Counter()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = 0.0
        self.evictions = 0  # in this process, for metrics
        # Hooks for metrics (serve/metrics.py may append): called as hook(channel, path, size)
        # after an eviction deleted a file.
        self.on_evict: list[EvictHook] = []

    # recording (called on the event loop: memory only) ----------------------------------------

    def hit(self, channel: str, path: str) -> None:
        """A cached package was served."""
        with self._lock:  # the flush thread swaps these dicts
            self._touched[(channel, path)] = time.time()
            self._hits[channel] += 1

    def miss(self, channel: str) -> None:
        """A package was not cached: it is fetched from upstream."""
        with self._lock:
            self._misses[channel] += 1

    def added(self, channel: str, path: str, size: int) -> None:
        """A verified package was committed to the cache."""
        with self._lock:
            self._added[(channel, path)] = (size, time.time())
        if self.max_size is not None:
            self._wake.set()

    @contextlib.contextmanager
    def streaming(self, channel: str, path: str) -> Iterator[None]:
        """While a cached file is being sent, eviction leaves it alone."""
        key = (channel, path)
        self._streaming[key] += 1
        try:
            yield
        finally:
            self._streaming[key] -= 1
            if self._streaming[key] <= 0:
                del self._streaming[key]

    # background ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="proxy-cache", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with contextlib.suppress(Exception):
            self.flush()

    def _loop(self) -> None:
        with contextlib.suppress(Exception):
            self.reconcile()
        while not self._stop.is_set():
            self._wake.wait(self.flush_every)
            self._wake.clear()
            try:
                added = self.flush()
                if self.max_size is not None and (
                    added or time.monotonic() - self._checked > RECHECK_EVERY
                ):
                    self._checked = time.monotonic()
                    self.evict()
            except Exception as exc:  # the database may be briefly away; try again later
                LOG.warning("proxy cache record: %s", exc)

    def _take(self) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], tuple[int, float]],
                             Counter[str], Counter[str]]:  # fmt: skip
        with self._lock:
            touched, self._touched = self._touched, {}
            added, self._added = self._added, {}
            hits, self._hits = self._hits, Counter()
            misses, self._misses = self._misses, Counter()
        return touched, added, hits, misses

    def flush(self) -> int:
        """Write what was recorded since the last flush in one transaction; returns how many
        files were added."""
        touched, added, hits, misses = self._take()
        busy = list(self._streaming)
        if not (touched or added or hits or misses or busy):
            return 0
        insert = pg_insert if self.db.engine.name == "postgresql" else sqlite_insert
        now = time.time()
        with self.db.session() as s:
            for (channel, path), (size, when) in added.items():
                stmt = insert(CachedFileRow).values(
                    channel=channel, path=path, size=size, last_access=when, busy_until=0.0
                )
                s.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["channel", "path"],
                        set_={"size": size, "last_access": when},
                    )
                )
            for (channel, path), when in touched.items():
                s.execute(
                    update(CachedFileRow)
                    .where(
                        CachedFileRow.channel == channel,
                        CachedFileRow.path == path,
                        CachedFileRow.last_access < when,
                    )
                    .values(last_access=when)
                )
            for channel, path in busy:
                s.execute(
                    update(CachedFileRow)
                    .where(CachedFileRow.channel == channel, CachedFileRow.path == path)
                    .values(busy_until=now + BUSY_LEASE)
                )
            for channel in set(hits) | set(misses):
                self._count(s, channel, hits[channel], misses[channel], 0)
            s.commit()
        return len(added)

    def _count(self, s: Session, channel: str, hits: int, misses: int, evictions: int) -> None:
        insert = pg_insert if self.db.engine.name == "postgresql" else sqlite_insert
        stmt = insert(CacheStatsRow).values(
            channel=channel, hits=hits, misses=misses, evictions=evictions
        )
        s.execute(
            stmt.on_conflict_do_update(
                index_elements=["channel"],
                set_={
                    "hits": CacheStatsRow.hits + hits,
                    "misses": CacheStatsRow.misses + misses,
                    "evictions": CacheStatsRow.evictions + evictions,
                },
            )
        )

    # eviction ------------------------------------------------------------------------------

    def total(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.coalesce(func.sum(CachedFileRow.size), 0))) or 0)

    def evict(self) -> list[tuple[str, str]]:
        """Delete least recently requested packages until the cache fits max_size; returns
        what was evicted. A file streamed here, or marked busy by a replica, is skipped."""
        if self.max_size is None:
            return []
        total = self.total()
        evicted: list[tuple[str, str]] = []
        if total <= self.max_size:
            return evicted
        now = time.time()
        with self.db.session() as s:
            candidates = s.execute(
                select(
                    CachedFileRow.channel,
                    CachedFileRow.path,
                    CachedFileRow.size,
                    CachedFileRow.last_access,
                )
                .where(CachedFileRow.busy_until < now)
                .order_by(CachedFileRow.last_access)
            ).all()
        for channel, path, size, seen in candidates:
            if total <= self.max_size:
                break
            if (channel, path) in self._streaming or (channel, path) in self._touched:
                continue
            if not self._claim(channel, path, seen):
                continue  # requested meanwhile (another replica's flush) or evicted by one
            try:
                self.store.storage(channel).delete(path)
            except CondasyncError as exc:
                LOG.warning("proxy cache: cannot evict %s/%s: %s", channel, path, exc)
            total -= size
            evicted.append((channel, path))
            self.evictions += 1
            for hook in self.on_evict:
                hook(channel, path, size)
        return evicted

    def _claim(self, channel: str, path: str, seen: float) -> bool:
        """Delete the row only if nobody requested the file since we looked (one statement:
        two replicas evicting at once never both count the same file)."""
        with self.db.session() as s:
            result = s.execute(
                delete(CachedFileRow).where(
                    CachedFileRow.channel == channel,
                    CachedFileRow.path == path,
                    CachedFileRow.last_access == seen,
                    CachedFileRow.busy_until < time.time(),
                )
            )
            if getattr(result, "rowcount", 0) == 1:
                self._count(s, channel, 0, 0, 1)
            s.commit()
            return bool(getattr(result, "rowcount", 0) == 1)

    # reading -------------------------------------------------------------------------------

    def usage(self, channel: str) -> CacheUsage:
        """Cache size and counters of one channel (the database's, plus this replica's
        counts not yet written)."""
        with self.db.session() as s:
            size, files = s.execute(
                select(func.coalesce(func.sum(CachedFileRow.size), 0), func.count()).where(
                    CachedFileRow.channel == channel
                )
            ).one()
            stats = s.get(CacheStatsRow, channel)
        hits = (stats.hits if stats else 0) + self._hits[channel]
        misses = (stats.misses if stats else 0) + self._misses[channel]
        evictions = stats.evictions if stats else 0
        pending = [v[0] for k, v in list(self._added.items()) if k[0] == channel]
        return CacheUsage(int(size) + sum(pending), int(files) + len(pending), hits, misses,
                          evictions)  # fmt: skip

    def cached_paths(self, channel: str) -> set[str]:
        with self.db.session() as s:
            query = select(CachedFileRow.path).where(CachedFileRow.channel == channel)
            found = set(s.scalars(query))
        return found | {k[1] for k in list(self._added) if k[0] == channel}

    def reconcile(self) -> int:
        """At start: record cached packages the database does not know (a cache made before
        the record existed, or by an older version), as last requested at their mtime."""
        proxies = [c.name for c in self.db.channels() if c.mirror_mode == "proxy"]
        found = 0
        for name in proxies:
            known = self.cached_paths(name)
            storage = self.store.storage(name)
            for subdir in self.store.subdirs(name):
                for filename, (size, mtime_ns) in storage.listing(subdir).items():
                    path = f"{subdir}/{filename}"
                    if is_package(filename) and path not in known:
                        self._added[(name, path)] = (size, mtime_ns / 1e9)
                        found += 1
        if found:
            self.flush()
        return found
