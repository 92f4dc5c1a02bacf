"""PURE: quetz's JSON shapes (quetz-client 0.5.0 builds its dataclasses from them with exactly
these keys): channels, packages, package versions, users and members (API keys stand in for
users), jobs (our sync tasks), and the paginated envelope."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from condasync.channel.repodata import split_filename
from condasync.channel.urls import join
from condasync.models import Record

# The keys of quetz's ChannelExtra, Package and User, in the order quetz emits them.
CHANNEL_KEYS = (
    "name",
    "description",
    "private",
    "size_limit",
    "ttl",
    "mirror_channel_url",
    "mirror_mode",
    "members_count",
    "packages_count",
)
PACKAGE_KEYS = (
    "name",
    "summary",
    "description",
    "url",
    "platforms",
    "current_version",
    "latest_change",
)
USER_PREFIX = "key-"
VERSION_NAMESPACE = uuid.UUID("6f1d3c4e-2b0a-4c39-9a55-6b8f0f1e2d7a")


def naive_iso(when: datetime | None) -> str | None:
    """quetz (pydantic) writes datetimes as naive UTC ISO strings."""
    if when is None:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when.isoformat()


def from_ms(value: Any) -> str | None:
    """A record's `timestamp` (ms, or s in old records) as quetz's naive ISO datetime."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return None
    seconds = value / 1000 if value > 1e11 else value
    try:
        return naive_iso(datetime.fromtimestamp(seconds, timezone.utc))
    except (OverflowError, OSError, ValueError):
        return None


def paginated(items: Sequence[Any], skip: int, limit: int) -> dict[str, Any]:
    """quetz's envelope; `limit` -1 means all. quetz-client stops at the first empty page."""
    skip = max(skip, 0)
    page = list(items[skip:]) if limit < 0 else list(items[skip : skip + limit])
    return {
        "pagination": {"skip": skip, "limit": limit, "all_records_count": len(items)},
        "result": page,
    }


def quetz_channel(channel: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly quetz's ChannelExtra keys, from our channel object."""
    return {key: channel.get(key) for key in CHANNEL_KEYS}


def quetz_package(package: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly quetz's Package keys, from our package object."""
    return {key: package.get(key) for key in PACKAGE_KEYS}


def username(key_id: int) -> str:
    return f"{USER_PREFIX}{key_id}"


def key_id_of(name: str) -> int | None:
    """`key-12` (or `12`) -> 12."""
    text = name[len(USER_PREFIX) :] if name.startswith(USER_PREFIX) else name
    return int(text) if text.isdigit() and len(text) < 12 else None


def user(key_id: int, description: str) -> dict[str, Any]:
    """An API key as a quetz User: never the key, only its id and description."""
    return {
        "id": str(key_id),
        "username": username(key_id),
        "profile": {"name": description or "", "avatar_url": ""},
    }


def member(key_id: int, description: str, role: str) -> dict[str, Any]:
    return {"role": role, "user": user(key_id, description)}


def me(
    key_id: int, description: str, role: str | None, channels: Mapping[str, str]
) -> dict[str, Any]:
    """quetz's Profile (the profile holds the user), plus the key's roles."""
    return {
        "name": description or "",
        "avatar_url": "",
        "user": {"id": str(key_id), "username": username(key_id)},
        "role": role,
        "channels": dict(channels),
    }


def job(
    task: Mapping[str, Any], created: datetime | None, start_at: datetime | None
) -> dict[str, Any]:
    """A sync task as a quetz Job (same id as /api/tasks/{id})."""
    return {
        "id": task["id"],
        "manifest": task["action"],
        "owner_id": None,
        "created": naive_iso(created),
        "start_at": naive_iso(start_at),
        "repeat_every_seconds": task["repeat_every_seconds"],
        "status": task["status"],
        "items_spec": None,
    }


def versions(
    channel: str, package: str, indexes: Mapping[str, Mapping[str, Record]]
) -> list[dict[str, Any]]:
    """quetz PackageVersion objects for one package name, newest timestamp first."""
    out: list[dict[str, Any]] = []
    for subdir, records in sorted(indexes.items()):
        for filename, record in sorted(records.items()):
            if record.get("name") != package:
                continue
            created = from_ms(record.get("timestamp"))
            build_number = record.get("build_number")
            out.append(
                {
                    "id": str(uuid.uuid5(VERSION_NAMESPACE, f"{channel}/{subdir}/{filename}")),
                    "channel_name": channel,
                    "package_name": package,
                    "platform": subdir,
                    "version": str(record.get("version", "")),
                    "build_string": str(record.get("build", "")),
                    "build_number": build_number if isinstance(build_number, int) else 0,
                    "filename": filename,
                    "info": dict(record),
                    "uploader": {"name": "", "avatar_url": ""},
                    "time_created": created,
                    "download_count": 0,
                }
            )
    out.sort(key=lambda v: v["time_created"] or "", reverse=True)
    return out


def proxied_url(
    mirror_mode: str | None, upstream: str | None, settings: Mapping[str, Any], relpath: str
) -> str | None:
    """Where a mirror channel sends a client for a package of its `metadata.proxylist` (the
    sync publishes those records but copies no files): upstream's URL, else None."""
    names = (settings.get("metadata") or {}).get("proxylist")
    if mirror_mode != "mirror" or not upstream or not names or relpath.count("/") != 1:
        return None
    subdir, filename = relpath.split("/")
    parts = split_filename(filename)
    if parts is None or parts[0] not in names:
        return None
    return join(upstream, subdir, filename)
