"""quetz's read API and mirroring extras, registered from build_api: paginated channels and
packages, package detail and versions, members, users and roles (API keys stand in for users),
/api/me, jobs (our sync tasks), PATCH of channel settings, and uploads refused with 405."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Path, Query

from condasync.serve import quetzdb, quetzshapes
from condasync.serve.access import Caller, Required, existing, readable
from condasync.serve.catalog import channel_subdirs, read_indexes, read_json
from condasync.serve.db import Channel
from condasync.serve.packages import list_packages
from condasync.serve.quetzsettings import apply_patch, describe_channels
from condasync.serve.roles import Identity, can_read, can_synchronize
from condasync.serve.schemas import R401, R403, R404, R405, err
from condasync.serve.server import Server

Name = Annotated[str, Path(description="Channel name")]
Skip = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=-1, description="-1: all")]
JOB_STATUSES = ("pending", "queued", "running", "success", "failed", "timeout", "cancelled")
ELEVATED = ("owner", "maintainer")


def add_quetz_routes(app: FastAPI, server: Server) -> None:
    """Register every quetz-shaped route on app."""
    _channel_routes(app, server)
    _package_routes(app, server)
    _member_routes(app, server)
    _user_routes(app, server)
    _job_routes(app, server)
    _upload_routes(app, server)


_listings: dict[str, tuple[object, list[dict[str, Any]]]] = {}


def _read_listing(server: Server, name: str, subdirs: list[str]) -> list[dict[str, Any]]:
    """The package listing, parsed again only when an index or channeldata.json changed (a
    client paging through a big channel would otherwise parse every index for every page)."""
    storage = server.store.storage(name)
    signature = (
        tuple((s, storage.stat(f"{s}/repodata.json")) for s in subdirs),
        storage.stat("channeldata.json"),
    )
    cached = _listings.get(name)
    if cached is not None and cached[0] == signature:
        return cached[1]
    indexes = read_indexes(server.store, name, subdirs)
    listing = list_packages(indexes, read_json(server.store, name))
    if len(_listings) > 1000:
        _listings.clear()
    _listings[name] = (signature, listing)
    return listing


async def _listing(server: Server, channel: Channel) -> list[dict[str, Any]]:
    subdirs = await channel_subdirs(server, channel)
    return await asyncio.to_thread(_read_listing, server, channel.name, subdirs)


def _order(packages: list[dict[str, Any]], order_by: str | None) -> list[dict[str, Any]]:
    """quetz's `order_by`: `field[:asc|desc]`, comma separated; a bare field sorts desc."""
    if not order_by:
        return packages
    for part in reversed([p for p in order_by.split(",") if p.strip()]):
        field, _, direction = part.strip().partition(":")
        if field not in quetzshapes.PACKAGE_KEYS or field == "platforms":
            raise HTTPException(422, f"cannot order by {field!r}")
        packages = sorted(
            packages,
            key=lambda p, f=field: (p.get(f) is None, str(p.get(f) or "")),  # type: ignore[misc]
            reverse=direction != "asc",
        )
    return packages


def _channel_routes(app: FastAPI, server: Server) -> None:
    @app.get("/api/paginated/channels", tags=["quetz"], responses=R401)
    def paginated_channels(
        who: Caller,
        skip: Skip = 0,
        limit: Limit = 20,
        public: bool = True,
        q: str | None = None,
    ) -> dict[str, Any]:
        """quetz's channel pages: exactly quetz's ChannelExtra keys per channel."""
        needle = (q or "").lower()
        listed = [
            c
            for c in server.channels()
            if can_read(who, c.name, c.private)
            and (public or (who is not None and c.name in who.channels))
            and needle in c.name
        ]
        objects = describe_channels(server, listed)
        return quetzshapes.paginated([quetzshapes.quetz_channel(o) for o in objects], skip, limit)

    @app.patch(
        "/api/channels/{name}",
        tags=["channels"],
        responses={**R401, **R403, **R404, **R405, 422: err("A setting that cannot change")},
        summary="Change a channel's settings (private, ttl, description, metadata lists...)",
    )
    def patch_channel(
        name: Name, who: Required, body: Annotated[dict[str, Any], Body()]
    ) -> dict[str, Any]:
        channel = existing(server, name)
        if not can_synchronize(who, channel.name):
            raise HTTPException(403, "changing a channel needs the owner or maintainer role")
        if channel.mirror_mode is None:
            raise HTTPException(405, f"{name!r} is a plain tree: it has no settings")
        if "size_limit" in body and who.role not in ELEVATED:
            raise HTTPException(403, "size_limit needs the server owner or maintainer role")
        try:
            changed = apply_patch(channel, body)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        server.db.upsert_channel(changed)
        server.reload()
        return describe_channels(server, [changed])[0]


def _package_routes(app: FastAPI, server: Server) -> None:
    async def package_of(name: str, package: str, who: Identity | None) -> dict[str, Any]:
        channel = await asyncio.to_thread(readable, server, name, who)
        for found in await _listing(server, channel):
            if found["name"] == package:
                return found
        raise HTTPException(404, f"Package {name}/{package} not found")

    async def versions_of(name: str, package: str, who: Identity | None) -> list[dict[str, Any]]:
        channel = await asyncio.to_thread(readable, server, name, who)
        subdirs = await channel_subdirs(server, channel)
        indexes = await asyncio.to_thread(read_indexes, server.store, channel.name, subdirs)
        found = quetzshapes.versions(channel.name, package, indexes)
        if not found:
            raise HTTPException(404, f"Package {name}/{package} not found")
        return found

    @app.get(
        "/api/paginated/channels/{name}/packages",
        tags=["quetz"],
        responses={**R401, **R403, **R404},
    )
    async def paginated_packages(
        name: Name,
        who: Caller,
        skip: Skip = 0,
        limit: Limit = 20,
        q: str | None = None,
        order_by: str | None = None,
    ) -> dict[str, Any]:
        """quetz's package pages: exactly quetz's Package keys per package."""
        channel = await asyncio.to_thread(readable, server, name, who)
        needle = (q or "").lower()
        found = [p for p in await _listing(server, channel) if needle in p["name"]]
        shaped = [quetzshapes.quetz_package(p) for p in _order(found, order_by)]
        return quetzshapes.paginated(shaped, skip, limit)

    @app.get(
        "/api/channels/{name}/packages/{package}",
        tags=["quetz"],
        responses={**R401, **R403, **R404},
    )
    async def get_package(name: Name, package: str, who: Caller) -> dict[str, Any]:
        return await package_of(name, package, who)

    @app.get(
        "/api/channels/{name}/packages/{package}/versions",
        tags=["quetz"],
        responses={**R401, **R403, **R404},
    )
    async def get_versions(name: Name, package: str, who: Caller) -> list[dict[str, Any]]:
        """Every build of the package, newest first (quetz's PackageVersion shape)."""
        return await versions_of(name, package, who)

    @app.get(
        "/api/paginated/channels/{name}/packages/{package}/versions",
        tags=["quetz"],
        responses={**R401, **R403, **R404},
    )
    async def paginated_versions(
        name: Name, package: str, who: Caller, skip: Skip = 0, limit: Limit = 20
    ) -> dict[str, Any]:
        return quetzshapes.paginated(await versions_of(name, package, who), skip, limit)


def _key_id(username: str) -> int:
    key_id = quetzshapes.key_id_of(username)
    if key_id is None:
        raise HTTPException(404, f"User {username} not found")
    return key_id


def _member_routes(app: FastAPI, server: Server) -> None:
    def managed(name: str, who: Identity) -> Channel:
        channel = existing(server, name)
        if not can_synchronize(who, channel.name):
            raise HTTPException(403, "members are for the channel's owners and maintainers")
        return channel

    @app.get("/api/channels/{name}/members", tags=["quetz"], responses={**R401, **R403, **R404})
    def get_members(name: Name, who: Required) -> list[dict[str, Any]]:
        """The keys with a role on the channel: key ids and roles, never the keys."""
        channel = managed(name, who)
        return [
            quetzshapes.member(m.key.id, m.key.description, m.role)
            for m in quetzdb.members(server.db, channel.name)
        ]

    @app.post(
        "/api/channels/{name}/members",
        status_code=201,
        tags=["quetz"],
        responses={**R401, **R403, **R404},
    )
    def add_member(
        name: Name,
        who: Required,
        username: Annotated[str, Body()],
        role: Annotated[str, Body(pattern="^(owner|maintainer|member)$")],
    ) -> None:
        channel = managed(name, who)
        if role == "owner" and who.channel_role(channel.name) != "owner":
            raise HTTPException(403, "only an owner may make owners")
        key = quetzdb.key_user(server.db, _key_id(username))
        if key is None:
            raise HTTPException(404, f"User {username} not found")
        quetzdb.set_member(server.db, channel.name, key.id, role)

    @app.delete("/api/channels/{name}/members", tags=["quetz"], responses={**R401, **R403, **R404})
    def delete_member(name: Name, who: Required, username: str) -> None:
        channel = managed(name, who)
        if not quetzdb.remove_member(server.db, channel.name, _key_id(username)):
            raise HTTPException(404, f"User {username} is not a member of {name}")


def _user_routes(app: FastAPI, server: Server) -> None:
    @app.get("/api/me", tags=["quetz"], responses=R401)
    def get_me(who: Required) -> dict[str, Any]:
        """The calling key as quetz's Profile, with its server and channel roles."""
        key = quetzdb.key_user(server.db, who.key_id)
        description = key.description if key else ""
        return quetzshapes.me(who.key_id, description, who.role, who.channels)

    @app.get("/api/paginated/users", tags=["quetz"], responses=R401)
    def paginated_users(
        who: Required, skip: Skip = 0, limit: Limit = 20, q: str | None = None
    ) -> dict[str, Any]:
        """API keys as users; a key without a server owner/maintainer role sees itself."""
        users = quetzdb.key_users(server.db, q or "")
        shown = users if who.role in ELEVATED else [u for u in users if u.id == who.key_id]
        page = quetzshapes.paginated(
            [quetzshapes.user(u.id, u.description) for u in shown], skip, limit
        )
        page["pagination"]["all_records_count"] = len(users)
        return page

    @app.get("/api/users/{username}/role", tags=["quetz"], responses={**R401, **R403, **R404})
    def get_role(username: str, who: Required) -> dict[str, Any]:
        key_id = _key_id(username)
        if key_id != who.key_id and who.role not in ELEVATED:
            raise HTTPException(403, "reading another key's role needs owner or maintainer")
        key = quetzdb.key_user(server.db, key_id)
        if key is None:
            raise HTTPException(404, f"User {username} not found")
        return {"role": key.role}

    @app.put("/api/users/{username}/role", tags=["quetz"], responses={**R401, **R403, **R404})
    def set_role(
        username: str,
        who: Required,
        role: Annotated[str | None, Body(embed=True, pattern="^(owner|maintainer|member)$")],
    ) -> None:
        if who.role != "owner" and not (who.role == "maintainer" and role in ("member", None)):
            raise HTTPException(403, "setting server roles needs the server owner role")
        if not quetzdb.set_server_role(server.db, _key_id(username), role):
            raise HTTPException(404, f"User {username} not found")


def _job_routes(app: FastAPI, server: Server) -> None:
    def visible(who: Identity, channel: str) -> bool:
        found = server.channel(channel)
        return found is None or can_read(who, channel, found.private)

    @app.get("/api/jobs", tags=["quetz"], responses=R401)
    def get_jobs(
        who: Required,
        status: Annotated[list[str] | None, Query()] = None,
        skip: Skip = 0,
        limit: Limit = 20,
    ) -> dict[str, Any]:
        """Sync tasks as quetz jobs; by default, as in quetz, only pending and running ones."""
        wanted = status or ["pending", "running"]
        unknown = [s for s in wanted if s not in JOB_STATUSES]
        if unknown:
            raise HTTPException(422, f"unknown status {unknown[0]!r}; one of {JOB_STATUSES}")
        jobs = [
            quetzshapes.job(t.to_dict(), t.created_at, t.start_at)
            for t in quetzdb.tasks(server.db, wanted)
            if visible(who, t.channel)
        ]
        return quetzshapes.paginated(jobs, skip, limit)

    @app.get("/api/jobs/{job_id}", tags=["quetz"], responses={**R401, **R403, **R404})
    def get_job(job_id: int, who: Required) -> dict[str, Any]:
        """A sync task as a quetz job: the id PUT .../actions returned (also /api/tasks/{id})."""
        task = server.db.task(job_id)
        if task is None:
            raise HTTPException(404, f"Job with id {job_id} not found")
        if not visible(who, task.channel):
            raise HTTPException(403, "this key has no role on the job's channel")
        return quetzshapes.job(task.to_dict(), task.created_at, task.start_at)


def _upload_routes(app: FastAPI, server: Server) -> None:
    def refuse(name: str, who: Identity) -> None:
        channel = existing(server, name)
        if not can_synchronize(who, channel.name):
            raise HTTPException(403, "uploading needs the channel owner or maintainer role")
        kind = channel.mirror_mode or "static"
        raise HTTPException(
            405,
            f"channel {name!r} is read only ({kind} channel): condasync serves mirror and "
            "proxy channels, uploads are not possible",
        )

    responses: dict[int | str, dict[str, Any]] = {
        **R401,
        **R403,
        **R404,
        405: err("The channel is read only"),
    }
    paths = ("/api/channels/{name}/files", "/api/channels/{name}/files/")
    for path in (*paths, "/api/channels/{name}/upload/{filename}"):

        def upload(name: Name, who: Required) -> None:
            refuse(name, who)

        app.add_api_route(
            path,
            upload,
            methods=["POST"],
            status_code=201,
            responses=responses,
            tags=["channels"],
            operation_id="upload_" + path.rsplit("/", 2)[1].strip("{}") + str(len(path)),
            summary="Upload packages (quetz's path; proxy and mirror channels are read only)",
        )
