"""engine/forked.py: a step run in a forked child, its result pickled back; a failing,
killed or silent child gives no result (the caller then does the step itself)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from condasync.engine.forked import Forked


def test_the_childs_result_comes_back() -> None:
    parent = os.getpid()
    child = Forked(lambda: {"pid": os.getpid(), "data": b"x" * 3_000_000})
    got = child.result()
    assert got is not None and got["pid"] not in (0, parent)
    assert got["data"] == b"x" * 3_000_000  # larger than a pipe's buffer


def test_a_failing_child_gives_no_result() -> None:
    def fails() -> None:
        raise OSError("no space left on device")

    assert Forked(fails).result() is None


def test_a_killed_or_silent_child_gives_no_result(tmp_path: Path) -> None:
    child = Forked(lambda: time.sleep(60))
    threading.Timer(0.2, child.kill).start()
    clock = time.monotonic()
    assert child.result() is None
    assert time.monotonic() - clock < 10
    silent = Forked(lambda: time.sleep(60))
    assert silent.result(limit=0.3) is None  # killed at the limit, and reaped


def test_the_child_lets_go_of_the_run_lock_and_names_temps_apart(tmp_path: Path) -> None:
    """The run lock goes with the parent, not with a child still at work; the child's temp
    files never take the parent's names."""
    from condasync.storage import local, open_storage

    storage = open_storage(str(tmp_path))
    with storage.lock():
        fd = getattr(storage, "_lock_fd", None)
        assert fd is not None

        def look() -> tuple[bool, str]:
            try:
                os.fstat(fd)
            except OSError:
                return False, local._RUN
            return True, local._RUN

        got = Forked(look).result()
    assert got is not None
    still_open, tag = got
    assert not still_open
    assert tag != local._RUN
