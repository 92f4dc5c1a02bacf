"""Real HTTP servers on 127.0.0.1 for integration tests: a static conda channel and a faulty one.

Both run in a background thread (HTTP/1.1 keep-alive), pick a free port, work as context managers,
expose `.url`, and log every request in a thread-safe `.requests` list.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

FAULT_KINDS = ("500", "429", "reset", "truncate", "corrupt", "slow", "hang")


@dataclass
class Request:
    """One request as the server saw it. `path` has the /t/<token> prefix and the query removed."""

    method: str
    raw_path: str
    path: str
    headers: dict[str, str]  # lower-case names
    status: int | None = None
    fault: str | None = None
    time: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Fault:
    kind: str
    times: int | None  # None: always
    methods: tuple[str, ...] = ("GET",)
    options: dict[str, Any] = field(default_factory=dict)
    hits: int = 0


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    owner: ChannelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-body (killed mirrors, retries) are normal here.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # an idle keep-alive connection is dropped after this

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def do_GET(self) -> None:
        self.server.owner._serve(self, head=False)

    def do_HEAD(self) -> None:
        self.server.owner._serve(self, head=True)

    def _not_allowed(self) -> None:
        self.server.owner._send_status(self, 405, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed


def free_port() -> int:
    """A port that nothing listens on right now (for 'upstream unreachable' tests too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChannelServer:
    """Serve a folder as a static conda channel: GET/HEAD, ETag, Last-Modified, 304, Range, 404.

    A `/t/<token>/` prefix is stripped from every path (and required to equal `token` when given).
    With `auth=(user, password)`, requests without matching Basic auth get 401.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        port: int = 0,
        token: str | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.port = port
        self.token = token
        self.auth = auth
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> ChannelServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection (keep-alive, slow and hung ones too)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ChannelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # request log -----------------------------------------------------------------------------

    def log(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_for(self, path: str, method: str | None = None) -> list[Request]:
        return [r for r in self.log() if r.path == path and (method is None or r.method == method)]

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # serving ---------------------------------------------------------------------------------

    def _clean_path(self, raw: str) -> tuple[str, bool]:
        """(path without query and token prefix, token ok)."""
        path = unquote(urlsplit(raw).path)
        ok = self.token is None
        if path.startswith("/t/"):
            rest = path[3:]
            token, _, tail = rest.partition("/")
            ok = self.token is None or token == self.token
            path = "/" + tail
        return path, ok

    def _resolve(self, path: str) -> Path | None:
        """The file under root that `path` names, or None. Never anything outside root."""
        if "\x00" in path:
            return None
        candidate = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
        if os.path.commonpath([candidate, str(self.root)]) != str(self.root):
            return None
        if not os.path.isfile(candidate):
            return None
        return Path(candidate)

    def _authorized(self, handler: _Handler) -> bool:
        if self.auth is None:
            return True
        import base64

        expected = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return handler.headers.get("Authorization", "") == f"Basic {expected}"

    def _serve(self, handler: _Handler, head: bool) -> None:
        path, token_ok = self._clean_path(handler.path)
        entry = Request(
            method=handler.command,
            raw_path=handler.path,
            path=path,
            headers={k.lower(): v for k, v in handler.headers.items()},
        )
        with self._lock:
            self.requests.append(entry)
        try:
            if not token_ok or not self._authorized(handler):
                entry.status = 401
                self._send_status(handler, 401, extra={"WWW-Authenticate": 'Basic realm="test"'})
                return
            if self._fault_hook(handler, entry, head):
                return
            self._serve_file(handler, entry, path, head)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            handler.close_connection = True

    def _fault_hook(self, handler: _Handler, entry: Request, head: bool) -> bool:
        """Overridden by FaultServer; True when the request was fully handled."""
        return False

    def _send_status(
        self,
        handler: _Handler,
        status: int,
        extra: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        body = f"{status}\n".encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        if not head and handler.command != "HEAD":
            handler.wfile.write(body)

    @staticmethod
    def _etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'

    def _serve_file(self, handler: _Handler, entry: Request, path: str, head: bool) -> None:
        target = self._resolve(path)
        if target is None:
            entry.status = 404
            self._send_status(handler, 404, head=head)
            return
        data = target.read_bytes()
        mtime = target.stat().st_mtime
        etag = self._etag(data)
        last_modified = email.utils.formatdate(mtime, usegmt=True)
        validators = {"ETag": etag, "Last-Modified": last_modified}

        inm = handler.headers.get("If-None-Match")
        ims = handler.headers.get("If-Modified-Since")
        not_modified = False
        if inm is not None:
            tags = [t.strip() for t in inm.split(",")]
            not_modified = "*" in tags or etag in tags or f"W/{etag}" in tags
        elif ims is not None:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
                not_modified = int(mtime) <= since
            except (TypeError, ValueError):
                not_modified = False
        if not_modified:
            entry.status = 304
            handler.send_response(304)
            for k, v in validators.items():
                handler.send_header(k, v)
            handler.end_headers()
            return

        status, body, extra = 200, data, {"Accept-Ranges": "bytes"}
        range_header = handler.headers.get("Range")
        if_range = handler.headers.get("If-Range")
        if range_header and (if_range is None or if_range in (etag, last_modified)):
            parsed = _parse_range(range_header, len(data))
            if parsed is None:
                entry.status = 416
                self._send_status(
                    handler, 416, extra={"Content-Range": f"bytes */{len(data)}"}, head=head
                )
                return
            start, end = parsed
            status, body = 206, data[start : end + 1]
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        entry.status = status
        self._send_body(handler, entry, status, body, {**validators, **extra}, head)

    def _send_body(
        self,
        handler: _Handler,
        entry: Request,
        status: int,
        body: bytes,
        headers: dict[str, str],
        head: bool,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        if not head:
            handler.wfile.write(body)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single `bytes=a-b`, `a-` or `-n` range -> (start, end inclusive); None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class FaultServer(ChannelServer):
    """A ChannelServer whose answers for chosen paths misbehave, configured at run time.

    `fault(path, kind, times=N)`: the first N matching requests misbehave, later ones are served
    normally; `times=None` means always. Kinds: 500, 429 (Retry-After), reset (RST mid-body),
    truncate (short body, then close), corrupt (bytes flipped, same length), slow (drip the body),
    hang (send nothing until stopped or `hang_seconds`).
    """

    def __init__(self, root: str | os.PathLike[str], port: int = 0, **kwargs: Any) -> None:
        super().__init__(root, port, **kwargs)
        self._faults: dict[str, Fault] = {}

    def fault(
        self,
        path: str,
        kind: str | int,
        times: int | None = None,
        methods: tuple[str, ...] = ("GET",),
        **options: Any,
    ) -> None:
        """Options: retry_after (429, default "1"), chunk/interval (slow, default 1 byte/50 ms),
        hang_seconds (hang, default 120)."""
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {FAULT_KINDS}")
        if not path.startswith("/"):
            path = "/" + path
        with self._lock:
            self._faults[path] = Fault(kind, times, tuple(methods), options)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def fault_hits(self, path: str) -> int:
        with self._lock:
            fault = self._faults.get(path if path.startswith("/") else "/" + path)
            return fault.hits if fault else 0

    def _take_fault(self, path: str, method: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(path)
            if fault is None or method not in fault.methods:
                return None
            if fault.times is not None and fault.hits >= fault.times:
                return None
            fault.hits += 1
            return fault

    def _fault_hook(self, handler: _Handler, entry: Request, head: bool) -> bool:
        fault = self._take_fault(entry.path, handler.command)
        if fault is None:
            return False
        entry.fault = fault.kind
        kind, opts = fault.kind, fault.options
        if kind == "500":
            entry.status = 500
            self._send_status(handler, 500, head=head)
            return True
        if kind == "429":
            entry.status = 429
            self._send_status(
                handler, 429, extra={"Retry-After": str(opts.get("retry_after", "1"))}, head=head
            )
            return True
        if kind == "hang":
            self._stopping.wait(float(opts.get("hang_seconds", 120)))
            self._abort(handler, rst=True)
            return True

        target = self._resolve(entry.path)
        if target is None:
            return False
        data = target.read_bytes()
        headers = {
            "ETag": self._etag(data),
            "Last-Modified": email.utils.formatdate(target.stat().st_mtime, usegmt=True),
        }
        entry.status = 200
        if kind == "corrupt":
            body = bytearray(data)
            for pos in {0, len(body) // 2, len(body) - 1} if body else ():
                body[pos] ^= 0xFF
            self._send_body(handler, entry, 200, bytes(body), headers, head)
            return True

        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        if head:
            return True
        if kind in ("reset", "truncate"):
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            self._abort(handler, rst=(kind == "reset"))
            return True
        if kind == "slow":
            chunk = int(opts.get("chunk", 1))
            interval = float(opts.get("interval", 0.05))
            for i in range(0, len(data), chunk):
                if self._stopping.is_set():
                    self._abort(handler, rst=True)
                    return True
                handler.wfile.write(data[i : i + chunk])
                handler.wfile.flush()
                time.sleep(interval)
            return True
        raise AssertionError(kind)

    @staticmethod
    def _abort(handler: _Handler, rst: bool) -> None:
        handler.close_connection = True
        conn = handler.connection
        with contextlib.suppress(OSError):
            handler.wfile.flush()
        try:
            if rst:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
