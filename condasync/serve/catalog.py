"""What a channel holds, for the package listing: its subdirs (a proxy asks upstream) and
their parsed indexes, read through the channel store (DIR or S3)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import HTTPException

from condasync.channel.repodata import KNOWN_SUBDIRS, parse_repodata
from condasync.channel.urls import join
from condasync.engine import fetch
from condasync.serve.db import Channel
from condasync.serve.proxy import ProxyError
from condasync.serve.server import Server
from condasync.serve.store import LocalChannels, S3Channels


async def channel_subdirs(server: Server, channel: Channel) -> list[str]:
    """Subdirs with an index: on disk, or for a proxy channel, what upstream offers."""
    if channel.mirror_mode == "proxy":
        return await _proxy_subdirs(server, channel)
    return await asyncio.to_thread(server.store.subdirs, channel.name)


async def _proxy_subdirs(server: Server, channel: Channel) -> list[str]:
    proxy = server.proxy(channel)
    subdirs: list[str] = []
    if await proxy.channeldata():
        doc = await asyncio.to_thread(read_json, server.store, channel.name) or {}
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


def read_json(
    store: LocalChannels | S3Channels, name: str, relpath: str = "channeldata.json"
) -> dict[str, Any] | None:
    raw = store.read(name, relpath)
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def read_indexes(
    store: LocalChannels | S3Channels, name: str, subdirs: list[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for subdir in subdirs:
        raw = store.read(name, f"{subdir}/repodata.json")
        if raw is None:
            continue
        try:
            out[subdir] = parse_repodata(raw, subdir).records
        except ValueError:
            continue
    return out
