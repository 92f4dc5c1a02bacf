"""Raw ASGI responses for channel files kept as S3 objects, streamed through the replica (so
private channels keep their key check and any client works): the object's ETag and
Last-Modified as validators, 304, one byte range, and False for a missing object (a 404)."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import NotFoundError, PreconditionError

from condasync.serve.files import CHUNK, Headers, Scope, Send, send_text
from condasync.serve.httpcache import (
    conditional_headers,
    http_date,
    is_range_syntax,
    not_modified,
    parse_range,
    range_applies,
)
from condasync.serve.paths import cache_control, content_type

if TYPE_CHECKING:
    from obstore import GetOptions, ObjectMeta
    from obstore.store import S3Store

ATTEMPTS = 3  # the object may be replaced between HEAD and GET (an index): look again


class StorageUnavailable(Exception):
    """The object store failed (not a missing object): the caller answers 502."""


def _etag(meta: ObjectMeta) -> str:
    tag = (meta["e_tag"] or "").strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    # A strong validator that changes whenever the object does, even on a store whose ETag
    # would not: size and LastModified go in too.
    return f'"{tag}-{meta["size"]:x}-{_seconds(meta["last_modified"]):x}"'


def _seconds(moment: datetime.datetime) -> int:
    return int(moment.timestamp())


async def send_object(
    scope: Scope,
    send: Send,
    store: S3Store,
    key: str,
    filename: str,
    private: bool,
    extra: Headers | None = None,
) -> bool:
    """Answer GET/HEAD from the object at key: 200, 206, 304 or 416. False (nothing sent) when
    there is no such object; StorageUnavailable when the store fails before anything is sent."""
    for attempt in range(ATTEMPTS):
        try:
            return await _send_object(scope, send, store, key, filename, private, extra or [])
        except (FileNotFoundError, NotFoundError):
            return False
        except PreconditionError:
            if attempt == ATTEMPTS - 1:
                raise StorageUnavailable(f"{key} keeps changing") from None
        except _Started:
            raise
        except Exception as exc:  # obstore raises many kinds; all mean the store failed
            raise StorageUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return False


class _Started(Exception):
    """The store failed after the response started: drop the connection."""


async def _send_object(
    scope: Scope,
    send: Send,
    store: S3Store,
    key: str,
    filename: str,
    private: bool,
    extra: Headers,
) -> bool:
    head = scope["method"] == "HEAD"
    inm, ims, rng, if_range = conditional_headers(scope["headers"])
    meta = await obstore.head_async(store, key)
    size = meta["size"]
    etag = _etag(meta)
    modified = _seconds(meta["last_modified"])
    last_modified = http_date(modified)
    headers: Headers = [
        (b"etag", etag.encode()),
        (b"last-modified", last_modified.encode()),
        *extra,
    ]
    if not any(name == b"cache-control" for name, _ in extra):  # extra may say otherwise
        headers.insert(2, (b"cache-control", cache_control(filename, private).encode()))
    if not_modified(etag, modified, inm, ims):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True
    headers.append((b"accept-ranges", b"bytes"))
    headers.append((b"content-type", content_type(filename).encode()))
    status, start, end = 200, 0, size - 1
    if rng is not None and is_range_syntax(rng) and range_applies(if_range, etag, last_modified):
        parsed = parse_range(rng, size)
        if parsed is None:
            unsatisfiable = [(b"content-range", f"bytes */{size}".encode())]
            await send_text(send, 416, "range not satisfiable", unsatisfiable, head)
            return True
        status, (start, end) = 206, parsed
        headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
    length = end - start + 1 if size else 0
    headers.append((b"content-length", str(length).encode()))
    if head or length == 0:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True
    options: GetOptions = {"if_match": meta["e_tag"]} if meta["e_tag"] else {}
    if status == 206:
        options["range"] = (start, end + 1)
    result = await obstore.get_async(store, key, options=options)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    remaining = length
    try:
        async for chunk in result.stream(min_chunk_size=CHUNK):
            data: Any = bytes(chunk)[:remaining]
            remaining -= len(data)
            await send({"type": "http.response.body", "body": data, "more_body": remaining > 0})
            if remaining <= 0:
                break
    except Exception as exc:
        raise _Started(f"{key}: {exc}") from None
    if remaining > 0:
        raise _Started(f"{key} ended {remaining} bytes short")
    return True
