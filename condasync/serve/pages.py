"""The pages people browse, server-rendered: `/` (channels), `/channels/<name>/` (packages,
search, synchronize history or cache figures), `/channels/<name>/packages/<package>`, and the
login form. Keys come from the API's headers or the session cookie, never from the URL."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from condasync.serve import html
from condasync.serve.catalog import channel_subdirs
from condasync.serve.db import Channel
from condasync.serve.paths import is_channel_name
from condasync.serve.proxy import ProxyError
from condasync.serve.roles import Identity, can_read, can_synchronize
from condasync.serve.rows import TaskRow
from condasync.serve.server import Server
from condasync.serve.session import (
    clear_cookie_header,
    cookie_key,
    csrf_ok,
    csrf_token,
    header_key,
    safe_next,
    same_origin,
    set_cookie_header,
)
from condasync.serve.summary import PAGE_SIZE, WAIT_BELOW, Summaries

# Paths under /channels/ that are pages, not channel files: no subdir is named "packages" or
# "synchronize", and a file path always has a subdir and a file name (or is channeldata.json).
PAGE_PATH = re.compile(r"^/channels/[^/]+/?$|^/channels/[^/]+/(packages/[^/]+|synchronize)$")
HISTORY = 20


def is_page(path: str) -> bool:
    return bool(PAGE_PATH.match(path))


class Pages:
    """The page handlers of one server, with the package summaries they read."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.summaries = Summaries(server.root / ".condasync" / "pages", server.store)

    # who is asking -------------------------------------------------------------------------

    async def viewer(self, request: Request) -> tuple[Identity | None, html.Viewer, bool]:
        """(identity, viewer, a key was given but is not valid)."""
        key = header_key(request.headers)
        from_cookie = key is None
        if key is None:
            key = cookie_key(request.cookies)
        if key is None:
            return None, html.Viewer(), False
        who = await asyncio.to_thread(self.server.identify, key)
        if who is None:
            return None, html.Viewer(), True
        label = f"#{who.key_id}" + (f" ({who.role})" if who.role else "")
        return who, html.Viewer(label, csrf_token(key) if from_cookie else None), False

    def _denied(
        self, request: Request, who: Identity | None, viewer: html.Viewer, name: str
    ) -> HTMLResponse:
        """A private channel shows nothing of itself: a login form naming none of its packages."""
        status = 401 if who is None else 403
        message = "This channel needs an API key." if who is None else (
            "This key cannot read this channel."
        )  # fmt: skip
        # Back to the channel page after logging in, not the URL asked for: a 401 names none
        # of the channel's packages, not even one the visitor typed.
        body = html.login_page(f"/channels/{name}/", viewer, message)
        return HTMLResponse(body, status, headers=_no_store())

    def info(self, request: Request, channel: Channel, last: dict[str, Any] | None) -> Any:
        base = str(request.base_url).rstrip("/")
        return html.ChannelInfo(
            channel.name,
            channel.mirror_mode or "static",
            channel.mirror_channel_url,
            channel.private,
            f"{base}/channels/{channel.name}",
            last,
        )

    def recent_tasks(self, name: str, limit: int = HISTORY) -> list[dict[str, Any]]:
        db = self.server.db
        with db.session() as s:
            rows = s.scalars(
                select(TaskRow)
                .where(TaskRow.channel == name)
                .order_by(TaskRow.id.desc())
                .limit(limit)
            ).all()
            return [db._task(r).to_dict() for r in rows]

    # pages ---------------------------------------------------------------------------------

    async def front(self, request: Request) -> Response:
        who, viewer, _bad = await self.viewer(request)

        def gather() -> list[html.ChannelInfo]:
            out = []
            for c in self.server.channels():
                if can_read(who, c.name, c.private):
                    tasks = self.recent_tasks(c.name, 1) if c.mirror_mode == "mirror" else []
                    out.append(self.info(request, c, tasks[0] if tasks else None))
            return out

        channels = await asyncio.to_thread(gather)
        return HTMLResponse(html.front(channels, viewer), headers=_no_store())

    async def _channel(
        self, request: Request, name: str
    ) -> tuple[Channel | None, Identity | None, html.Viewer, Response | None]:
        who, viewer, _bad = await self.viewer(request)
        channel = await self.server.find(name) if is_channel_name(name) else None
        if channel is None:
            body = html.page("not found", f"<h1>No channel {html.e(name)}</h1>", viewer)
            return None, who, viewer, HTMLResponse(body, 404)
        if not can_read(who, channel.name, channel.private):
            return None, who, viewer, self._denied(request, who, viewer, name)
        return channel, who, viewer, None

    async def _fresh_summary(self, channel: Channel) -> None:
        """Make the summary match the indexes (a proxy first makes sure its indexes are
        cached, refreshed as a client's request would)."""
        if channel.mirror_mode == "proxy":
            proxy = self.server.proxy(channel)
            subdirs = await asyncio.to_thread(self.server.store.subdirs, channel.name)
            if not subdirs:
                await channel_subdirs(self.server, channel)  # fetches upstream's indexes
            for subdir in subdirs:
                with contextlib.suppress(ProxyError):  # the cached copy is still listed
                    await proxy.index(subdir)
        await asyncio.to_thread(self.summaries.refresh, channel.name, False, WAIT_BELOW)

    async def channel(self, request: Request, name: str) -> Response:
        channel, who, viewer, denied = await self._channel(request, name)
        if denied is not None or channel is None:
            return denied or Response(status_code=404)
        query = request.query_params.get("q", "").strip()[:100]
        offset = _int(request.query_params.get("offset"))
        await self._fresh_summary(channel)
        packages, total = await asyncio.to_thread(
            self.summaries.packages, channel.name, query, offset
        )
        extra, cached = "", None
        if channel.mirror_mode == "mirror":
            tasks = await asyncio.to_thread(self.recent_tasks, channel.name)
            allowed = who is not None and can_synchronize(who, channel.name)
            extra = html.history(tasks, allowed, channel.name, viewer.csrf)
        elif channel.mirror_mode == "proxy":
            usage = await asyncio.to_thread(self.server.cache.usage, channel.name)
            paths = await asyncio.to_thread(self.server.cache.cached_paths, channel.name)
            cached = {_name_of(p) for p in paths}
            extra = html.cache_panel(
                usage.bytes, usage.files, usage.hit_ratio, usage.hits, usage.misses
            )
        info = self.info(request, channel, None)
        body = html.channel_page(
            info, packages, total, query, offset, viewer, extra, cached, PAGE_SIZE
        )
        return HTMLResponse(body, headers=_no_store())

    async def package(self, request: Request, name: str, package: str) -> Response:
        channel, _who, viewer, denied = await self._channel(request, name)
        if denied is not None or channel is None:
            return denied or Response(status_code=404)
        await self._fresh_summary(channel)
        row, builds = await asyncio.to_thread(self.summaries.package, channel.name, package)
        if row is None:
            body = html.page("not found", f"<h1>No package {html.e(package)}</h1>", viewer)
            return HTMLResponse(body, 404, headers=_no_store())
        info = self.info(request, channel, None)
        return HTMLResponse(html.package_page(info, row, builds, viewer), headers=_no_store())

    async def synchronize(self, request: Request, name: str) -> Response:
        """The Synchronize button without JavaScript: a form post with the CSRF token."""
        form = await _form(request)
        key = header_key(request.headers)
        if key is None:
            key = cookie_key(request.cookies)
            if (
                key is None
                or not csrf_ok(key, form.get("csrf"))
                or not same_origin(request.headers)
            ):
                return HTMLResponse("<h1>Forbidden: missing or wrong CSRF token</h1>", 403)
        who = await asyncio.to_thread(self.server.identify, key)
        channel = await self.server.find(name) if is_channel_name(name) else None
        if channel is None or who is None or not can_synchronize(who, channel.name):
            return HTMLResponse("<h1>Forbidden</h1>", 403)
        if channel.mirror_mode != "mirror":
            return HTMLResponse("<h1>Only mirror channels synchronize</h1>", 405)
        await asyncio.to_thread(self.server.tasks.synchronize, channel, None, None)
        return RedirectResponse(f"/channels/{channel.name}/", 303)

    async def login_form(self, request: Request) -> Response:
        _who, viewer, _bad = await self.viewer(request)
        next_path = safe_next(request.query_params.get("next"))
        return HTMLResponse(html.login_page(next_path, viewer), headers=_no_store())

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        next_path = safe_next(form.get("next"))
        if not same_origin(request.headers):
            return HTMLResponse("<h1>Forbidden: cross-site login</h1>", 403)
        key = (form.get("key") or "").strip()
        who = await asyncio.to_thread(self.server.identify, key) if key else None
        if who is None:
            body = html.login_page(next_path, html.Viewer(), "Unknown or revoked API key.")
            return HTMLResponse(body, 401, headers=_no_store())
        response = RedirectResponse(next_path, 303)
        secure = request.url.scheme == "https"
        response.headers.append("set-cookie", set_cookie_header(key, secure))
        return response

    async def logout(self, request: Request) -> Response:
        form = await _form(request)
        key = cookie_key(request.cookies)
        if key is not None and not csrf_ok(key, form.get("csrf")):
            return HTMLResponse("<h1>Forbidden: missing or wrong CSRF token</h1>", 403)
        response = RedirectResponse("/", 303)
        response.headers.append("set-cookie", clear_cookie_header())
        return response


def add_pages(app: FastAPI, server: Server) -> Pages:
    """Register the pages on the FastAPI app (the App sends page paths under /channels/ here)."""
    pages = Pages(server)
    before = list(app.router.routes)
    server.tasks.on_synced.append(lambda name: pages.summaries.refresh(name, force=True))
    route = app.add_api_route
    route("/", pages.front, methods=["GET", "HEAD"], include_in_schema=False)
    route("/login", pages.login_form, methods=["GET", "HEAD"], include_in_schema=False)
    route("/login", pages.login, methods=["POST"], include_in_schema=False)
    route("/logout", pages.logout, methods=["POST"], include_in_schema=False)

    async def slash(name: str) -> Response:
        return RedirectResponse(f"/channels/{name}/", 308)

    route("/channels/{name}", slash, methods=["GET", "HEAD"], include_in_schema=False)
    route("/channels/{name}/", pages.channel, methods=["GET", "HEAD"], include_in_schema=False)
    route(
        "/channels/{name}/packages/{package}",
        pages.package,
        methods=["GET", "HEAD"],
        include_in_schema=False,
    )
    route(
        "/channels/{name}/synchronize",
        pages.synchronize,
        methods=["POST"],
        include_in_schema=False,
    )
    # Before the API's /channels/{name}/{subdir}/{filename}, which would take packages/<name>.
    added = [r for r in app.router.routes if r not in before]
    app.router.routes[:] = added + before
    return pages


async def _form(request: Request) -> dict[str, str]:
    """A url-encoded form body (parsed here: no python-multipart needed)."""
    body = await request.body()
    parsed = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    return {k: v[0] for k, v in parsed.items() if v}


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


def _name_of(path: str) -> str:
    filename = path.rsplit("/", 1)[-1]
    return filename.rsplit("-", 2)[0]


def _no_store() -> dict[str, str]:
    return {"cache-control": "no-store"}
