"""The state one `condasync serve` process shares (channels, proxies, the database, the task
runner), and the ASGI handler for channel files (`/channels/...`, `/t/<key>/channels/...`)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

from condasync.serve.cachelimit import CacheTracker
from condasync.serve.db import Channel, Database
from condasync.serve.files import Headers, Receive, Scope, Send, send_text
from condasync.serve.listed import ListedNames
from condasync.serve.metrics import METRICS, note_cache
from condasync.serve.paths import FilePath, is_channel_name, is_package, parse_file_path
from condasync.serve.proxy import ProxyChannel, ProxyError
from condasync.serve.proxybz2 import bz2_cache
from condasync.serve.quetzshapes import proxied_url
from condasync.serve.roles import Identity, can_read
from condasync.serve.s3files import StorageUnavailable
from condasync.serve.shardproxy import is_shard_request, serve_shard_file
from condasync.serve.store import LocalChannels, S3Channels
from condasync.serve.stream import ProxyAborted
from condasync.serve.tasks import TaskRunner

LOG = logging.getLogger("uvicorn.error")

STATIC_RECHECK = 2.0  # seconds a plain tree found in the store is trusted to still be there
CHANNEL_REFRESH = 2.0  # seconds channel rows are trusted before the database is asked again
PROXY_INDEXES = ("repodata.json", "repodata.json.zst")
UNLISTED_CACHE = b"no-cache"  # a file no index lists: revalidate every time


class Server:
    """Shared state of one `condasync serve` process (one replica among several, perhaps)."""

    def __init__(
        self,
        root: Path,
        db: Database,
        upstream_timeout: float = 10.0,
        store: LocalChannels | S3Channels | None = None,
        cache_max_size: int | None = None,
    ) -> None:
        self.root = Path(os.path.realpath(root))
        self.store: LocalChannels | S3Channels = store or LocalChannels(self.root)
        self.db = db
        self.upstream_timeout = upstream_timeout
        self.tasks = TaskRunner(db, self.store)
        self.cache = CacheTracker(db, self.store, cache_max_size)  # proxy cache record, limit
        self.cache.on_evict.append(
            lambda channel, _path, size: METRICS.cache_evicted(channel, size)
        )
        self._channels: dict[str, Channel] = {}
        self._loaded = 0.0
        self._proxies: dict[str, ProxyChannel] = {}
        self._static: dict[str, float] = {}  # plain trees seen lately: name -> when
        self._absent: dict[str, float] = {}  # names found nowhere lately: name -> when
        self._lock = threading.Lock()
        self.listed = ListedNames(self.store.read, self.store.stat)
        self.reload()

    # channels --------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read channel settings from the database (after any API change, and every
        CHANNEL_REFRESH seconds: another replica may have changed them)."""
        loaded = time.monotonic()
        channels = {c.name: c for c in self.db.channels()}
        with self._lock:
            self._channels, self._loaded = channels, loaded

    def cached_channel(self, name: str) -> Channel | None:
        """The answer from memory alone when it is fresh; None when the database (or the
        store) must be asked, which `channel()` does."""
        now = time.monotonic()
        if now - self._loaded < CHANNEL_REFRESH:
            found = self._channels.get(name)
            if found is not None:
                return found
            seen = self._static.get(name)
            if seen is not None and now - seen < STATIC_RECHECK:
                return Channel(name, False, None, None)
        return None

    def channel(self, name: str) -> Channel | None:
        """A channel with a row, or a plain tree in the store (served read-only, public).
        Blocking (database, store): from a worker thread, or through `find`."""
        cached = self.cached_channel(name)
        if cached is not None:
            return cached
        now = time.monotonic()
        if now - self._loaded >= CHANNEL_REFRESH:
            self.reload()
        found = self._channels.get(name)
        if found is None:
            # Created by another replica since our last reload?
            found = self.db.channel(name)
            if found is not None:
                with self._lock:
                    self._channels = {**self._channels, name: found}
        if found is not None:
            return found
        seen = self._static.get(name)
        if seen is not None and now - seen < STATIC_RECHECK:
            return Channel(name, False, None, None)
        absent = self._absent.get(name)
        if absent is not None and now - absent < STATIC_RECHECK:
            return None  # asked lately: spare the object store a LIST per 404
        if is_channel_name(name) and self.store.is_tree(name):
            if len(self._static) > 10_000:
                self._static.clear()
            self._static[name] = now
            return Channel(name, False, None, None)
        if not self.store.local:
            if len(self._absent) > 10_000:
                self._absent.clear()
            self._absent[name] = now
        return None

    def known_channel(self, name: str) -> bool:
        """Whether name is a channel seen lately (from memory: bounds metric labels)."""
        return name in self._channels or name in self._static

    async def find(self, name: str) -> Channel | None:
        """`channel()` for the event loop: from memory when fresh, else in a worker thread."""
        cached = self.cached_channel(name)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.channel, name)

    def channels(self) -> list[Channel]:
        self.reload()
        listed = dict(self._channels)
        for entry in self.store.names():
            if entry not in listed:
                listed[entry] = Channel(entry, False, None, None)
        return [listed[name] for name in sorted(listed)]

    def proxy(self, channel: Channel) -> ProxyChannel:
        proxy = self._proxies.get(channel.name)
        if proxy is None or proxy.url != channel.mirror_channel_url or proxy.ttl != channel.ttl:
            proxy = ProxyChannel(
                channel.name,
                channel.mirror_channel_url or "",
                self.store,
                channel.ttl,
                self.upstream_timeout,
            )
            proxy.on_cached = self.cache.added
            self._proxies[channel.name] = proxy
        return proxy

    def remove_files(self, name: str) -> ProxyChannel | None:
        """Forget a channel and delete its files; returns its proxy, for the caller to close."""
        proxy = self._proxies.pop(name, None)
        self._static.pop(name, None)
        self.store.remove(name)
        return proxy

    async def close(self) -> None:
        self.tasks.stop()
        await asyncio.to_thread(self.cache.stop)
        for proxy in list(self._proxies.values()):
            await proxy.close()

    # keys ------------------------------------------------------------------------------------

    def identify(self, key: str) -> Identity | None:
        """Asked of the database every time, so `apikey revoke` takes effect at once."""
        return self.db.identify(key)


def request_key(scope: Scope, token: str | None = None) -> str | None:
    if token:
        return token
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            key: str = value.decode("latin-1").strip()
            return key or None
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, cred = text.partition(" ")
            if scheme.lower() == "bearer" and cred.strip():
                return cred.strip()
    return None


class ChannelFiles:
    """GET/HEAD /channels/<name>/<subdir>/<file> and /channels/<name>/channeldata.json."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") or scope["path"].encode()
        head = scope["method"] == "HEAD"
        if scope["method"] not in ("GET", "HEAD"):
            await send_text(send, 405, "method not allowed", [(b"allow", b"GET, HEAD")])
            return
        path = parse_file_path(raw.decode("latin-1"))
        channel = await self.server.find(path.channel) if path is not None else None
        if path is None or channel is None:
            await send_text(send, 404, "not found", head=head)
            return
        if channel.private:
            key = request_key(scope, path.token)
            if key is None:
                await send_text(send, 401, "this channel needs an API key", head=head)
                return
            who = await asyncio.to_thread(self.server.identify, key)
            if who is None:  # unknown or revoked: unauthenticated, as in quetz
                await send_text(send, 401, "invalid or revoked API key", head=head)
                return
            if not can_read(who, channel.name, True):
                await send_text(send, 403, "this key has no role on this channel", head=head)
                return
        try:
            if channel.mirror_mode == "proxy":
                await self._proxy(scope, send, channel, path)
            elif not await self._send(scope, send, channel, path):
                url = proxied_url(
                    channel.mirror_mode, channel.mirror_channel_url, channel.settings, path.relpath
                )
                if url is not None:  # quetz's proxylist: upstream serves the file
                    await send_text(send, 307, "proxied", [(b"location", url.encode())], head=head)
                else:
                    await send_text(send, 404, "not found", head=head)
        except StorageUnavailable as exc:
            LOG.warning("%s/%s: storage failed: %s", channel.name, path.relpath, exc)
            await send_text(send, 502, f"storage unavailable: {exc}", head=head)

    async def _send(
        self,
        scope: Scope,
        send: Send,
        channel: Channel,
        path: FilePath,
        extra: Headers | None = None,
    ) -> bool:
        """The stored file, if there is one (False: nothing was sent). A package no index
        lists is not `immutable`: it may be a stray, or about to be deleted."""
        if (
            channel.mirror_mode != "proxy"
            and path.subdir
            and is_package(path.filename)
            and not await self.server.listed.listed(channel.name, path.subdir, path.filename)
        ):
            extra = [*(extra or []), (b"cache-control", UNLISTED_CACHE)]
        return await self.server.store.send(
            scope, send, channel.name, path.relpath, path.filename, channel.private, extra
        )

    async def _proxy(self, scope: Scope, send: Send, channel: Channel, path: FilePath) -> None:
        scope["condasync.started"] = time.time()
        proxy = self.server.proxy(channel)
        head = scope["method"] == "HEAD"
        if path.subdir and is_shard_request(path.filename):  # CEP-16, passed through
            await serve_shard_file(
                proxy, scope, send, path.subdir, path.filename,
                lambda: self._send(scope, send, channel, path),
            )  # fmt: skip
            return
        if path.subdir and path.filename in PROXY_INDEXES:
            try:
                meta, stale = await proxy.index(path.subdir)
            except ProxyError as exc:
                await send_text(send, exc.status, exc.message, head=head)
                return
            extra = proxy.stale_headers(meta) if stale else []
            if not await self._send(scope, send, channel, path, extra):
                proxy.forget_cached(path.subdir)
                await send_text(send, 404, "not found", head=head)
            else:
                fresh = meta.fetched_at >= scope.get("condasync.started", 0.0)
                note_cache(scope, channel.name, "stale" if stale else "miss" if fresh else "hit")
            return
        if path.subdir and path.filename == "repodata.json.bz2":
            try:
                sent = await bz2_cache(proxy).send(scope, send, path.subdir, channel.private)
            except ProxyError as exc:
                await send_text(send, exc.status, exc.message, head=head)
                return
            if not sent:  # upstream has none of this very snapshot
                await send_text(send, 404, "not found", head=head)
            return
        if not path.subdir:
            if not (await proxy.channeldata() and await self._send(scope, send, channel, path)):
                await send_text(send, 404, "not found", head=head)
            return
        if not is_package(path.filename):
            await send_text(send, 404, "not found", head=head)
            return
        with self.server.cache.streaming(channel.name, path.relpath):
            cached = await self._send(scope, send, channel, path)
        if cached:
            self.server.cache.hit(channel.name, path.relpath)
            note_cache(scope, channel.name, "hit")
        else:
            self.server.cache.miss(channel.name)
            try:
                await proxy.package(scope, send, path.subdir, path.filename, channel.private)
            except ProxyAborted as exc:
                # Returning with the body incomplete makes the server drop the connection.
                LOG.warning("%s/%s/%s: %s", channel.name, path.subdir, path.filename, exc)


def as_json_request(scope: Scope) -> Scope:
    """Read a form-encoded or untyped body as JSON: `curl -d '{...}'` sends no JSON type."""
    kept = []
    for name, value in scope["headers"]:
        if name == b"content-type":
            if not value.startswith(b"application/x-www-form-urlencoded"):
                return scope
            continue
        kept.append((name, value))
    kept.append((b"content-type", b"application/json"))
    return {**scope, "headers": kept}
