"""An httpx transport that moves bytes with aiohttp: httpx stays the API, aiohttp is the wire.

httpx's own async transport tops out at a few hundred small files per second on this
machine; the same client on aiohttp fetches several times as many (benchmarks/RESULTS.md).
Redirects, auth, proxies from the environment, timeouts and retries stay httpx's business;
this class turns one `httpx.Request` into one aiohttp request and maps aiohttp's errors onto
httpx's exception types, so callers catch the same exceptions whichever path ran.
`stream_get` is the bulk-download path: one GET straight on the shared session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import aiohttp
import httpx

CHUNK = 256 * 1024


@contextmanager
def _mapped(request: httpx.Request | str) -> Iterator[None]:
    """Re-raise aiohttp and OS errors as the httpx exceptions callers already handle."""
    try:
        yield
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
        if isinstance(request, str):
            request = httpx.Request("GET", request)  # built only when something failed
        raise _as_httpx(exc, request) from exc


def _as_httpx(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError] = httpx.ReadError
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.InvalidURL):
        kind = httpx.UnsupportedProtocol
    elif isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        kind = httpx.RemoteProtocolError
    return kind(message, request=request)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request | str) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # the connection goes back to the pool
        else:
            self._response.close()  # unread body: the connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (created lazily, inside the running loop) behind an httpx client."""

    def __init__(self, max_connections: int) -> None:
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit, ssl=httpx.create_ssl_context(), ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                # aiohttp pauses reading a socket once 2 x read_bufsize bytes wait (64 KiB by
                # default); with hashing a block behind, 1 MiB keeps large files streaming
                # (20 x 100 MB: 3.96 -> 3.77 s and 4.43 -> 3.88 s median, +8 MiB peak)
                read_bufsize=2**20,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        with _mapped(request):
            response = await self._get_session().request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    @asynccontextmanager
    async def stream_get(
        self, url: str, headers: dict[str, str], timeout: httpx.Timeout
    ) -> AsyncIterator[tuple[int, Mapping[str, str], AsyncIterator[bytes]]]:
        """GET straight on the session, redirects followed by aiohttp: the bulk-download path.

        Yields (status, headers, body chunks); errors come out as httpx exceptions.
        """
        with _mapped(url):
            response = await self._get_session().get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(sock_connect=timeout.connect, sock_read=timeout.read),
            )
        body = _Body(response, url)
        try:
            yield response.status, response.headers, body.__aiter__()
        finally:
            await body.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
