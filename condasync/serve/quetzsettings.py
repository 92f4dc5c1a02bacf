"""quetz's channel settings kept in `channels.settings`: description, size_limit and the
metadata lists (includelist/excludelist/proxylist), their checks and PATCH; and channel objects
with quetz's fields (members_count, packages_count) beside condasync's."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import pydantic

from condasync.engine.filters import compile_spec
from condasync.serve import quetzdb
from condasync.serve.catalog import read_indexes
from condasync.serve.closure_settings import KEYS as CLOSURE_KEYS
from condasync.serve.closure_settings import (
    ClosureSettings,
    check_settings,
    closure_settings,
)
from condasync.serve.db import Channel
from condasync.serve.server import Server

LISTS = ("includelist", "excludelist", "proxylist")
# What PATCH /api/channels/{name} may change (quetz: private, size_limit, metadata, ttl).
PATCHABLE = frozenset(
    {"private", "size_limit", "metadata", "ttl", "description", "max_delete", *CLOSURE_KEYS}
)
MAX_TTL = 10 * 365 * 86400

_counts: dict[str, tuple[object, int]] = {}
_counts_lock = threading.Lock()


def check_metadata(metadata: Mapping[str, Any]) -> dict[str, list[str] | None]:
    """quetz's ChannelMetadata: each list is null or a list of package names or MatchSpecs
    (include/exclude become the mirror's --include/--exclude specs; proxylist holds names)."""
    unknown = set(metadata) - set(LISTS)
    if unknown:
        raise ValueError(f"metadata: unknown key {sorted(unknown)[0]!r}; known: {', '.join(LISTS)}")
    out: dict[str, list[str] | None] = {}
    for key in LISTS:
        if key not in metadata:
            continue
        value = metadata[key]
        if value is None:
            out[key] = None
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"metadata.{key} must be a list of package names or null")
        for spec in value:
            if key == "proxylist":
                if not spec.replace("-", "").replace("_", "").replace(".", "").isalnum():
                    raise ValueError(f"metadata.proxylist: {spec!r} is not a package name")
            else:
                compile_spec(spec)  # ValueError names the bad spec
        out[key] = list(value)
    return out


def quetz_settings(body: Any) -> dict[str, Any]:
    """The settings of a new channel (a ChannelIn): max_delete, and quetz's fields when given.
    ValueError for a bad MatchSpec or proxylist name."""
    settings: dict[str, Any] = {"max_delete": body.max_delete}
    if body.description is not None:
        settings["description"] = body.description
    if body.size_limit is not None:
        settings["size_limit"] = body.size_limit
    metadata = check_metadata(body.metadata.model_dump(exclude_unset=True))
    if any(v is not None for v in metadata.values()):
        settings["metadata"] = metadata
    return settings


def apply_patch(channel: Channel, body: Mapping[str, Any]) -> Channel:
    """The channel with a PATCH body applied; ValueError for a key that cannot change or a
    bad value. `metadata` is merged into the stored lists, as quetz does."""
    for key in body:
        if key not in PATCHABLE:
            raise ValueError(f"attribute {key!r} of channel can not be changed")
    settings = dict(channel.settings)
    private, ttl = channel.private, channel.ttl
    if "private" in body:
        if not isinstance(body["private"], bool):
            raise ValueError("private must be true or false")
        private = body["private"]
    if "ttl" in body:
        ttl = body["ttl"]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be an integer from 0 to {MAX_TTL}")
    if "size_limit" in body:
        limit = body["size_limit"]
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError("size_limit must be a non-negative integer or null")
        settings["size_limit"] = limit
    if "description" in body:
        text = body["description"]
        if text is not None and (not isinstance(text, str) or len(text) > 300):
            raise ValueError("description must be a string of at most 300 characters")
        settings["description"] = text
    if "max_delete" in body:
        value = body["max_delete"]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
            raise ValueError("max_delete must be a number from 0 to 100")
        settings["max_delete"] = value
    if "metadata" in body:
        if not isinstance(body["metadata"], dict):
            raise ValueError("metadata must be an object")
        merged = dict(settings.get("metadata") or {})
        merged.update(check_metadata(body["metadata"]))
        settings["metadata"] = merged
    closure = {key: body[key] for key in CLOSURE_KEYS if key in body}
    if closure:  # lock, solve, platforms, with_deps...: null clears one
        try:
            given = ClosureSettings.model_validate(closure)
        except pydantic.ValidationError as exc:
            raise ValueError(
                str(exc).splitlines()[0] + ": " + str(exc.errors()[0]["msg"])
            ) from None
        settings.update(closure_settings(given, only_set=True))
        settings = {k: v for k, v in settings.items() if k not in CLOSURE_KEYS or v is not None}
        problem = check_settings(settings)
        if problem is not None:
            raise ValueError(problem)
    return dataclasses.replace(channel, private=private, ttl=ttl, settings=settings)


def _signature(server: Server, name: str) -> tuple[list[str], object]:
    subdirs = server.store.subdirs(name)
    storage = server.store.storage(name)
    return subdirs, tuple((s, storage.stat(f"{s}/repodata.json")) for s in subdirs)


def packages_count(server: Server, name: str) -> int:
    """Package names in the channel's cached indexes (a proxy: what it has fetched so far);
    parsed again only when an index changed."""
    subdirs, signature = _signature(server, name)
    with _counts_lock:
        cached = _counts.get(name)
    if cached is not None and cached[0] == signature:
        return cached[1]
    names: set[str] = set()
    for records in read_indexes(server.store, name, subdirs).values():
        names.update(r["name"] for r in records.values() if isinstance(r.get("name"), str))
    with _counts_lock:
        if len(_counts) > 10_000:
            _counts.clear()
        _counts[name] = (signature, len(names))
    return len(names)


def describe_channels(server: Server, channels: Iterable[Channel]) -> list[dict[str, Any]]:
    """Channel objects: condasync's fields and quetz's (description, size_limit,
    members_count, packages_count). Blocking: from a worker thread."""
    members = quetzdb.member_counts(server.db)
    out = []
    for channel in channels:
        doc = channel.to_dict()
        doc.setdefault("description", None)
        doc.setdefault("size_limit", None)
        stored = doc.get("metadata") or {}
        doc["metadata"] = {key: stored.get(key) for key in LISTS}
        doc["members_count"] = members.get(channel.name, 0)
        doc["packages_count"] = packages_count(server, channel.name)
        out.append(doc)
    return out
