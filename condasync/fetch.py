"""Network I/O: one httpx client (http(s) and file://), conditional index fetches, and verified,
streaming package downloads with retries."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from condasync.errors import ChecksumMismatch, DownloadError, UpstreamError
from condasync.repodata import decompress_zst
from condasync.storage import StagedFile
from condasync.urls import join, strip_userinfo

CHUNK = 256 * 1024
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


def make_client(
    channel_url: str, jobs: int, timeout: float = 60.0
) -> tuple[httpx.AsyncClient, str]:
    """A client for this channel, and the channel URL with any user:password moved into auth."""
    url, credentials = strip_userinfo(channel_url)
    client = httpx.AsyncClient(
        auth=httpx.BasicAuth(*credentials) if credentials else None,
        follow_redirects=True,
        timeout=httpx.Timeout(timeout, connect=15.0),
        limits=httpx.Limits(max_connections=jobs + 2, max_keepalive_connections=jobs + 2),
        mounts={"file://localhost": FileTransport()},  # beats NO_PROXY=localhost mounts
        headers={"user-agent": "condasync"},
    )
    return client, url


class RetryableStatus(DownloadError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
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


def _check_status(response: httpx.Response, what: str) -> None:
    if response.status_code == 429 or response.status_code >= 500:
        raise RetryableStatus(f"HTTP {response.status_code} for {what}", _retry_after(response))
    if response.status_code >= 400:
        raise DownloadError(f"HTTP {response.status_code} for {what}")


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
    etag: str | None = None
    last_modified: str | None = None
    missing: bool = False


async def fetch_index(
    client: httpx.AsyncClient,
    subdir_url: str,
    validators: tuple[str, str | None, str | None] | None,
    retries: int,
    backoff: float,
) -> IndexFetch:
    """GET repodata.json.zst, falling back to repodata.json; conditional when validators match."""
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
                            f"HTTP {response.status_code}", _retry_after(response)
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
        if name.endswith(".zst"):
            try:
                body = await asyncio.to_thread(decompress_zst, body)
            except ValueError:
                continue  # a broken .zst is not fatal while repodata.json may be fine
        return IndexFetch(
            unchanged=False,
            source=url,
            body=body,
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
        )
    return IndexFetch(unchanged=False, missing=True)


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
    """Stream url into staged, hashing the one digest we check; raise on any mismatch."""
    algo, expected = digest.split(":", 1)
    hasher = hashlib.new(algo)
    received = 0
    async with client.stream("GET", url) as response:
        _check_status(response, _tail(url))
        async for chunk in response.aiter_bytes(CHUNK):
            received += len(chunk)
            if received > size:
                raise ChecksumMismatch(f"more bytes than the recorded size {size}")
            hasher.update(chunk)
            staged.write(chunk)
            on_bytes(len(chunk))
    if received != size:
        raise ChecksumMismatch(f"size mismatch: got {received} bytes, expected {size}")
    if hasher.hexdigest() != expected:
        raise ChecksumMismatch(f"{algo} mismatch")
