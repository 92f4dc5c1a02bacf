"""Browser sessions for the pages: the API key in an HttpOnly, SameSite=Strict cookie, and the
CSRF token derived from it that a state-changing request must carry. Keys are never taken
from the URL (`?key=` would end up in logs)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

COOKIE = "condasync_key"
CSRF_HEADER = "x-csrf-token"
COOKIE_MAX_AGE = 8 * 3600


def csrf_token(key: str) -> str:
    """Bound to the session's key: a page of this origin can show it, another site cannot
    read it (and cannot send the cookie either: SameSite=Strict)."""
    return hmac.new(key.encode(), b"condasync-csrf-v1", hashlib.sha256).hexdigest()


def csrf_ok(key: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(csrf_token(key), token or "")


def header_key(headers: Mapping[str, str]) -> str | None:
    """The key of a script: `X-API-Key` or `Authorization: Bearer`."""
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, cred = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and cred.strip():
        return cred.strip()
    return None


def cookie_key(cookies: Mapping[str, str]) -> str | None:
    key = cookies.get(COOKIE, "").strip()
    return key or None


def api_session_key(headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
    """For the API: the cookie's key, only when the request carries its CSRF token in the
    X-CSRF-Token header (the pages' Synchronize button does)."""
    key = cookie_key(cookies)
    if key is None or not csrf_ok(key, headers.get(CSRF_HEADER)):
        return None
    return key


def set_cookie_header(key: str, secure: bool) -> str:
    flags = f"; Max-Age={COOKIE_MAX_AGE}; Path=/; HttpOnly; SameSite=Strict"
    return f"{COOKIE}={key}{flags}{'; Secure' if secure else ''}"


def clear_cookie_header() -> str:
    return f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"


def same_origin(headers: Mapping[str, str]) -> bool:
    """A form post comes from our own pages: its Origin (or Referer) names our host. A
    request with neither (a script) passes; browsers always send Origin on a POST."""
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        return source != "null"
    hosts = {headers.get("host", ""), headers.get("x-forwarded-host", "")} - {""}
    return urlsplit(source).netloc in hosts  # behind a proxy that rewrites Host, too


def safe_next(path: str | None) -> str:
    """Where to go after logging in: a path on this site only."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path
