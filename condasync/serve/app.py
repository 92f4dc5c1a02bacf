"""The ASGI application: channel files first, the API (FastAPI, built here) for the rest."""

from __future__ import annotations

from typing import Any

from condasync.serve.accesslog import AccessLog
from condasync.serve.api import build_api
from condasync.serve.files import Receive, Scope, Send
from condasync.serve.metrics import METRICS
from condasync.serve.observe import Observer, install_log_filter
from condasync.serve.pages import add_pages, is_page
from condasync.serve.server import ChannelFiles, Server, as_json_request


class App:
    """The ASGI application: channel files first, the API (FastAPI) for everything else."""

    def __init__(
        self,
        server: Server,
        access_log: AccessLog | None = None,
        metrics_key_only: bool = False,
        metrics: bool = True,
    ) -> None:
        self.server = server
        self.files = ChannelFiles(server)
        self.api = build_api(server)
        self.pages = add_pages(self.api, server)
        self.observer = Observer(
            server, self._route, access_log, metrics_key_only, METRICS if metrics else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.observer(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.api(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith(("/channels/", "/t/", "/get/")) and not is_page(path):
            await self.files(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            scope = as_json_request(scope)
        await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "lifespan.startup":
                install_log_filter()  # after uvicorn configured its loggers
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.server.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
