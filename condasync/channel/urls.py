"""Pure URL handling: normalise a channel location and mask its secrets for logs and reports."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

TOKEN_RE = re.compile(r"/t/([^/]+)")


def normalize_channel(location: str) -> str:
    """http(s)://, file:// or a local path -> a URL ending without a slash."""
    parts = urlsplit(location)
    if parts.scheme in ("http", "https"):
        return location.rstrip("/")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file:// URLs must name a local path (file:///path)")
        path = Path(unquote(parts.path))
    elif parts.scheme and len(parts.scheme) > 1:
        raise ValueError(
            f"unsupported URL scheme {parts.scheme!r}: use http(s)://, file:// or a path"
        )
    else:
        path = Path(location).expanduser().resolve()
    # httpx treats a host-less URL as relative, so file URLs always carry "localhost".
    return "file://localhost" + quote(str(path).rstrip("/") or "/")


def secrets_of(url: str) -> list[str]:
    """Every substring of the URL that must never be printed: tokens, user info."""
    parts = urlsplit(url)
    found = [m.group(1) for m in TOKEN_RE.finditer(parts.path)]
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    if parts.username:
        found += [parts.username, unquote(parts.username)]
    return sorted({s for s in found if s}, key=len, reverse=True)


def mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def mask_url(url: str) -> str:
    return mask(url, secrets_of(url))


def join(base: str, *segments: str) -> str:
    """Append path segments (already validated filenames) to a URL, quoting each one."""
    return "/".join([base.rstrip("/"), *(quote(s) for s in segments)])


def strip_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """Split user:password out of a URL so it travels as an auth header, not in the URL."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, (unquote(parts.username), unquote(parts.password or ""))
