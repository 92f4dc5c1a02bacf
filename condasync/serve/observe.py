"""What `serve` tells its operators, around every request: a request id (`X-Request-Id`), the
metrics, the JSON access log and errors on stderr carrying the same id; and the endpoints
`/metrics`, `/healthz` and `/readyz`."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from condasync.serve.accesslog import AccessLog, clean_path
from condasync.serve.files import Message, Receive, Scope, Send, send_text
from condasync.serve.health import readiness
from condasync.serve.metrics import CONTENT_TYPE, METRICS, ServeMetrics
from condasync.serve.paths import INDEX_NAMES, is_package
from condasync.serve.server import Server, request_key

LOG = logging.getLogger("uvicorn.error")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
CACHE_KEY = "condasync.cache"  # set in the scope by whoever knows (the proxy): hit, miss, ...
CACHE_SCAN_EVERY = 30.0  # seconds between scans of the proxy caches' sizes (on scrape)
_API_CHANNEL = re.compile(r"^/api/channels/([^/]+)")

App = Callable[[Scope, Receive, Send], Awaitable[None]]
# A request id: this process's random prefix and a counter (unique across replicas, and a
# fraction of uuid4's cost on a path that answers 304s in ~150 µs).
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def classify(path: str) -> tuple[str, str]:
    """(kind, channel name or "") of a request path, the token already removed."""
    if path.startswith("/channels/"):
        parts = path.split("/")
        name = parts[2] if len(parts) > 2 else ""
        last = parts[-1]
        if len(parts) >= 5:
            if last.endswith(".msgpack.zst"):
                return "shard", name
            if last in INDEX_NAMES:
                return "index", name
            if is_package(last):
                return "package", name
        elif len(parts) == 4 and last == "channeldata.json":
            return "index", name
        return "page", name
    found = _API_CHANNEL.match(path)
    return "api", found.group(1) if found else ""


class RequestIdFilter(logging.Filter):
    """Prefixes log records written while a request is handled with its request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        if rid and not str(record.msg).startswith("request_id="):
            record.msg = f"request_id={rid} {record.msg}"
        return True


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RequestIdFilter) for f in logger.filters):
        logger.addFilter(RequestIdFilter())


class Observer:
    """Wraps the application: answers /metrics, /healthz and /readyz itself, and measures,
    logs and tags every other request."""

    def __init__(
        self,
        server: Server,
        app: App,
        access_log: AccessLog | None = None,
        metrics_key_only: bool = False,
        metrics: ServeMetrics | None = METRICS,
    ) -> None:
        self.server = server
        self.app = app
        self.access_log = access_log
        self.metrics_key_only = metrics_key_only
        self.metrics = metrics
        self._scanned = 0.0
        self._scanning: asyncio.Future[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        rid = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        REQUEST_ID.set(rid)
        state: dict[str, Any] = {"status": 0, "bytes": 0}
        header = (b"x-request-id", rid.encode())

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        path: str = scope["path"]
        try:
            if path in ("/metrics", "/healthz", "/readyz"):
                await self._own(path, scope, tagged)
            else:
                await self.app(scope, receive, tagged)
        except Exception as exc:
            if not state["status"]:
                state["status"] = 500
            LOG.error("%s %s: %s: %s", scope["method"], clean_path(scope), type(exc).__name__, exc)
            raise
        finally:
            self._done(scope, state, rid, time.perf_counter() - started)

    def _done(self, scope: Scope, state: dict[str, Any], rid: str, seconds: float) -> None:
        status = state["status"] or 499  # the client went away before an answer
        path = clean_path(scope)
        kind, channel = classify(path)
        if channel and not self.server.known_channel(channel):
            channel = ""  # never a label (or a log field) for any name a client makes up
        if self.metrics is not None:
            self.metrics.observe_request(channel, kind, status, state["bytes"], seconds)
        if self.access_log is not None:
            self.access_log.write(
                method=scope["method"], path=path, status=status, sent=state["bytes"],
                seconds=seconds, channel=channel or None, cache=scope.get(CACHE_KEY),
                request_id=rid,
            )  # fmt: skip
        if status >= 500:
            LOG.error("%s %s answered %d", scope["method"], path, status)

    async def _own(self, path: str, scope: Scope, send: Send) -> None:
        head = scope["method"] == "HEAD"
        if scope["method"] not in ("GET", "HEAD"):
            await send_text(send, 405, "method not allowed", [(b"allow", b"GET, HEAD")])
        elif path == "/healthz":
            await send_text(send, 200, "ok", head=head)
        elif path == "/readyz":
            reason = await readiness(self.server)
            if reason is None:
                await send_text(send, 200, "ready", head=head)
            else:
                await send_text(send, 503, f"not ready: {reason}", head=head)
        else:
            await self._metrics(scope, send, head)

    async def _metrics(self, scope: Scope, send: Send, head: bool) -> None:
        if self.metrics is None:
            await send_text(send, 404, "metrics are off (--no-metrics)", head=head)
            return
        if self.metrics_key_only:
            key = request_key(scope)
            if key is None:
                await send_text(send, 401, "/metrics needs an API key", head=head)
                return
            who = await asyncio.to_thread(self.server.identify, key)
            if who is None:  # a wrong or revoked key is unauthenticated, as on the API
                await send_text(send, 401, "invalid or revoked API key", head=head)
                return
            if who.role is None:
                await send_text(send, 403, "/metrics needs a key with a server role", head=head)
                return
        await self._scan_caches()
        body = self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _scan_caches(self) -> None:
        """Proxy cache sizes, from a listing of each proxy channel at most every 30 s."""
        if time.monotonic() - self._scanned < CACHE_SCAN_EVERY:
            return
        if self._scanning is None or self._scanning.done():
            self._scanned = time.monotonic()
            self._scanning = asyncio.ensure_future(asyncio.to_thread(self._scan))
        try:
            await asyncio.wait_for(asyncio.shield(self._scanning), 5.0)
        except asyncio.TimeoutError:
            pass  # a slow store: this scrape shows the last sizes, the next one the new ones
        except Exception as exc:  # a failing store must not break /metrics
            LOG.warning("scanning the proxy caches failed: %s", exc)

    def _scan(self) -> None:
        assert self.metrics is not None
        for channel in self.server.channels():
            if channel.mirror_mode != "proxy":
                continue
            storage = self.server.store.storage(channel.name)
            size = files = 0
            for subdir in self.server.store.subdirs(channel.name):
                for name, (length, _mtime) in storage.listing(subdir).items():
                    if is_package(name):
                        size += length
                        files += 1
            self.metrics.set_cache(channel.name, size, files)
