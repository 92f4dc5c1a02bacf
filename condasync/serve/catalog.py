"""What a channel holds, for the package listing: its subdirs (a proxy asks upstream) and
their parsed indexes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
from fastapi import HTTPException

from condasync import fetch
from condasync.repodata import parse_repodata
from condasync.serve.app import Server
from condasync.serve.db import Channel
from condasync.serve.proxy import ProxyError
from condasync.sync import KNOWN_SUBDIRS
from condasync.urls import join


async def channel_subdirs(server: Server, channel: Channel) -> list[str]:
    """Subdirs with an index: on disk, or for a proxy channel, what upstream offers."""
    if channel.mirror_mode == "proxy":
        return await _proxy_subdirs(server, channel)
    root = server.channel_dir(channel.name)
    return sorted(p.name for p in _subdir_folders(root) if (p / "repodata.json").is_file())


def _subdir_folders(root: os.PathLike[str]) -> list[Path]:
    base = Path(root)
    if not base.is_dir():
        return []
    return [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]


async def _proxy_subdirs(server: Server, channel: Channel) -> list[str]:
    proxy = server.proxy(channel)
    subdirs: list[str] = []
    if await proxy.channeldata():
        doc = read_json(server.channel_dir(channel.name) / "channeldata.json") or {}
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


def read_json(path: os.PathLike[str]) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            doc = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def read_indexes(root: os.PathLike[str], subdirs: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for subdir in subdirs:
        try:
            with open(os.path.join(root, subdir, "repodata.json"), "rb") as fh:
                out[subdir] = parse_repodata(fh.read(), subdir).records
        except (OSError, ValueError):
            continue
    return out
