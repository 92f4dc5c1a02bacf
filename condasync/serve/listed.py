"""Which package files a served tree's index lists, per channel and subdir, so a file that no
index lists (a stray, a file a run is about to delete) is never cached as immutable."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

LISTED_KEY = re.compile(rb'"([^"\\/]+?(?:\.conda|\.tar\.bz2))"\s*:\s*\{')
RECHECK = 2.0  # seconds a loaded list is trusted before its index is looked at again


def listed_names(repodata: bytes) -> frozenset[bytes]:
    """The package keys of a repodata.json (both sections), found without parsing it: a key
    followed by an object. Values (`"fn": "x.conda"`) and `removed` entries never match."""
    return frozenset(LISTED_KEY.findall(repodata))


class ListedNames:
    """A cache of listed_names per (channel, subdir), rebuilt in a thread when the index
    changes (local: its size and mtime; elsewhere: after RECHECK seconds)."""

    def __init__(
        self,
        read: Callable[[str, str], bytes | None],
        stat: Callable[[str, str], tuple[int, int] | None],
    ) -> None:
        self._read = read
        self._stat = stat
        self._cache: dict[tuple[str, str], tuple[float, object, frozenset[bytes]]] = {}
        self._flights: dict[tuple[str, str], asyncio.Future[frozenset[bytes]]] = {}

    async def listed(self, channel: str, subdir: str, filename: str) -> bool:
        return filename.encode() in await self._names(channel, subdir)

    async def _names(self, channel: str, subdir: str) -> frozenset[bytes]:
        key = (channel, subdir)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < RECHECK:
            return cached[2]
        version = await asyncio.to_thread(self._stat, channel, f"{subdir}/repodata.json")
        if cached is not None and version is not None and version == cached[1]:
            self._cache[key] = (now, version, cached[2])
            return cached[2]
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(asyncio.to_thread(self._load, channel, subdir))
            self._flights[key] = flight
            flight.add_done_callback(lambda _f: self._flights.pop(key, None))
        names = await asyncio.shield(flight)
        self._cache[key] = (time.monotonic(), version, names)
        return names

    def _load(self, channel: str, subdir: str) -> frozenset[bytes]:
        data = self._read(channel, f"{subdir}/repodata.json")
        return listed_names(data) if data else frozenset()
