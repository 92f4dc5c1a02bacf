"""PURE: HTTP validators and ranges (strong ETag, 304 decisions, single byte ranges)."""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from datetime import datetime


def conditional_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, str | None, str | None]:
    """(If-None-Match, If-Modified-Since, Range, If-Range) from raw ASGI request headers."""
    found: dict[bytes, str] = {}
    for key, value in headers:
        if key in (b"if-none-match", b"if-modified-since", b"range", b"if-range"):
            found[key] = value.decode("latin-1")
    return (
        found.get(b"if-none-match"),
        found.get(b"if-modified-since"),
        found.get(b"range"),
        found.get(b"if-range"),
    )


def make_etag(size: int, mtime_ns: int, ino: int = 0) -> str:
    """A strong validator: it changes whenever the file is replaced (new inode or mtime)."""
    return f'"{size:x}-{mtime_ns:x}-{ino:x}"'


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def _parse_date(value: str) -> float | None:
    try:
        when: datetime | None = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() if when is not None else None


def not_modified(
    etag: str, mtime: float, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """RFC 9110 §13.1: If-None-Match wins; If-Modified-Since is only looked at without it."""
    if if_none_match is not None:
        if if_none_match == etag:
            return True
        tags = [t.strip() for t in if_none_match.split(",")]
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    if if_modified_since is not None:
        since = _parse_date(if_modified_since)
        return since is not None and int(mtime) <= since
    return False


def range_applies(if_range: str | None, etag: str, last_modified: str) -> bool:
    return if_range is None or if_range.strip() in (etag, last_modified)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b`, `a-` or `-n` range -> (start, end inclusive); None if unsatisfiable.

    A multi-range request is answered with its first range only (no multipart bodies).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    first_spec = spec.split(",")[0].strip()
    first, sep, last = first_spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or start >= size or end < start:
        return None
    return start, min(end, size - 1)


def is_range_syntax(header: str) -> bool:
    """Whether a Range header is well formed; malformed ones are ignored (200), per RFC 9110."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return False
    first, sep, last = spec.split(",")[0].strip().partition("-")
    return bool(sep) and (first.isdigit() or first == "") and (last.isdigit() or last == "")
