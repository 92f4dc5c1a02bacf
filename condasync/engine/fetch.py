"""Network I/O: one httpx client (http(s) and file://), conditional index fetches, and verified,
streaming package downloads with retries."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from condasync.channel.repodata import decompress_zst
from condasync.channel.urls import join, strip_userinfo
from condasync.engine.transport import AiohttpTransport
from condasync.errors import ChecksumMismatch, DownloadError, UpstreamError
from condasync.storage import StagedFile

T = TypeVar("T")
CHUNK = 256 * 1024
BLOCK = 1024 * 1024  # hash-and-write unit of a download
MAX_RETRY_AFTER = 60.0
FALLBACK_STATUSES = {400, 404, 405, 410, 501}


class _FileStream(httpx.AsyncByteStream):
    def __init__(self, path: str) -> None:
        self.path = path

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with open(self.path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk


class FileTransport(httpx.AsyncBaseTransport):
    """Serves file:// URLs like a static HTTP server (200/404), so one code path handles both."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = unquote(urlsplit(str(request.url)).path)
        try:
            st = os.stat(path)
        except OSError:
            return httpx.Response(404, request=request)
        if not os.path.isfile(path):
            return httpx.Response(404, request=request)
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        headers = {
            "content-length": str(st.st_size),
            "etag": etag,
            "last-modified": email.utils.formatdate(st.st_mtime, usegmt=True),
        }
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers={"etag": etag}, request=request)
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers, request=request)
        return httpx.Response(200, headers=headers, stream=_FileStream(path), request=request)


def make_client(channel_url: str, jobs: int, timeout: float = 60.0) -> tuple[Client, str]:
    """A client for this channel, and the channel URL with any user:password moved into auth."""
    url, credentials = strip_userinfo(channel_url)
    auth = httpx.BasicAuth(*credentials) if credentials else None
    fast_headers = {"user-agent": "condasync"}
    client = Client(
        fast=AiohttpTransport(max_connections=jobs + 2),
        fast_headers=fast_headers,
        auth=auth,
        follow_redirects=True,
        timeout=httpx.Timeout(timeout, connect=15.0),
        mounts={"file://localhost": FileTransport()},  # beats NO_PROXY=localhost mounts
        headers=fast_headers,
    )
    if credentials:
        # the bulk path sends the channel's credentials to the channel's own origin only
        token = base64.b64encode(":".join(credentials).encode()).decode()
        client.auth_origin = _origin(url)
        client.auth_header = f"Basic {token}"
    return client, url


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


class RetryableStatus(DownloadError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(float(value), MAX_RETRY_AFTER)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, min(when.timestamp() - time.time(), MAX_RETRY_AFTER)) if when else None


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, RetryableStatus, ChecksumMismatch))


def _wait(base: float) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential(multiplier=base, max=30)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableStatus) and exc.retry_after is not None:
            return exc.retry_after
        return float(backoff(state))

    return wait


def retrying(retries: int, backoff: float) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(retries + 1),
        wait=_wait(backoff),
        reraise=True,
    )


async def with_retries(attempt: Callable[[], Awaitable[T]], retries: int, backoff: float) -> T:
    """Run attempt(); on a transient failure, retry with `retrying`'s policy.

    The first try runs bare: building tenacity's machinery for each of thousands of small
    files costs more than downloading them, and almost all succeed at once.
    """
    try:
        return await attempt()
    except Exception as exc:
        if retries < 1 or not _is_transient(exc):
            raise
        first_wait = exc.retry_after if isinstance(exc, RetryableStatus) else None
        await asyncio.sleep(backoff if first_wait is None else first_wait)
    async for retry in retrying(retries - 1, backoff):
        with retry:
            return await attempt()
    raise AssertionError("unreachable: retrying() re-raises the last error")


def _raise_for(status: int, retry_after: str | None, what: str) -> None:
    if status == 429 or status >= 500:
        raise RetryableStatus(f"HTTP {status} for {what}", _retry_after(retry_after))
    if status >= 400:
        raise DownloadError(f"HTTP {status} for {what}")


def describe(exc: BaseException) -> str:
    """A one-line reason for a failure, without the URL (it may carry a token)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    if isinstance(exc, httpx.TransportError):
        return f"connection error ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


@dataclass
class IndexFetch:
    """The result of a conditional fetch of one subdir's repodata."""

    unchanged: bool
    source: str = ""  # URL of the file that answered
    body: bytes | None = None  # decompressed repodata.json
    sha256: str | None = None  # of the bytes as transferred (compressed, for .zst)
    zst: bytes | None = None  # the repodata.json.zst as transferred, when that answered
    etag: str | None = None
    last_modified: str | None = None
    missing: bool = False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def fetch_index(
    client: httpx.AsyncClient,
    subdir_url: str,
    validators: tuple[str, str | None, str | None] | None,
    retries: int,
    backoff: float,
    alongside: Callable[[], Awaitable[None]] | None = None,
) -> IndexFetch:
    """GET repodata.json.zst, falling back to repodata.json; conditional when validators match.

    `alongside` starts once a new body has arrived, to run while it is decompressed.
    """
    side: asyncio.Future[None] | None = None
    try:
        for name in ("repodata.json.zst", "repodata.json"):
            url = join(subdir_url, name)
            headers: dict[str, str] = {}
            if validators and validators[0] == url:
                if validators[1]:
                    headers["if-none-match"] = validators[1]
                if validators[2]:
                    headers["if-modified-since"] = validators[2]
            try:
                async for attempt in retrying(retries, backoff):
                    with attempt:
                        response = await client.get(url, headers=headers)
                        if response.status_code == 429 or response.status_code >= 500:
                            raise RetryableStatus(
                                f"HTTP {response.status_code}",
                                _retry_after(response.headers.get("retry-after")),
                            )
            except (httpx.TransportError, RetryableStatus) as exc:
                raise UpstreamError(f"cannot fetch {_tail(url)}: {describe(exc)}") from None
            if response.status_code == 304:
                return IndexFetch(unchanged=True, source=url)
            if response.status_code in FALLBACK_STATUSES:
                continue
            if response.status_code >= 400:
                raise UpstreamError(f"cannot fetch {_tail(url)}: HTTP {response.status_code}")
            body = response.content
            if side is None and alongside is not None:
                side = asyncio.ensure_future(alongside())
            # hashed while it decompresses: both release the GIL
            digest = asyncio.ensure_future(asyncio.to_thread(_sha256, body))
            zst = None
            if name.endswith(".zst"):
                try:
                    zst, body = body, await asyncio.to_thread(decompress_zst, body)
                except ValueError:
                    await digest
                    continue  # a broken .zst is not fatal while repodata.json may be fine
            return IndexFetch(
                unchanged=False,
                source=url,
                body=body,
                zst=zst,
                sha256=await digest,
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
            )
        return IndexFetch(unchanged=False, missing=True)
    finally:
        if side is not None:
            await side


async def fetch_optional(client: httpx.AsyncClient, url: str) -> bytes | None:
    """GET a small optional file such as channeldata.json; None when absent or unreachable."""
    try:
        response = await client.get(url)
    except httpx.TransportError:
        return None
    return response.content if response.status_code == 200 else None


async def exists(client: httpx.AsyncClient, url: str) -> bool:
    try:
        response = await client.head(url)
        if response.status_code in (405, 501):
            async with client.stream("GET", url) as streamed:
                return streamed.status_code == 200
    except httpx.TransportError as exc:
        raise UpstreamError(f"cannot reach upstream: {describe(exc)}") from None
    return response.status_code == 200


class Client(httpx.AsyncClient):
    """The httpx client, plus direct access to its aiohttp transport for bulk package GETs."""

    def __init__(self, fast: AiohttpTransport, fast_headers: dict[str, str], **kwargs: Any):
        super().__init__(transport=fast, **kwargs)
        self.fast = fast
        self.fast_headers = fast_headers
        self.auth_origin: str | None = None
        self.auth_header = ""
        # With a proxy configured in the environment, every request takes httpx's path,
        # which applies HTTP(S)_PROXY / NO_PROXY.
        self.bulk = not urllib.request.getproxies()

    def bulk_headers(self, url: str) -> dict[str, str]:
        if self.auth_origin is not None and url.startswith(self.auth_origin):
            return {**self.fast_headers, "authorization": self.auth_header}
        return self.fast_headers


@asynccontextmanager
async def _stream(client: httpx.AsyncClient, url: str) -> AsyncIterator[AsyncIterator[bytes]]:
    """GET url and yield its body chunks, raising on a bad status.

    Plain http(s) package GETs skip httpx's request machinery (auth flow, cookies, redirect
    loop): for a 30 KB file that machinery costs more CPU than the transfer itself
    (benchmarks/RESULTS.md). Everything else, file:// included, goes through httpx.
    """
    if isinstance(client, Client) and client.bulk and url.startswith(("http://", "https://")):
        async with client.fast.stream_get(url, client.bulk_headers(url), client.timeout) as got:
            status, headers, chunks = got
            _raise_for(status, headers.get("retry-after"), _tail(url))
            yield chunks
        return
    async with client.stream("GET", url) as response:
        _raise_for(response.status_code, response.headers.get("retry-after"), _tail(url))
        yield response.aiter_bytes()


def _tail(url: str) -> str:
    parts = url.rstrip("/").split("/")
    return "/".join(parts[-2:])


async def download(
    client: httpx.AsyncClient,
    url: str,
    staged: StagedFile,
    size: int,
    digest: str,
    on_bytes: Callable[[int], None],
) -> None:
    """Stream url into staged, hashing the one digest we check; raise on any mismatch.

    Bytes are hashed and written a block at a time in a worker thread, one block behind the
    network, so hashing and disk writes overlap with receiving (hashlib and file writes
    release the GIL). Small files are hashed inline.
    """
    algo, expected = digest.split(":", 1)
    hasher = hashlib.new(algo)
    received = 0
    block: list[bytes] = []  # chunks as they came: no joining, no extra copy
    in_block = 0
    pending: asyncio.Future[None] | None = None
    loop = asyncio.get_running_loop()

    def consume(chunks: list[bytes]) -> None:
        for chunk in chunks:
            hasher.update(chunk)
            staged.write(chunk)

    try:
        async with _stream(client, url) as chunks:
            async for chunk in chunks:
                received += len(chunk)
                if received > size:
                    raise ChecksumMismatch(f"more bytes than the recorded size {size}")
                block.append(chunk)
                in_block += len(chunk)
                on_bytes(len(chunk))
                if in_block >= BLOCK:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, consume, block)
                    block, in_block = [], 0
    finally:
        if pending is not None:
            await asyncio.wait([pending])  # never leave a thread writing to a discarded file
            error = pending.exception()
    if pending is not None and error is not None:
        raise error  # e.g. disk full while writing the block
    consume(block)
    if received != size:
        raise ChecksumMismatch(f"size mismatch: got {received} bytes, expected {size}")
    if hasher.hexdigest() != expected:
        raise ChecksumMismatch(f"{algo} mismatch")
