"""Proxy channels' `repodata.json.bz2`: upstream's bytes, served only when they decompress to
the very `repodata.json` snapshot the proxy serves (else 404: never a bz2 of another snapshot).
A verified copy is kept beside the proxy's state, tagged with the snapshot it matches."""

from __future__ import annotations

import asyncio
import bz2
import hashlib
import weakref

import httpx
import orjson

from condasync.channel.urls import join
from condasync.serve.files import Scope, Send
from condasync.serve.proxy import PROXY_STATE, ProxyChannel
from condasync.storage import STATE_DIR

BZ2 = "repodata.json.bz2"
MAX_BZ2 = 512 * 1024 * 1024  # larger than any real channel's bz2 (conda-forge: ~40 MB)


def _copy_path(subdir: str) -> str:
    return f"{STATE_DIR}/{PROXY_STATE}/{subdir}.{BZ2}"


def _tag_path(subdir: str) -> str:
    return f"{STATE_DIR}/{PROXY_STATE}/{subdir}.bz2.json"


class Bz2Cache:
    """Per proxy channel: which snapshot (sha256 of the served repodata.json) has a matching
    bz2, and which were found to have none (asked upstream once per snapshot)."""

    def __init__(self, proxy: ProxyChannel) -> None:
        self.proxy = proxy
        self._digests: dict[str, tuple[str, str]] = {}  # subdir -> (stat, sha256 of .json)
        self._none: dict[str, str] = {}  # subdir -> snapshot upstream had no matching bz2 for

    def _snapshot(self, subdir: str) -> str | None:
        """sha256 of the repodata.json served now, hashed once per file version."""
        storage = self.proxy.storage
        st = storage.stat(f"{subdir}/repodata.json")
        if st is None:
            return None
        known = self._digests.get(subdir)
        if known is not None and known[0] == repr(st):
            return known[1]
        raw = storage.read(f"{subdir}/repodata.json")
        if raw is None:
            return None
        digest = hashlib.sha256(raw).hexdigest()
        self._digests[subdir] = (repr(st), digest)
        return digest

    def _tagged(self, subdir: str) -> str | None:
        raw = self.proxy.storage.read(_tag_path(subdir))
        try:
            tag = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return None
        return tag.get("snapshot") if isinstance(tag, dict) else None

    async def _fetch(self, subdir: str, snapshot: str) -> bool:
        """Ask upstream for its bz2; keep it if it is this snapshot."""
        proxy = self.proxy
        try:
            response = await proxy.client.get(join(proxy.base, subdir, BZ2))
        except httpx.HTTPError:  # upstream trouble: no bz2 now, the next request asks again
            return False
        if response.status_code >= 500 or response.status_code == 429:
            return False
        data = response.content
        if response.status_code != 200 or len(data) > MAX_BZ2:
            self._none[subdir] = snapshot
            return False
        try:
            plain = await asyncio.to_thread(bz2.decompress, data)
        except (OSError, ValueError, EOFError):
            plain = b""
        if hashlib.sha256(plain).hexdigest() != snapshot:
            self._none[subdir] = snapshot
            return False
        tag = orjson.dumps({"snapshot": snapshot})
        # The copy first, then its tag: a tag never names a copy that is not there.
        await asyncio.to_thread(proxy.storage.publish, [(_copy_path(subdir), data)])
        await asyncio.to_thread(proxy.storage.publish, [(_tag_path(subdir), tag)])
        return True

    async def send(self, scope: Scope, send: Send, subdir: str, private: bool) -> bool:
        """Send the bz2 of the snapshot served now; False when there is none (answer 404)."""
        await self.proxy.index(subdir)
        snapshot = await asyncio.to_thread(self._snapshot, subdir)
        if snapshot is None or self._none.get(subdir) == snapshot:
            return False
        if await asyncio.to_thread(self._tagged, subdir) != snapshot:
            fetched = await self.proxy.once(
                f"bz2:{subdir}:{snapshot}", lambda: self._fetch(subdir, snapshot)
            )
            if not fetched:
                return False
        return await self.proxy.store.send(
            scope, send, self.proxy.name, _copy_path(subdir), BZ2, private
        )


_caches: weakref.WeakKeyDictionary[ProxyChannel, Bz2Cache] = weakref.WeakKeyDictionary()


def bz2_cache(proxy: ProxyChannel) -> Bz2Cache:
    """The proxy channel's Bz2Cache (one per ProxyChannel, gone with it)."""
    cache = _caches.get(proxy)
    if cache is None:
        cache = _caches[proxy] = Bz2Cache(proxy)
    return cache
