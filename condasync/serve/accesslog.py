"""The JSON access log of `serve --access-log -|PATH`: one line per request, and the request
path as it may be logged (a `/t/<key>/` token removed, never a query string)."""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import IO

import orjson

from condasync.serve.files import Scope

_TOKEN = re.compile(r"^/t/[^/]*(?=/|$)")


def clean_path(scope: Scope) -> str:
    """The request path without any `/t/<key>` token (raw, so nothing is decoded twice)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else str(scope["path"])
    path = path.split("?", 1)[0]
    if path.startswith("/t/"):
        path = _TOKEN.sub("", path) or "/"
    return path


class AccessLog:
    """Appends one JSON object per request to a file, or to stdout for `-`."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._stream: IO[bytes] = (
            sys.stdout.buffer if target == "-" else open(target, "ab", buffering=0)  # noqa: SIM115
        )
        self._lock = threading.Lock()
        self._second = -1
        self._stamp = ""

    def write(
        self,
        *,
        method: str,
        path: str,
        status: int,
        sent: int,
        seconds: float,
        channel: str | None,
        cache: str | None,
        request_id: str,
    ) -> None:
        line = orjson.dumps(
            {
                "time": self._now(),
                "method": method,
                "path": path,
                "status": status,
                "bytes": sent,
                "duration_s": round(seconds, 6),
                "channel": channel,
                "cache": cache,
                "request_id": request_id,
            }
        )
        with self._lock:
            self._stream.write(line + b"\n")
            if self.target == "-":
                self._stream.flush()

    def _now(self) -> str:
        """UTC with milliseconds; the seconds part formatted once per second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def close(self) -> None:
        if self.target != "-":
            self._stream.close()
