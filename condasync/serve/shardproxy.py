"""Proxy channels pass upstream's shards (CEP-16) through: the shard index cached with the
channel's ttl (stale-while-revalidate, stale-if-error) and fetched with repodata.json, so
both are one upstream snapshot; shards fetched on first request, verified, cached for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson

from condasync.channel.shards import SHARD_INDEX, decode_shard_index, rewrite_index_urls
from condasync.channel.urls import join
from condasync.serve.files import Scope, Send, send_text
from condasync.serve.paths import is_shard
from condasync.serve.proxy import ProxyChannel, ProxyError
from condasync.storage import STATE_DIR

MISSING_RECHECK = 60.0  # seconds before asking again an upstream that had no shard index


@dataclass
class ShardMeta:
    """What we cached of one subdir's upstream shard index."""

    fetched_at: float = 0.0
    snapshot: list[Any] = field(default_factory=list)  # repodata meta it was fetched with
    shards_url: str = ""  # upstream's shards_base_url, resolved
    missing_at: float = 0.0  # upstream answered 404 (or 403): no shards there


class ShardProxy:
    """The shard side of one proxy channel."""

    def __init__(self, proxy: ProxyChannel) -> None:
        self.proxy = proxy
        self.storage = proxy.storage
        self._metas: dict[str, ShardMeta] = {}
        self._named: dict[str, set[str]] = {}
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._background: set[asyncio.Future[Any]] = set()

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # a failed background refresh leaves the stale copy in place

    def _meta_path(self, subdir: str) -> str:
        return f"{STATE_DIR}/proxy/{subdir}.shards.json"

    def meta(self, subdir: str) -> ShardMeta:
        meta = self._metas.get(subdir)
        if meta is None:
            raw = self.storage.read(self._meta_path(subdir))
            try:
                meta = ShardMeta(**orjson.loads(raw)) if raw else ShardMeta()
            except (orjson.JSONDecodeError, TypeError):
                meta = ShardMeta()
            self._metas[subdir] = meta
        return meta

    def _save(self, subdir: str, meta: ShardMeta) -> None:
        self._metas[subdir] = meta
        self.storage.write_if_changed(self._meta_path(subdir), orjson.dumps(asdict(meta)))

    async def _once(self, key: str, make: Any) -> Any:
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(make())
            self._flights[key] = flight
            flight.add_done_callback(lambda _f: self._flights.pop(key, None))
        return await asyncio.shield(flight)

    def _snapshot(self, subdir: str) -> list[Any]:
        meta = self.proxy.meta(subdir)
        return [] if meta is None else [meta.source, meta.etag, meta.last_modified]

    async def index(self, subdir: str) -> bool:
        """Make sure a shard index of the cached repodata snapshot is cached: True when one
        is (possibly stale), False when upstream has none (the client falls back)."""
        meta = await asyncio.to_thread(self.meta, subdir)
        cached = await asyncio.to_thread(self.storage.stat, f"{subdir}/{SHARD_INDEX}")
        now = time.time()
        if cached is None and meta.missing_at and now - meta.missing_at < MISSING_RECHECK:
            return False
        fresh = now - meta.fetched_at < self.proxy.ttl
        if cached is not None and meta.snapshot == self._snapshot(subdir):
            if not fresh and f"shards:{subdir}" not in self._flights:  # stale-while-revalidate
                task = asyncio.ensure_future(
                    self._once(f"shards:{subdir}", lambda: self._refresh(subdir))
                )
                self._background.add(task)
                task.add_done_callback(self._done)
            return True
        try:
            return bool(await self._once(f"shards:{subdir}", lambda: self._refresh(subdir)))
        except ProxyError:
            return cached is not None  # stale-if-error; without a copy: 404, clients fall back

    async def _refresh(self, subdir: str) -> bool:
        """repodata.json then the shard index, back to back: one upstream snapshot."""
        proxy = self.proxy
        await proxy._once(f"index:{subdir}", lambda: proxy._refresh(subdir))
        url = join(join(proxy.base, subdir), SHARD_INDEX)
        try:
            response = await proxy.client.get(url)
        except httpx.TransportError as exc:
            raise ProxyError(502, f"upstream unavailable: {exc}") from None
        meta = self.meta(subdir)
        if response.status_code in (403, 404, 501):
            meta.missing_at = time.time()
            await asyncio.to_thread(self._drop, subdir, meta)
            return False
        if response.status_code != 200:
            raise ProxyError(502, f"upstream answered HTTP {response.status_code}")
        body = response.content
        try:
            index = decode_shard_index(body)
            shards_url = urljoin(str(response.url), index.info["shards_base_url"])
            local = rewrite_index_urls(body, "./", "./shards/")
        except ValueError as exc:
            raise ProxyError(502, f"upstream shard index unusable: {exc}") from None
        new = ShardMeta(time.time(), self._snapshot(subdir), shards_url, 0.0)
        await asyncio.to_thread(self.storage.publish, [(f"{subdir}/{SHARD_INDEX}", local)])
        await asyncio.to_thread(self._save, subdir, new)
        self._named[subdir] = {d.hex() for d in index.shards.values()}
        return True

    def _drop(self, subdir: str, meta: ShardMeta) -> None:
        """Upstream has no shards (any more): neither do we."""
        self.storage.delete(f"{subdir}/{SHARD_INDEX}")
        self._named.pop(subdir, None)
        self._save(subdir, meta)

    def _names(self, subdir: str) -> set[str]:
        named = self._named.get(subdir)
        if named is None:
            raw = self.storage.read(f"{subdir}/{SHARD_INDEX}")
            named = set()
            if raw is not None:
                with contextlib.suppress(ValueError):
                    named = {d.hex() for d in decode_shard_index(raw).shards.values()}
            self._named[subdir] = named
        return named

    async def shard(self, subdir: str, hexdigest: str) -> bool:
        """Fetch, verify (sha256 of the bytes is the name) and cache one shard; True when it
        is cached. Only shards our cached index names are fetched."""
        relpath = f"{subdir}/shards/{hexdigest}.msgpack.zst"
        if await asyncio.to_thread(self.storage.stat, relpath) is not None:
            return True
        if hexdigest not in await asyncio.to_thread(self._names, subdir):
            return False
        return bool(await self._once(f"shard:{relpath}", lambda: self._fetch(subdir, hexdigest)))

    async def _fetch(self, subdir: str, hexdigest: str) -> bool:
        meta = await asyncio.to_thread(self.meta, subdir)
        if not meta.shards_url:
            return False
        url = urljoin(meta.shards_url, f"{hexdigest}.msgpack.zst")
        try:
            response = await self.proxy.client.get(url)
        except httpx.TransportError as exc:
            raise ProxyError(502, f"upstream unavailable: {exc}") from None
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise ProxyError(502, f"upstream answered HTTP {response.status_code}")
        data = response.content
        if hashlib.sha256(data).hexdigest() != hexdigest:
            raise ProxyError(502, "upstream shard does not hash to its name; not cached")
        relpath = f"{subdir}/shards/{hexdigest}.msgpack.zst"
        await asyncio.to_thread(self.storage.publish, [(relpath, data)])
        return True


def is_shard_request(filename: str) -> bool:
    return filename == SHARD_INDEX or is_shard(filename)


_proxies: weakref.WeakKeyDictionary[ProxyChannel, ShardProxy] = weakref.WeakKeyDictionary()


def shard_proxy(proxy: ProxyChannel) -> ShardProxy:
    found = _proxies.get(proxy)
    if found is None:
        found = _proxies[proxy] = ShardProxy(proxy)
    return found


async def serve_shard_file(
    proxy: ProxyChannel, scope: Scope, send: Send, subdir: str, filename: str, sender: Any
) -> None:
    """GET/HEAD of the shard index or a shard of a proxy channel. `sender(extra)` sends the
    cached file (False when it is not there). Upstream without shards: 404, never 403/5xx."""
    head = scope["method"] == "HEAD"
    shards = shard_proxy(proxy)
    try:
        if filename == SHARD_INDEX:
            ready = await shards.index(subdir)
        else:
            ready = await shards.shard(subdir, filename[len("shards/") :].split(".", 1)[0])
    except ProxyError as exc:
        await send_text(send, exc.status, exc.message, head=head)
        return
    if not ready or not await sender():
        await send_text(send, 404, "not found", head=head)
