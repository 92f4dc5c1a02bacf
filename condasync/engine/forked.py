"""A CPU-heavy step run in a forked child: it gets its own interpreter lock (so its work no
longer stalls the parent's downloads) and sees the parent's memory as it was at the fork,
without a copy. The parent may send it one message later on (what it learnt since the fork);
the result comes back pickled through a pipe.

Used by `condasync mirror` only, where the fork happens from the event loop's thread. The
child touches no lock another thread could hold (no logging, no output, no network), dies
with its parent, and ends with `os._exit`. Whatever goes wrong in it, the caller is told "no
result" and does the step itself, so a failure there costs time, never correctness: the real
error, if any, then surfaces in the parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

PR_SET_PDEATHSIG = 1
WAIT_LIMIT = 600.0  # seconds: a child still silent by then is killed (and the work redone)

Receive = Callable[[], Any]  # in the child: the parent's message (blocks until it is sent)


class Forked(Generic[T]):
    """`fn(receive)` running in a child process, started at construction.

    `send(message)` gives the child what `receive()` returns there, once. `result()` waits
    for the child, once: its value, or None when it failed, died or could not be started.
    `kill()` (from any thread) ends it early; `result()` still reaps it."""

    def __init__(self, fn: Callable[[Receive], T]) -> None:
        self.pid = 0
        self._fd = self._to_child = -1
        self._lock = threading.Lock()
        if not hasattr(os, "fork"):
            return
        parent = os.getpid()
        up_read, up_write = os.pipe()
        down_read, down_write = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no memory or process slot for it: the caller does the work
            for fd in (up_read, up_write, down_read, down_write):
                os.close(fd)
            return
        if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
            os.close(up_read)
            os.close(down_write)
            _child(fn, up_write, down_read, parent)
        os.close(up_write)
        os.close(down_read)
        self.pid, self._fd, self._to_child = pid, up_read, down_write

    def send(self, message: object) -> None:
        """The child's message (a child that has died meanwhile is not an error here)."""
        fd, self._to_child = self._to_child, -1
        if fd < 0:
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:  # length first: a later fork's copy of this pipe keeps it from ever ending
            _write_all(fd, len(data).to_bytes(8, "big") + data)
        except OSError:
            pass  # it died: result() says so
        finally:
            os.close(fd)

    def result(self, limit: float = WAIT_LIMIT) -> T | None:
        if not self.pid:
            return None
        chunks: list[bytes] = []
        deadline = time.monotonic() + limit
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                    chunks = []
                    self.kill()
                    break
                chunk = os.read(self._fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            status = self._reap()
        if status != 0 or not chunks:
            return None
        try:
            value: T = pickle.loads(b"".join(chunks))
        except Exception:  # a truncated result is no result
            return None
        return value

    def kill(self) -> None:
        with self._lock:  # not reaped meanwhile: the pid is still our child's
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)

    def _reap(self) -> int:
        for fd in (self._fd, self._to_child):
            if fd >= 0:
                os.close(fd)
        with self._lock:
            _, status = os.waitpid(self.pid, 0)
            self.pid, self._fd, self._to_child = 0, -1, -1
        return os.waitstatus_to_exitcode(status)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the parent sent nothing")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _child(  # pragma: no cover - runs in the child
    fn: Callable[[Receive], object], write_fd: int, read_fd: int, parent: int
) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the parent's event loop's, shared: not ours to wake
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(Exception):  # Linux: die when the parent dies
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return  # the parent died before the line above

        def receive() -> Any:
            size = int.from_bytes(_read_exactly(read_fd, 8), "big")
            return pickle.loads(_read_exactly(read_fd, size))

        _write_all(write_fd, pickle.dumps(fn(receive), protocol=pickle.HIGHEST_PROTOCOL))
        code = 0
    except BaseException:  # the parent redoes the work, and reports what fails
        pass
    finally:
        os._exit(code)
