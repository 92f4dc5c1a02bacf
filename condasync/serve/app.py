"""The server object (channel registry, database, proxies, tasks) and the ASGI entry point,
which answers channel files itself and hands everything else to the FastAPI app."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from condasync.serve.db import Channel, Database
from condasync.serve.files import Receive, Scope, Send, send_file, send_text
from condasync.serve.paths import FilePath, is_channel_name, is_package, parse_file_path
from condasync.serve.proxy import ProxyChannel, ProxyError
from condasync.serve.roles import Identity, can_read
from condasync.serve.stream import ProxyAborted
from condasync.serve.tasks import TaskRunner

LOG = logging.getLogger("uvicorn.error")

STATIC_RECHECK = 2.0  # seconds a plain tree found in DIR is trusted to still be there
PROXY_INDEXES = ("repodata.json", "repodata.json.zst")


class Server:
    """Shared state of one `condasync serve` process."""

    def __init__(self, root: Path, db: Database, upstream_timeout: float = 10.0) -> None:
        self.root = Path(os.path.realpath(root))
        self.root_str = str(self.root)
        self.db = db
        self.upstream_timeout = upstream_timeout
        self.tasks = TaskRunner(db, self.root)
        self._channels: dict[str, Channel] = {}
        self._proxies: dict[str, ProxyChannel] = {}
        self._static: dict[str, float] = {}  # plain trees seen lately: name -> when
        self._lock = threading.Lock()
        self.reload()

    # channels --------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read channel settings from the database (after any API change)."""
        channels = {c.name: c for c in self.db.channels()}
        with self._lock:
            self._channels = channels

    def channel(self, name: str) -> Channel | None:
        """A channel with a row, or a plain tree in DIR (served read-only, public)."""
        found = self._channels.get(name)
        if found is not None:
            return found
        now = time.monotonic()
        seen = self._static.get(name)
        if seen is not None and now - seen < STATIC_RECHECK:
            return Channel(name, False, None, None)
        if is_channel_name(name) and os.path.isdir(os.path.join(self.root_str, name)):
            if len(self._static) > 10_000:
                self._static.clear()
            self._static[name] = now
            return Channel(name, False, None, None)
        return None

    def channels(self) -> list[Channel]:
        listed = dict(self._channels)
        try:
            entries = sorted(os.listdir(self.root))
        except OSError:
            entries = []
        for entry in entries:
            if entry not in listed and is_channel_name(entry) and (self.root / entry).is_dir():
                listed[entry] = Channel(entry, False, None, None)
        return [listed[name] for name in sorted(listed)]

    def channel_dir(self, name: str) -> Path:
        return self.root / name

    def proxy(self, channel: Channel) -> ProxyChannel:
        proxy = self._proxies.get(channel.name)
        if proxy is None or proxy.url != channel.mirror_channel_url or proxy.ttl != channel.ttl:
            proxy = ProxyChannel(
                channel.name,
                channel.mirror_channel_url or "",
                self.channel_dir(channel.name),
                channel.ttl,
                self.upstream_timeout,
            )
            self._proxies[channel.name] = proxy
        return proxy

    def remove_files(self, name: str) -> ProxyChannel | None:
        """Forget a channel and delete its folder; returns its proxy, for the caller to close."""
        proxy = self._proxies.pop(name, None)
        self._static.pop(name, None)
        shutil.rmtree(self.channel_dir(name), ignore_errors=True)
        return proxy

    async def close(self) -> None:
        self.tasks.stop()
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
        channel = self.server.channel(path.channel) if path is not None else None
        if path is None or channel is None:
            await send_text(send, 404, "not found", head=head)
            return
        if channel.private:
            key = request_key(scope, path.token)
            if key is None:
                await send_text(send, 401, "this channel needs an API key", head=head)
                return
            who = await asyncio.to_thread(self.server.identify, key)
            if not can_read(who, channel.name, True):
                await send_text(send, 403, "this key has no role on this channel", head=head)
                return
        if channel.mirror_mode == "proxy":
            await self._proxy(scope, send, channel, path)
            return
        if not await send_file(
            scope, send, self._path(channel, path), path.filename, channel.private
        ):
            await send_text(send, 404, "not found", head=head)

    def _path(self, channel: Channel, path: FilePath) -> str:
        # Every segment is validated (no "..", no separator, no dot-file), so the join stays
        # in the channel; send_file refuses a symlinked file as well.
        return os.path.join(self.server.root_str, channel.name, path.relpath)

    async def _proxy(self, scope: Scope, send: Send, channel: Channel, path: FilePath) -> None:
        proxy = self.server.proxy(channel)
        head = scope["method"] == "HEAD"
        if path.subdir and path.filename in PROXY_INDEXES:
            try:
                meta, stale = await proxy.index(path.subdir)
            except ProxyError as exc:
                await send_text(send, exc.status, exc.message, head=head)
                return
            extra = proxy.stale_headers(meta) if stale else []
            where = self._path(channel, path)
            if not await send_file(scope, send, where, path.filename, channel.private, extra):
                await send_text(send, 404, "not found", head=head)
            return
        if not path.subdir:
            where = self._path(channel, path)
            if not (
                await proxy.channeldata()
                and await send_file(scope, send, where, path.filename, channel.private)
            ):
                await send_text(send, 404, "not found", head=head)
            return
        if not is_package(path.filename):
            await send_text(send, 404, "not found", head=head)
        elif not await send_file(
            scope, send, self._path(channel, path), path.filename, channel.private
        ):
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


class App:
    """The ASGI application: channel files first, the API (FastAPI) for everything else."""

    def __init__(self, server: Server) -> None:
        from condasync.serve.api import build_api

        self.server = server
        self.files = ChannelFiles(server)
        self.api = build_api(server)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(("/channels/", "/t/")):
                await self.files(scope, receive, send)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                scope = as_json_request(scope)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.server.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
