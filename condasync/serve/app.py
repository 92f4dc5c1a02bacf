"""The ASGI application: channel files first, the API (FastAPI, built here) for the rest."""

from __future__ import annotations

from typing import Any

from condasync.serve.api import build_api
from condasync.serve.files import Receive, Scope, Send
from condasync.serve.pages import add_pages, is_page
from condasync.serve.server import ChannelFiles, Server, as_json_request


class App:
    """The ASGI application: channel files first, the API (FastAPI) for everything else."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.files = ChannelFiles(server)
        self.api = build_api(server)
        self.pages = add_pages(self.api, server)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(("/channels/", "/t/", "/get/")) and not is_page(path):
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
