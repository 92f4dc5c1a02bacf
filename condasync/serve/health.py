"""Readiness of one `serve` process for `/readyz`: the database answers and the channel
storage (the local folder or the S3 bucket) can be read. Cheap, and bounded in time."""

from __future__ import annotations

import asyncio
import os
import time

from sqlalchemy import text

from condasync.serve.server import Server

TIMEOUT = 3.0  # seconds a check may take before the answer is "not ready"
REMEMBER = 1.0  # seconds an answer is reused: a burst of probes costs one check


class _Last:
    at = -1e9
    reason: str | None = None


_LAST: dict[int, _Last] = {}


def _check_db(server: Server) -> None:
    with server.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_store(server: Server) -> None:
    store = server.store
    if store.local:
        root = str(getattr(store, "root", server.root))
        if not os.path.isdir(root) or not os.access(root, os.R_OK | os.X_OK):
            raise OSError(f"{root} is not a readable folder")
        with os.scandir(root) as entries:
            next(entries, None)
    else:
        check = getattr(store, "check", None)
        if check is not None:
            check()


async def _timed(what: str, check: object, server: Server) -> str | None:
    assert callable(check)
    try:
        await asyncio.wait_for(asyncio.to_thread(check, server), TIMEOUT)
    except asyncio.TimeoutError:
        return f"{what} did not answer within {TIMEOUT:g} s"
    except Exception as exc:  # any failure means not ready; say which
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{what}: {message[:200]}"
    return None


async def readiness(server: Server) -> str | None:
    """None when ready, else the reason (the database first, then the storage)."""
    last = _LAST.setdefault(id(server), _Last())
    if time.monotonic() - last.at < REMEMBER:
        return last.reason
    reason = await _timed("database", _check_db, server)
    if reason is None:
        reason = await _timed("channel storage", _check_store, server)
    last.at, last.reason = time.monotonic(), reason
    return reason
