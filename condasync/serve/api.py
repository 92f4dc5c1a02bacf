"""The JSON API (quetz-shaped): channels, package listings, sync actions and tasks; every
answer, errors included, is declared so that it shows in the OpenAPI schema and /docs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline

from condasync import __version__
from condasync.serve import quetzshapes
from condasync.serve.access import Caller, Required
from condasync.serve.access import existing as existing_channel
from condasync.serve.access import readable as readable_channel
from condasync.serve.catalog import channel_subdirs, read_indexes, read_json
from condasync.serve.closure_settings import check_settings, closure_settings
from condasync.serve.db import Channel, ChannelExists
from condasync.serve.packages import list_packages
from condasync.serve.quetzapi import add_quetz_routes
from condasync.serve.quetzsettings import describe_channels, quetz_settings
from condasync.serve.roles import (
    Identity,
    can_create_channel,
    can_delete_channel,
    can_read,
    can_synchronize,
)
from condasync.serve.schemas import (
    FILE_RESPONSES,
    R401,
    R403,
    R404,
    R405,
    R409,
    ActionIn,
    ChannelIn,
    ChannelOut,
    Deleted,
    JobTaskOut,
    PackageOut,
    TaskOut,
    err,
)
from condasync.serve.server import ChannelFiles, Server

Name = Annotated[str, Path(description="Channel name")]


class _Delegate(Response):
    """Hands a request on to the raw channel-file handler (which the App normally calls)."""

    def __init__(self, files: ChannelFiles, request: Request) -> None:
        super().__init__()
        self.files, self.request = files, request

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.files(scope, receive, send)


def build_api(server: Server) -> FastAPI:
    """The app: condasync's channel API, quetz's routes, and the channel files."""
    app = FastAPIOffline(
        title="condasync",
        version=__version__,
        description="Proxy and mirror conda channels. Channel files are at "
        "`/channels/<name>/<subdir>/<file>`; the API is quetz-shaped.",
    )
    app.state.server = server
    _validation_errors(app)
    _channel_routes(app, server)
    _package_list_route(app, server)
    _task_routes(app, server)
    add_quetz_routes(app, server)
    _file_routes(app, ChannelFiles(server))
    return app


def _validation_errors(app: FastAPI) -> None:
    """422 answers that say which field is wrong, in one `message` line too."""

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


def _channel_routes(app: FastAPI, server: Server) -> None:
    """Create, list, read and delete channels; a channel's package list."""

    def existing(name: str) -> Channel:
        return existing_channel(server, name)

    def readable(name: str, who: Identity | None) -> Channel:
        return readable_channel(server, name, who)

    @app.post(
        "/api/channels",
        status_code=201,
        response_model=ChannelOut,
        responses={**R401, **R403, **R409},
        tags=["channels"],
        summary="Create a proxy or mirror channel",
    )
    def create_channel(body: ChannelIn, who: Required) -> dict[str, Any]:
        """quetz's body is honoured: description, size_limit, metadata (includelist and
        excludelist filter a mirror; proxylist names packages it proxies), and `actions`: a
        mirror channel's first synchronize starts now (or at start_at) unless it is []."""
        if not can_create_channel(who):
            raise HTTPException(403, "creating channels needs the server owner or maintainer role")
        if server.channel(body.name) is not None:
            raise HTTPException(409, f"channel {body.name!r} exists")
        try:
            settings = quetz_settings(body)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        channel = Channel(
            body.name,
            body.private,
            body.mirror_channel_url.rstrip("/"),
            body.mirror_mode,
            body.ttl,
            {**settings, **closure_settings(body)},
        )
        problem = check_settings(channel.settings)
        if problem is not None:
            raise HTTPException(422, problem)
        try:
            server.db.create_channel(channel, owner_key_id=who.key_id)
        except ChannelExists:
            raise HTTPException(409, f"channel {body.name!r} exists") from None
        server.store.create(body.name)
        server.reload()
        actions = ["synchronize"] if body.actions is None else body.actions
        if body.mirror_mode == "mirror" and actions:
            server.tasks.synchronize(
                channel, body.start_at, body.repeat_every_seconds, action=actions[0]
            )
        return describe_channels(server, [channel])[0]

    @app.get("/api/channels", response_model=list[ChannelOut], responses=R403, tags=["channels"])
    def get_channels(who: Caller) -> list[dict[str, Any]]:
        """Every channel this caller may read (private ones only with a role on them)."""
        return describe_channels(
            server, [c for c in server.channels() if can_read(who, c.name, c.private)]
        )

    @app.get(
        "/api/channels/{name}",
        response_model=ChannelOut,
        responses={**R401, **R403, **R404},
        tags=["channels"],
    )
    def get_channel(name: Name, who: Caller) -> dict[str, Any]:
        return describe_channels(server, [readable(name, who)])[0]

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
        proxy = server.remove_files(channel.name)
        if proxy is not None:
            anyio.from_thread.run(proxy.close)  # we run in a worker thread of the event loop
        server.reload()
        return {"name": channel.name, "deleted": True}


def _package_list_route(app: FastAPI, server: Server) -> None:
    """A channel's package list (a proxy channel's: what upstream offers)."""

    @app.get(
        "/api/channels/{name}/packages",
        response_model=list[PackageOut],
        responses={
            **R401,
            **R403,
            **R404,
            502: err("Upstream failed (proxy channel)"),
            504: err("Upstream timed out (proxy channel)"),
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
        channel = await asyncio.to_thread(readable_channel, server, name, who)
        subdirs = await channel_subdirs(server, channel)
        indexes = await asyncio.to_thread(read_indexes, server.store, channel.name, subdirs)
        channeldata = await asyncio.to_thread(read_json, server.store, channel.name)
        return list_packages(indexes, channeldata, q)


def _task_routes(app: FastAPI, server: Server) -> None:
    """Synchronize a mirror channel, and read a task."""

    @app.put(
        "/api/channels/{name}/actions",
        response_model=JobTaskOut,
        responses={**R401, **R403, **R404, **R405},
        tags=["tasks"],
        summary="Synchronize a mirror channel in the background",
    )
    def channel_action(name: Name, body: ActionIn, who: Required) -> dict[str, Any]:
        """Returns the task; while one is pending or running, returns that one instead."""
        channel = existing_channel(server, name)
        if not can_synchronize(who, channel.name):
            raise HTTPException(403, "synchronize needs the channel owner or maintainer role")
        if channel.mirror_mode != "mirror":
            kind = "a proxy channel" if channel.mirror_mode == "proxy" else "not a mirror channel"
            raise HTTPException(405, f"cannot synchronize {name!r}: {kind}")
        task, _new = server.tasks.synchronize(
            channel, body.start_at, body.repeat_every_seconds, action=body.action
        )
        return {**task.to_dict(), **quetzshapes.job(task.to_dict(), task.created_at, task.start_at)}

    @app.get(
        "/api/tasks/{task_id}", response_model=TaskOut, responses={404: err("No such task")},
        tags=["tasks"],
    )  # fmt: skip
    def get_task(task_id: int) -> dict[str, Any]:
        task = server.db.task(task_id)
        if task is None:
            raise HTTPException(404, f"no task {task_id}")
        return task.to_dict()


def _file_routes(app: FastAPI, files: ChannelFiles) -> None:
    """Channel files under /channels/ and quetz's /get/, for GET and HEAD: one code path."""

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
            ("/get/{name}/{subdir}/{filename}", channel_file),  # quetz's URLs: the same files
            ("/get/{name}/channeldata.json", channel_data),
        ):
            scheme = "_quetz" if path.startswith("/get/") else ""
            app.add_api_route(
                path,
                endpoint,
                methods=[method],
                operation_id=f"{method.lower()}_{endpoint.__name__}{scheme}",
                response_class=Response,
                responses=FILE_RESPONSES,
                tags=["files"],
            )
