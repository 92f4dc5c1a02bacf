"""A CPU-heavy step run in a forked child: it gets its own interpreter lock (so its work no
longer stalls the parent's downloads) and sees the parent's memory as it was at the fork,
without a copy. Its result comes back pickled through a pipe.

Used by `condasync mirror` only (Linux), where the fork happens from the event loop's
thread before the subdir's own worker threads start (another subdir's may be at work). The
child takes no lock another thread could hold (no logging, output, network or thread pool of
the parent's), dies with its parent, and ends with `os._exit`. Whatever goes wrong
in it, the caller is told "no result" and does the step itself, so a failure there costs
time, never correctness: the real error, if any, then surfaces in the parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

PR_SET_PDEATHSIG = 1
WAIT_LIMIT = 600.0  # seconds: a child still silent by then is killed (and the work redone)


class Forked(Generic[T]):
    """`fn()` running in a child process, started at construction.

    `result()` waits for it, once: the value, or None when the child failed, died or could
    not be started. `kill()` (from another thread) ends it early; `result()` still reaps it."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.pid = 0
        self._fd = -1
        self._lock = threading.Lock()
        if not sys.platform.startswith("linux"):
            return  # elsewhere a fork of a threaded process is not safe enough (macOS)
        parent = os.getpid()
        read_fd, write_fd = os.pipe()
        try:
            with warnings.catch_warnings():  # 3.12+ warns of forking a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:  # no memory or process slot for it: the caller does the work
            os.close(read_fd)
            os.close(write_fd)
            return
        if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
            os.close(read_fd)
            _child(fn, write_fd, parent)
        os.close(write_fd)
        self.pid, self._fd = pid, read_fd

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
                    os.kill(self.pid, signal.SIGKILL)
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
        os.close(self._fd)
        with self._lock:
            _, status = os.waitpid(self.pid, 0)
            self.pid, self._fd = 0, -1
        return os.waitstatus_to_exitcode(status)


def _child(fn: Callable[[], object], write_fd: int, parent: int) -> None:  # pragma: no cover
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the parent's event loop's, shared: not ours to wake
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(Exception):  # Linux: die when the parent dies
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return  # the parent died before the line above
        data = pickle.dumps(fn(), protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
        code = 0
    except BaseException:  # the parent redoes the work, and reports what fails
        pass
    finally:
        os._exit(code)
