"""Who is calling the API: the X-API-Key (or Bearer) header as an Identity, and the 401/403/404
answers every route gives alike (a wrong or revoked key is unauthenticated: 401, as in quetz)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from condasync.serve.db import Channel
from condasync.serve.paths import is_channel_name
from condasync.serve.roles import Identity, can_read
from condasync.serve.server import Server
from condasync.serve.session import api_session_key

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def caller(
    request: Request, key: Annotated[str | None, Security(api_key_header)] = None
) -> Identity | None:
    """The key's identity; 401 for a key that is unknown or revoked, None for no key."""
    if not key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    if not key:  # the pages' session cookie, only with its CSRF token in a header
        key = api_session_key(request.headers, request.cookies)
    if not key:
        return None
    server: Server = request.app.state.server
    who = server.identify(key)
    if who is None:
        raise HTTPException(401, "invalid or revoked API key")
    return who


def required(who: Annotated[Identity | None, Depends(caller)]) -> Identity:
    if who is None:
        raise HTTPException(401, "an API key is needed (X-API-Key header)")
    return who


Caller = Annotated[Identity | None, Depends(caller)]
Required = Annotated[Identity, Depends(required)]


def existing(server: Server, name: str) -> Channel:
    channel = server.channel(name) if is_channel_name(name) else None
    if channel is None:
        raise HTTPException(404, f"no channel named {name!r}")
    return channel


def readable(server: Server, name: str, who: Identity | None) -> Channel:
    channel = existing(server, name)
    if channel.private and who is None:
        raise HTTPException(401, "this channel is private: an API key is needed")
    if not can_read(who, channel.name, channel.private):
        raise HTTPException(403, "this key has no role on this channel")
    return channel
