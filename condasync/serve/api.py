"""The JSON API (quetz-shaped): channels, package listings, sync actions and tasks; every
answer, errors included, is declared so that it shows in the OpenAPI schema and /docs."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, field_validator

from condasync import __version__
from condasync.repodata import parse_repodata
from condasync.serve.app import ChannelFiles, Server
from condasync.serve.db import Channel, ChannelExists
from condasync.serve.packages import list_packages
from condasync.serve.paths import CHANNEL_NAME_RE, is_channel_name
from condasync.serve.roles import (
    Identity,
    can_create_channel,
    can_delete_channel,
    can_read,
    can_synchronize,
)
from condasync.sync import KNOWN_SUBDIRS


class Error(BaseModel):
    detail: str


class ChannelIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=CHANNEL_NAME_RE.pattern, examples=["proxy-channel"])
    private: bool = False
    mirror_channel_url: str = Field(examples=["https://conda.anaconda.org/btel"])
    mirror_mode: Literal["proxy", "mirror"]
    ttl: int = Field(600, ge=0, le=10 * 365 * 86400, description="Proxy index TTL in seconds.")

    @field_validator("mirror_channel_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("mirror_channel_url must be an http:// or https:// URL")
        return value


class ChannelOut(BaseModel):
    name: str
    private: bool
    mirror_channel_url: str | None
    mirror_mode: Literal["proxy", "mirror"] | None = Field(
        description="null for a plain tree found in DIR without a database row"
    )
    ttl: int


class ActionIn(BaseModel):
    action: Literal["synchronize"]
    start_at: datetime | None = None
    repeat_every_seconds: int | None = Field(None, ge=1)


class TaskOut(BaseModel):
    id: int
    channel: str
    action: str
    status: Literal["pending", "running", "success", "failed"]
    created_at: str | None
    start_at: str | None
    started_at: str | None
    finished_at: str | None
    repeat_every_seconds: int | None
    report: dict[str, Any] | None = Field(description="The mirror report (condasync mirror --json)")
    error: str | None


class PackageOut(BaseModel):
    name: str
    latest_version: str
    current_version: str
    summary: str | None
    subdirs: list[str]
    platforms: list[str]


class Deleted(BaseModel):
    name: str
    deleted: bool


Responses = dict[int | str, dict[str, Any]]


def _err(description: str) -> dict[str, Any]:
    return {"model": Error, "description": description}


R401: Responses = {401: _err("No API key given (X-API-Key header)")}
R403: Responses = {403: _err("Invalid or revoked key, or a key without the role this needs")}
R404: Responses = {404: _err("No such channel")}
R405: Responses = {405: _err("Not possible for this kind of channel")}
R409: Responses = {409: _err("A channel with this name exists")}
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file (packages: immutable; indexes: short max-age, revalidate)",
        "content": {
            "application/octet-stream": {},
            "application/json": {},
            "application/zstd": {},
            "application/x-bzip2": {},
        },
    },
    206: {"description": "Partial content (Range)"},
    304: {"description": "Not modified (If-None-Match / If-Modified-Since)"},
    401: {"description": "Private channel and no API key"},
    403: {"description": "Private channel and a key without a role on it"},
    404: {"description": "No such channel or file (also any traversal attempt)"},
    416: {"description": "Range not satisfiable"},
    502: {"description": "Proxy channel: upstream failed or sent a corrupt file"},
    504: {"description": "Proxy channel: upstream timed out"},
}

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def caller(
    request: Request, key: Annotated[str | None, Security(api_key_header)] = None
) -> Identity | None:
    """The key's identity; 403 for a key that is unknown or revoked, None for no key."""
    if not key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    if not key:
        return None
    server: Server = request.app.state.server
    who = server.identify(key)
    if who is None:
        raise HTTPException(403, "invalid or revoked API key")
    return who


def required(who: Annotated[Identity | None, Depends(caller)]) -> Identity:
    if who is None:
        raise HTTPException(401, "an API key is needed (X-API-Key header)")
    return who


Caller = Annotated[Identity | None, Depends(caller)]
Required = Annotated[Identity, Depends(required)]
Name = Annotated[str, Path(description="Channel name")]


class _Delegate(Response):
    """Hands a request on to the raw channel-file handler (which the App normally calls)."""

    def __init__(self, files: ChannelFiles, request: Request) -> None:
        super().__init__()
        self.files, self.request = files, request

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.files(scope, receive, send)


def build_api(server: Server) -> FastAPI:
    app = FastAPIOffline(
        title="condasync",
        version=__version__,
        description="Proxy and mirror conda channels. Channel files are at "
        "`/channels/<name>/<subdir>/<file>`; the API is quetz-shaped.",
    )
    app.state.server = server
    files = ChannelFiles(server)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": str(e.get("type"))}
            for e in exc.errors()
        ]
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors
        )
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    def existing(name: str) -> Channel:
        channel = server.channel(name) if is_channel_name(name) else None
        if channel is None:
            raise HTTPException(404, f"no channel named {name!r}")
        return channel

    def readable(name: str, who: Identity | None) -> Channel:
        channel = existing(name)
        if channel.private and who is None:
            raise HTTPException(401, "this channel is private: an API key is needed")
        if not can_read(who, channel.name, channel.private):
            raise HTTPException(403, "this key has no role on this channel")
        return channel

    @app.post(
        "/api/channels",
        status_code=201,
        response_model=ChannelOut,
        responses={**R401, **R403, **R409},
        tags=["channels"],
        summary="Create a proxy or mirror channel",
    )
    def create_channel(body: ChannelIn, who: Required) -> dict[str, Any]:
        if not can_create_channel(who):
            raise HTTPException(403, "creating channels needs the server owner or maintainer role")
        if server.channel(body.name) is not None:
            raise HTTPException(409, f"channel {body.name!r} exists")
        channel = Channel(
            body.name, body.private, body.mirror_channel_url.rstrip("/"), body.mirror_mode, body.ttl
        )
        try:
            server.db.create_channel(channel, owner_key_id=who.key_id)
        except ChannelExists:
            raise HTTPException(409, f"channel {body.name!r} exists") from None
        os.makedirs(server.channel_dir(body.name), exist_ok=True)
        server.reload()
        return channel.to_dict()

    @app.get("/api/channels", response_model=list[ChannelOut], responses=R403, tags=["channels"])
    def get_channels(who: Caller) -> list[dict[str, Any]]:
        """Every channel this caller may read (private ones only with a role on them)."""
        return [c.to_dict() for c in server.channels() if can_read(who, c.name, c.private)]

    @app.get(
        "/api/channels/{name}",
        response_model=ChannelOut,
        responses={**R401, **R403, **R404},
        tags=["channels"],
    )
    def get_channel(name: Name, who: Caller) -> dict[str, Any]:
        return readable(name, who).to_dict()

    @app.delete(
        "/api/channels/{name}",
        response_model=Deleted,
        responses={**R401, **R403, **R404},
        tags=["channels"],
        summary="Delete a channel and its files (owner role)",
    )
    def delete_channel(name: Name, who: Required) -> dict[str, Any]:
        channel = existing(name)
        if not can_delete_channel(who, channel.name):
            raise HTTPException(403, "deleting a channel needs the owner role")
        server.db.delete_channel(channel.name)
        server.remove_files(channel.name)
        server.reload()
        return {"name": channel.name, "deleted": True}

    @app.get(
        "/api/channels/{name}/packages",
        response_model=list[PackageOut],
        responses={
            **R401,
            **R403,
            **R404,
            502: _err("Upstream failed (proxy channel)"),
            504: _err("Upstream timed out (proxy channel)"),
        },
        tags=["channels"],
    )
    async def get_packages(
        name: Name,
        who: Caller,
        q: Annotated[str | None, Query(description="Only names containing this")] = None,
    ) -> list[dict[str, Any]]:
        """Package names with their latest version, summary and subdirs. A proxy channel lists
        what upstream offers."""
        channel = readable(name, who)
        root = server.channel_dir(channel.name)
        if channel.mirror_mode == "proxy":
            subdirs = await _proxy_subdirs(server, channel)
        else:
            subdirs = sorted(
                p.name for p in _subdir_folders(root) if (p / "repodata.json").is_file()
            )
        indexes = await asyncio.to_thread(_read_indexes, root, subdirs)
        channeldata = await asyncio.to_thread(_read_json, root / "channeldata.json")
        return list_packages(indexes, channeldata, q)

    @app.put(
        "/api/channels/{name}/actions",
        response_model=TaskOut,
        responses={**R401, **R403, **R404, **R405},
        tags=["tasks"],
        summary="Synchronize a mirror channel in the background",
    )
    def channel_action(name: Name, body: ActionIn, who: Required) -> dict[str, Any]:
        """Returns the task; while one is pending or running, returns that one instead."""
        channel = existing(name)
        if not can_synchronize(who, channel.name):
            raise HTTPException(403, "synchronize needs the channel owner or maintainer role")
        if channel.mirror_mode != "mirror":
            kind = "a proxy channel" if channel.mirror_mode == "proxy" else "not a mirror channel"
            raise HTTPException(405, f"cannot synchronize {name!r}: {kind}")
        task, _new = server.tasks.synchronize(channel, body.start_at, body.repeat_every_seconds)
        return task.to_dict()

    @app.get(
        "/api/tasks/{task_id}", response_model=TaskOut, responses={404: _err("No such task")},
        tags=["tasks"],
    )  # fmt: skip
    def get_task(task_id: int) -> dict[str, Any]:
        task = server.db.task(task_id)
        if task is None:
            raise HTTPException(404, f"no task {task_id}")
        return task.to_dict()

    @app.post(
        "/api/channels/{name}/files",
        status_code=201,
        responses={**R401, **R403, **R404, 405: _err("The channel is read only")},
        tags=["channels"],
        summary="Upload packages (proxy and mirror channels are read only)",
    )
    def upload(name: Name, who: Required) -> None:
        channel = existing(name)
        if not can_synchronize(who, channel.name):
            raise HTTPException(403, "uploading needs the channel owner or maintainer role")
        kind = channel.mirror_mode or "static"
        raise HTTPException(405, f"channel {name!r} is read only ({kind} channel)")

    async def channel_file(name: Name, subdir: str, filename: str, request: Request) -> Response:
        """A channel file: an index or a package. Proxy channels fetch from upstream on a
        miss. For a private channel send the key as X-API-Key, or in the URL as
        /t/<key>/channels/..."""
        return _Delegate(files, request)

    async def channel_data(name: Name, request: Request) -> Response:
        """A channel's channeldata.json."""
        return _Delegate(files, request)

    for method in ("GET", "HEAD"):
        for path, endpoint in (
            ("/channels/{name}/{subdir}/{filename}", channel_file),
            ("/channels/{name}/channeldata.json", channel_data),
        ):
            app.add_api_route(
                path,
                endpoint,
                methods=[method],
                operation_id=f"{method.lower()}_{endpoint.__name__}",
                response_class=Response,
                responses=FILE_RESPONSES,
                tags=["files"],
            )

    return app


def _subdir_folders(root: os.PathLike[str]) -> list[Any]:
    from pathlib import Path as _P

    base = _P(root)
    if not base.is_dir():
        return []
    return [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]


async def _proxy_subdirs(server: Server, channel: Channel) -> list[str]:
    from condasync import fetch
    from condasync.serve.proxy import ProxyError
    from condasync.urls import join

    proxy = server.proxy(channel)
    subdirs: list[str] = []
    if await proxy.channeldata():
        doc = _read_json(server.channel_dir(channel.name) / "channeldata.json") or {}
        listed = doc.get("subdirs")
        if isinstance(listed, list):
            subdirs = [s for s in listed if isinstance(s, str)]
    if not subdirs:

        async def probe(subdir: str) -> str | None:
            for name in ("repodata.json.zst", "repodata.json"):
                try:
                    if await fetch.exists(proxy.client, join(proxy.base, subdir, name)):
                        return subdir
                except Exception:
                    return None
            return None

        found = await asyncio.gather(*(probe(s) for s in KNOWN_SUBDIRS))
        subdirs = [s for s in found if s]
    ready = []
    for subdir in dict.fromkeys(subdirs):
        try:
            await proxy.index(subdir)
        except ProxyError as exc:
            if exc.status != 404:
                raise HTTPException(exc.status, exc.message) from None
            continue
        ready.append(subdir)
    return ready


def _read_json(path: os.PathLike[str]) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            doc = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _read_indexes(root: os.PathLike[str], subdirs: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for subdir in subdirs:
        try:
            with open(os.path.join(root, subdir, "repodata.json"), "rb") as fh:
                out[subdir] = parse_repodata(fh.read(), subdir).records
        except (OSError, ValueError):
            continue
    return out
