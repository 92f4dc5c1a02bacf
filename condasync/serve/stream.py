"""One upstream download shared by every client asking for the file meanwhile: its progress
record, and the relay that streams the growing file to one client."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from condasync.serve.files import CHUNK, Send


@dataclass
class Download:
    """One upstream download shared by every client that asked for the file meanwhile."""

    size: int
    temp: Path
    state: str = "starting"  # starting -> streaming -> done | failed
    written: int = 0
    status: int = 0
    message: str = ""

    def __post_init__(self) -> None:
        self._changed = asyncio.Event()

    @property
    def event(self) -> asyncio.Event:
        """Set at the next change of state or size; take it before looking at the state."""
        return self._changed

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


async def relay(send: Send, fd: int, dl: Download) -> None:
    """Send what the download has written so far, holding back the last byte until the whole
    file is verified; on a failure, abort so the client never holds a complete-looking body."""
    sent = 0
    while True:
        event, state = dl.event, dl.state
        limit = dl.size if state == "done" else min(dl.written, dl.size - 1)
        if sent < limit:
            chunk = os.pread(fd, min(CHUNK, limit - sent), sent)
            if not chunk:
                raise OSError("cache file ended early")
            sent += len(chunk)
            done = state == "done" and sent == dl.size
            await send({"type": "http.response.body", "body": chunk, "more_body": not done})
            if done:
                return
        elif state == "done":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        elif state == "failed":
            raise ProxyAborted(dl.message)
        else:
            await event.wait()


class ProxyAborted(Exception):
    """Raised mid-response so the server drops the connection (a short body, never a bad one)."""
