"""Raw ASGI responses for channel files: validators, 304, ranges, large-chunk streaming.

It bypasses the framework on purpose: these are the hot paths (cached packages, index
revalidation), benchmarked against nginx.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from condasync.serve.httpcache import (
    conditional_headers,
    http_date,
    is_range_syntax,
    make_etag,
    not_modified,
    parse_range,
    range_applies,
)
from condasync.serve.paths import cache_control, content_type

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
Headers = list[tuple[bytes, bytes]]

CHUNK = 1024 * 1024
_DATE_CACHE: dict[int, bytes] = {}


def request_headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def send_text(
    send: Send,
    status: int,
    text: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


def _last_modified(mtime: float) -> bytes:
    key = int(mtime)
    cached = _DATE_CACHE.get(key)
    if cached is None:
        if len(_DATE_CACHE) > 4096:
            _DATE_CACHE.clear()
        cached = _DATE_CACHE[key] = http_date(key).encode()
    return cached


async def send_file(
    scope: Scope,
    send: Send,
    path: str,
    filename: str,
    private: bool,
    extra: Headers | None = None,
) -> bool:
    """Answer GET/HEAD for a regular file: 200, 206, 304 or 416. False (nothing sent) when
    path is not a regular file; a symlink never is (lstat, then O_NOFOLLOW)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    return await _send_file(scope, send, path, st, filename, private, extra or [])


async def _send_file(
    scope: Scope,
    send: Send,
    path: str,
    st: os.stat_result,
    filename: str,
    private: bool,
    extra: Headers,
) -> bool:
    size = st.st_size
    etag = make_etag(size, st.st_mtime_ns, st.st_ino)
    last_modified = _last_modified(st.st_mtime)
    inm, ims, rng, if_range = conditional_headers(scope["headers"])
    headers: Headers = [
        (b"etag", etag.encode()),
        (b"last-modified", last_modified),
        *extra,
    ]
    if not any(name == b"cache-control" for name, _ in extra):  # extra may say otherwise
        headers.insert(2, (b"cache-control", cache_control(filename, private).encode()))
    if not_modified(etag, st.st_mtime, inm, ims):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False  # gone since the lstat (an evicted cache file): nothing was sent
    try:
        await _send_body(scope, send, fd, filename, headers, (rng, if_range))
    finally:
        os.close(fd)
    return True


async def _send_body(
    scope: Scope,
    send: Send,
    fd: int,
    filename: str,
    headers: Headers,
    ranges: tuple[str | None, str | None],
) -> None:
    head = scope["method"] == "HEAD"
    st = os.fstat(fd)  # the file we opened, even if it was replaced since the lstat
    size = st.st_size
    etag = make_etag(size, st.st_mtime_ns, st.st_ino)
    last_modified = _last_modified(st.st_mtime)
    headers[0] = (b"etag", etag.encode())
    headers[1] = (b"last-modified", last_modified)
    headers.append((b"accept-ranges", b"bytes"))
    headers.append((b"content-type", content_type(filename).encode()))
    rng, if_range = ranges
    status, start, end = 200, 0, size - 1
    if (
        rng is not None
        and is_range_syntax(rng)
        and range_applies(if_range, etag, last_modified.decode())
    ):
        parsed = parse_range(rng, size)
        if parsed is None:
            unsatisfiable = [(b"content-range", f"bytes */{size}".encode())]
            await send_text(send, 416, "range not satisfiable", unsatisfiable, head)
            return
        status, (start, end) = 206, parsed
        headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
    length = end - start + 1 if size else 0
    headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if head or length == 0:
        await send({"type": "http.response.body", "body": b""})
        return
    offset, remaining = start, length
    while remaining > 0:
        chunk = os.pread(fd, min(CHUNK, remaining), offset)
        if not chunk:
            break  # the file shrank under us: end short, the client sees Content-Length unmet
        offset += len(chunk)
        remaining -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
    if remaining > 0:
        raise OSError(f"{filename} shrank while it was being sent")
