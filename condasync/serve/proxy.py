"""Proxy channels: upstream indexes cached for `ttl` seconds (stale-while-revalidate and
stale-if-error), and packages fetched on first request, streamed to every waiting client while
being written and verified, and committed to the cache only when their bytes match the record.

Everything here runs on the server's event loop; a dict of in-flight work per key gives
single-flight fetches without locks. The cache lives in the channel store: on disk a verified
file is renamed into place; on S3 it is verified in a local scratch file, then uploaded, and
only then do its clients get the last byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import httpx
import orjson

from condasync.channel.repodata import (
    compress_zst,
    digest_of,
    dump_repodata,
    empty_repodata,
    parse_repodata,
    partition_records,
)
from condasync.channel.urls import join
from condasync.engine import fetch
from condasync.errors import CondasyncError, LockedError, StorageError, UpstreamError
from condasync.serve.files import CHUNK, Headers, Scope, Send, send_text
from condasync.serve.metrics import METRICS, note_cache
from condasync.serve.paths import cache_control
from condasync.serve.store import LocalChannels, S3Channels
from condasync.serve.stream import Download, relay
from condasync.storage import STATE_DIR, LocalStorage
from condasync.storage.s3 import S3Storage

PROXY_STATE = "proxy"
RETRY_FAILED_AFTER = 1.0  # seconds between refresh attempts while upstream keeps failing
KNOWN_CACHED = 10.0  # seconds an index seen in an object store is trusted to still be there
PUBLISH_WAIT = 10.0  # seconds a replica waits for another one publishing the same index
DONE_KEPT = 60.0  # seconds a finished download into an object store stays joinable
_T = TypeVar("_T")


class ProxyError(Exception):
    """An answer other than the file: 404 (upstream has none), 502 or 504 (upstream broken)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _upstream_error(exc: BaseException) -> ProxyError:
    reason = fetch.describe(exc) if not isinstance(exc, UpstreamError) else str(exc)
    if isinstance(exc, httpx.TimeoutException) or "timed out" in reason:
        return ProxyError(504, f"upstream timed out: {reason}")
    return ProxyError(502, f"upstream unavailable: {reason}")


@dataclass
class IndexMeta:
    """What we know about one cached upstream index (saved as JSON beside the cache)."""

    source: str = ""
    etag: str | None = None
    last_modified: str | None = None
    fetched_at: float = 0.0  # wall clock of the last successful fetch or revalidation
    package_base: str = ""
    error: str | None = None  # the last refresh failure, cleared by a success
    failed_at: float = 0.0


class ProxyChannel:
    """One proxy channel: its upstream client and its cache, the channel `<name>` of the
    store (DIR/<name>/ or s3://bucket/prefix/<name>/)."""

    def __init__(
        self, name: str, url: str, store: LocalChannels | S3Channels, ttl: int, timeout: float
    ) -> None:
        self.name = name
        self.url = url
        self.ttl = ttl
        self.store = store
        self.storage = store.storage(name)
        self._known: dict[str, float] = {}  # subdirs whose index was seen in the store: when
        self._channeldata_at = 0.0
        self.client, self.base = fetch.make_client(url, jobs=32, timeout=timeout)
        self._metas: dict[str, IndexMeta] = {}
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._downloads: dict[str, Download] = {}
        self._records: dict[str, tuple[str, dict[str, tuple[int, str]]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._missing: dict[str, float] = {}  # subdirs upstream answered 404 for: when
        # Told (channel, "subdir/file", size) of every package committed to the cache.
        self.on_cached: Callable[[str, str, int], None] | None = None

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.client.aclose()

    # single flight ---------------------------------------------------------------------------

    async def _once(self, key: str, make: Callable[[], Awaitable[_T]]) -> _T:
        """Run make() once for concurrent callers with the same key; all get its outcome."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(make())
            self._flights[key] = flight
            flight.add_done_callback(lambda _f: self._flights.pop(key, None))
        result: _T = await asyncio.shield(flight)
        return result

    async def once(self, key: str, make: Callable[[], Awaitable[_T]]) -> _T:
        """Single flight for work kept outside this class (the bz2 check)."""
        return await self._once(key, make)

    # indexes ---------------------------------------------------------------------------------

    def _meta_path(self, subdir: str) -> str:
        return f"{STATE_DIR}/{PROXY_STATE}/{subdir}.json"

    def meta(self, subdir: str) -> IndexMeta | None:
        meta = self._metas.get(subdir)
        if meta is None:
            raw = self.storage.read(self._meta_path(subdir))
            if raw is None:
                return None
            try:
                meta = IndexMeta(**orjson.loads(raw))
            except (orjson.JSONDecodeError, TypeError):
                return None
            self._metas[subdir] = meta
        return meta

    def _save_meta(self, subdir: str, meta: IndexMeta) -> None:
        self._metas[subdir] = meta
        self.storage.write_if_changed(self._meta_path(subdir), orjson.dumps(asdict(meta)))

    def _cached(self, subdir: str) -> bool:
        if not self.store.local:
            # Each stat is a request to the store: trust a recent look (a missing file found
            # while sending is reported back through forget_cached).
            seen = self._known.get(subdir)
            if seen is not None and time.monotonic() - seen < KNOWN_CACHED:
                return True
        cached = all(
            self.storage.stat(f"{subdir}/{n}") is not None
            for n in ("repodata.json", "repodata.json.zst")
        )
        if cached:
            self._known[subdir] = time.monotonic()
        return cached

    def forget_cached(self, subdir: str) -> None:
        self._known.pop(subdir, None)
        self._metas.pop(subdir, None)

    async def index(self, subdir: str) -> tuple[IndexMeta, bool]:
        """Make sure a snapshot of subdir's index is cached; (meta, served stale)."""
        meta = self.meta(subdir) if self.store.local else await self._shared_meta(subdir)
        if meta is None or not await self._is_cached(subdir):
            missing_since = self._missing.get(subdir)
            if missing_since is not None and time.time() - missing_since < min(self.ttl, 60):
                raise ProxyError(404, f"upstream has no {subdir}/repodata.json")
            return await self._once(f"index:{subdir}", lambda: self._refresh(subdir)), False
        age = time.time() - meta.fetched_at
        if age < self.ttl:
            return meta, False
        if time.time() - meta.failed_at >= RETRY_FAILED_AFTER and f"index:{subdir}" not in (
            self._flights
        ):
            task = asyncio.ensure_future(
                self._once(f"index:{subdir}", lambda: self._refresh(subdir))
            )
            self._background.add(task)
            task.add_done_callback(self._background_done)
        return meta, True

    async def _shared_meta(self, subdir: str) -> IndexMeta | None:
        """In an object store shared by replicas: when ours has expired, another replica may
        have refreshed the index since, so read its meta again before asking upstream."""
        meta = self._metas.get(subdir)
        if meta is not None and time.time() - meta.fetched_at < self.ttl:
            return meta
        self._metas.pop(subdir, None)
        fresh = await asyncio.to_thread(self.meta, subdir)
        if fresh is None and meta is not None:
            self._metas[subdir] = meta
            return meta
        return fresh

    async def _is_cached(self, subdir: str) -> bool:
        if self.store.local:
            return self._cached(subdir)
        return await asyncio.to_thread(self._cached, subdir)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed refresh is recorded in the meta

    def stale_headers(self, meta: IndexMeta) -> Headers:
        age = max(0, int(time.time() - meta.fetched_at))
        headers = [
            (b"warning", b'110 - "Response is Stale"'),
            (b"x-condasync-stale", f"age={age}".encode()),
            (b"age", str(age).encode()),
        ]
        if meta.error:
            headers.insert(1, (b"warning", b'111 - "Revalidation Failed"'))
            headers[2] = (b"x-condasync-stale", f"age={age}; error={meta.error}".encode()[:300])
        return headers

    async def _refresh(self, subdir: str) -> IndexMeta:
        old = self.meta(subdir)
        cached = old is not None and self._cached(subdir)
        validators = (old.source, old.etag, old.last_modified) if old and cached else None
        METRICS.upstream_request(self.name)
        try:
            fetched = await fetch.fetch_index(
                self.client, join(self.base, subdir), validators, retries=0, backoff=0.1
            )
        except UpstreamError as exc:
            METRICS.upstream_error(self.name)
            error = _upstream_error(exc)
            if old is not None:
                old.error, old.failed_at = error.message, time.time()
            raise error from None
        now = time.time()
        if fetched.unchanged and old is not None:
            old.fetched_at, old.error, old.failed_at = now, None, 0.0
            self._save_meta(subdir, old)
            return old
        if (fetched.missing or fetched.body is None) and old is not None and cached:
            # A channel that vanished upstream (a wrong URL, a removed subdir) is an upstream
            # error: the last good snapshot keeps being served, marked stale.
            old.error, old.failed_at = f"upstream has no {subdir}/repodata.json", now
            self._save_meta(subdir, old)
            raise ProxyError(502, old.error)
        if fetched.missing or fetched.body is None:
            if subdir != "noarch":
                self._missing[subdir] = time.time()  # asked again only after a while
                raise ProxyError(404, f"upstream has no {subdir}/repodata.json")
            fetched.body = dump_repodata(empty_repodata("noarch"))
        package_base, body = await asyncio.to_thread(
            _localize, fetched.body, join(self.base, subdir)
        )
        zst = await asyncio.to_thread(compress_zst, body)
        meta = IndexMeta(
            source=fetched.source,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
            fetched_at=now,
            package_base=package_base,
        )
        files = [(f"{subdir}/repodata.json.zst", zst), (f"{subdir}/repodata.json", body)]
        async with self._publishing(subdir):
            # .zst first, then .json, back to back: both are the same snapshot.
            await asyncio.to_thread(self.storage.publish, files)
            if isinstance(self.storage, LocalStorage):
                self._save_meta(subdir, meta)
            else:
                await asyncio.to_thread(self._save_meta, subdir, meta)
        self._known[subdir] = time.monotonic()
        return meta

    @contextlib.asynccontextmanager
    async def _publishing(self, subdir: str) -> AsyncIterator[None]:
        """In an object store shared by replicas, one index pair is written at a time: two
        replicas refreshing at once could otherwise leave the .zst of one snapshot beside the
        .json of another. A short lock object; waited for a while, then gone on without."""
        storage = self.storage
        if isinstance(storage, LocalStorage) or self.store.s3_options.no_lock:
            yield
            return
        held = None
        deadline = time.monotonic() + PUBLISH_WAIT
        while held is None:
            try:
                held = await asyncio.to_thread(
                    storage.acquire_lock, f"proxy-{subdir}.lock", PUBLISH_WAIT * 2
                )
            except LockedError:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            except CondasyncError:  # no conditional writes, or the store is failing
                break
        try:
            yield
        finally:
            if held is not None:
                with contextlib.suppress(StorageError):
                    await asyncio.to_thread(storage.release_lock, held)

    async def records(self, subdir: str) -> dict[str, tuple[int, str]]:
        """filename -> (size, digest) of the cached snapshot, parsed once per snapshot."""
        await self.index(subdir)
        st = await asyncio.to_thread(self.storage.stat, f"{subdir}/repodata.json")
        version = repr(st)
        cached = self._records.get(subdir)
        if cached is not None and cached[0] == version:
            return cached[1]

        async def build() -> dict[str, tuple[int, str]]:
            raw = await asyncio.to_thread(self.storage.read, f"{subdir}/repodata.json") or b"{}"
            table = await asyncio.to_thread(_record_table, raw, subdir)
            self._records[subdir] = (version, table)
            return table

        return await self._once(f"records:{subdir}:{version}", build)

    async def channeldata(self) -> bool:
        """Refresh channeldata.json when older than ttl; whether a copy is cached."""
        if time.time() - self._channeldata_at < self.ttl:
            return True
        st = await asyncio.to_thread(self.storage.stat, "channeldata.json")
        if st is not None and time.time() - st[1] / 1e9 < self.ttl:
            return True

        async def get() -> bool:
            data = await fetch.fetch_optional(self.client, join(self.base, "channeldata.json"))
            if data is not None and _is_object(data):
                await asyncio.to_thread(self.storage.publish, [("channeldata.json", data)])
                if isinstance(self.storage, LocalStorage):
                    os.utime(self.storage.path("channeldata.json"))
                self._channeldata_at = time.time()
                return True
            return st is not None

        try:
            return await self._once("channeldata", get)
        except httpx.HTTPError:
            return st is not None

    # packages --------------------------------------------------------------------------------

    async def package(
        self,
        scope: Scope,
        send: Send,
        subdir: str,
        filename: str,
        private: bool = False,
        again: bool = True,
    ) -> None:
        """Answer a request for a package that is not cached yet."""
        try:
            table = await self.records(subdir)
        except ProxyError as exc:
            await send_text(send, exc.status, exc.message, head=scope["method"] == "HEAD")
            return
        record = table.get(filename)
        if record is None:
            await send_text(send, 404, f"{subdir}/{filename} is not in the upstream index")
            return
        size, digest = record
        head = scope["method"] == "HEAD"
        headers: Headers = [
            (b"content-type", b"application/octet-stream"),
            (b"cache-control", cache_control(filename, private).encode()),
        ]
        if head:
            headers.append((b"content-length", str(size).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        key = f"{subdir}/{filename}"
        download = self._joinable(key)
        if download is None:
            # Committed while this request awaited the index: no second upstream GET.
            if (
                isinstance(self.storage, LocalStorage)
                and os.path.exists(self.storage.path(key))
                and await self.store.send(scope, send, self.name, key, filename, private)
            ):
                note_cache(scope, self.name, "hit")
                return
            download = self._joinable(key)
            if download is None:
                note_cache(scope, self.name, "miss")
                download = self._start_download(subdir, filename, size, digest)
            else:
                note_cache(scope, self.name, "coalesced")
        else:
            note_cache(scope, self.name, "coalesced")
        if any(name == b"range" for name, _ in scope["headers"]):
            # A range of a file still in flight: wait for the verified file, then serve it.
            while download.state not in ("done", "failed"):
                await download.event.wait()
            if download.state == "done" and await self.store.send(
                scope, send, self.name, key, filename, private
            ):
                return
        while download.state == "starting":
            await download.event.wait()
        if download.state == "failed":
            await send_text(send, download.status, download.message)
            return
        where = download.temp
        if download.state == "done" and isinstance(self.storage, LocalStorage):
            where = self.storage.path(key)
        try:
            fd = os.open(where, os.O_RDONLY)
        except FileNotFoundError:  # in an object store by now, its scratch file gone
            if await self.store.send(scope, send, self.name, key, filename, private):
                return
            if download.state == "done" and again:  # deleted from the store since: fetch again
                self._drop(key, download)
                await self.package(scope, send, subdir, filename, private, again=False)
                return
            await send_text(send, 404, "not found")
            return
        headers.append((b"content-length", str(size).encode()))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await relay(send, fd, download)
        finally:
            os.close(fd)

    def _start_download(self, subdir: str, filename: str, size: int, digest: str) -> Download:
        staging = self.store.staging(self.name, subdir)
        staging.mkdir(parents=True, exist_ok=True)
        download = Download(size, staging / f"{filename}.{uuid.uuid4().hex[:12]}")
        key = f"{subdir}/{filename}"
        self._downloads[key] = download
        METRICS.downloads.inc()
        meta = self.meta(subdir)
        base = meta.package_base if meta and meta.package_base else join(self.base, subdir)
        task = asyncio.ensure_future(self._download(download, join(base, filename), digest, key))
        self._background.add(task)
        task.add_done_callback(self._background_done)
        task.add_done_callback(lambda _t: self._forget(key, download))
        return download

    def _joinable(self, key: str) -> Download | None:
        """The download to share for key. On disk a finished one is not shared: its file is
        in place (or was evicted since), which the caller checks without awaiting."""
        download = self._downloads.get(key)
        if download is not None and download.state == "done" and self.store.local:
            return None
        return download

    def _forget(self, key: str, download: Download) -> None:
        METRICS.downloads.dec()
        if not isinstance(self.storage, LocalStorage):
            # Relays still sending hold it open; new requests go to the object store.
            download.temp.unlink(missing_ok=True)
            if download.state == "done":
                # Still findable a while: a request that found no object before the upload
                # completed must join this download, not start a second upstream GET.
                asyncio.get_running_loop().call_later(DONE_KEPT, self._drop, key, download)
                return
        self._drop(key, download)

    def _drop(self, key: str, download: Download) -> None:
        if self._downloads.get(key) is download:
            del self._downloads[key]

    async def _commit(self, temp: Path, key: str) -> None:
        """Make a verified file the cached one: a rename on disk, an upload to S3 (the object
        appears whole when the upload completes, multipart for large files)."""
        if isinstance(self.storage, LocalStorage):
            os.replace(temp, self.storage.path(key))
        else:
            await asyncio.to_thread(upload_file, self.storage, key, temp)

    async def _download(self, dl: Download, url: str, digest: str, key: str) -> None:
        algo, expected = digest.split(":", 1)
        hasher = hashlib.new(algo)
        METRICS.upstream_request(self.name)
        try:
            async with self.client.stream("GET", url) as response:
                if response.status_code in (404, 410):
                    raise ProxyError(404, "not found upstream")
                if response.status_code >= 400:
                    METRICS.upstream_error(self.name)
                    raise ProxyError(502, f"upstream answered HTTP {response.status_code}")
                with open(dl.temp, "wb") as fh:
                    dl.state = "streaming"
                    dl.notify()
                    async for chunk in response.aiter_bytes(CHUNK):
                        if dl.written + len(chunk) > dl.size:
                            METRICS.proxy_result(self.name, "verify_failed")
                            raise ProxyError(502, "upstream sent more bytes than the record says")
                        hasher.update(chunk)
                        fh.write(chunk)
                        fh.flush()
                        dl.written += len(chunk)
                        dl.notify()
            if dl.written != dl.size or hasher.hexdigest() != expected:
                METRICS.proxy_result(self.name, "verify_failed")
            if dl.written != dl.size:
                raise ProxyError(502, f"upstream sent {dl.written} of {dl.size} bytes")
            if hasher.hexdigest() != expected:
                raise ProxyError(502, f"upstream file failed {algo} verification; not cached")
            await self._commit(dl.temp, key)
            METRICS.cache_added(self.name, dl.size)
            dl.state = "done"
            if self.on_cached is not None:
                self.on_cached(self.name, key, dl.size)
        except ProxyError as exc:
            dl.state, dl.status, dl.message = "failed", exc.status, exc.message
        except httpx.HTTPError as exc:
            METRICS.upstream_error(self.name)
            error = _upstream_error(exc)
            dl.state, dl.status, dl.message = "failed", error.status, error.message
        except CondasyncError as exc:  # the store refused the upload
            dl.state, dl.status, dl.message = "failed", 502, f"cannot cache the file: {exc}"
        except BaseException:
            dl.state, dl.status, dl.message = "failed", 502, "download interrupted"
            raise
        finally:
            if dl.state != "done":
                dl.temp.unlink(missing_ok=True)
            dl.notify()


def upload_file(storage: S3Storage, key: str, path: Path) -> None:
    """Stream a local file to the object at key; nothing is visible until it completes."""
    staged = storage.stage(key)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK * 8):
                staged.write(chunk)
        staged.commit()
    except BaseException:
        staged.discard()
        raise


def _is_object(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


def _localize(body: bytes, subdir_url: str) -> tuple[str, bytes]:
    """CEP-15: note where upstream keeps packages, and drop base_url since we serve them."""
    if b'"base_url"' not in body:
        return "", body
    try:
        doc = orjson.loads(body)
        info = doc.get("info") or {}
        base_url = info.pop("base_url", None)
    except (orjson.JSONDecodeError, AttributeError):
        return "", body
    if not isinstance(base_url, str) or not base_url:
        return "", body
    base = urljoin(subdir_url + "/", base_url).rstrip("/")
    return base, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def _record_table(raw: bytes, subdir: str) -> dict[str, tuple[int, str]]:
    try:
        repodata = parse_repodata(raw, subdir)
    except ValueError:
        return {}
    valid, _rejected = partition_records(repodata.records)
    return {fn: (rec["size"], digest_of(rec)) for fn, rec in valid.items()}
