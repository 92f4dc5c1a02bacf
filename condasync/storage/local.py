"""The local filesystem backend: staged temp files, atomic renames, and the flock run lock."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import filecmp
import itertools
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from condasync.errors import LockedError, UsageError
from condasync.storage.base import (
    IN_MEMORY,
    STAGING,
    STATE_DIR,
    Data,
    SafetyError,
    StagedFile,
    describe_os_error,
    hash_file,
    plain_relpath,
    safe_join,
)

_RUN = uuid.uuid4().hex[:8]  # temp names: this process's tag and a serial number
_serial = itertools.count()
_LOCK_FDS: set[int] = set()  # run locks this process holds


def _after_fork_in_child() -> None:
    """A forked child (engine/forked.py) names its temp files apart from its parent's, and
    lets go of its copies of the run lock: the lock goes when the parent does."""
    global _RUN
    _RUN = uuid.uuid4().hex[:8]
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _staging_dir(parent: str, made: set[str]) -> str:
    """`<parent>/.condasync-tmp`, created once; refused if something planted a link there
    (temp files would then land outside the tree)."""
    staging = os.path.join(parent, STAGING)
    if staging not in made:
        os.makedirs(staging, exist_ok=True)
        if os.path.islink(staging):
            raise SafetyError(f"refusing to stage through the symlink {staging}")
        made.add(staging)
    return staging


class LocalStaged:
    """A file being written for `target`: held in memory while small, then a temp file in
    `<subdir>/.condasync-tmp/`, moved over its target with os.replace on commit.

    Small packages never touch the disk until commit, so the engine can do the whole
    create-write-rename in one call (three syscalls and a rename). The rename replaces
    whatever entry is at the target, a symlink included, and never follows it.
    """

    def __init__(self, target: str, made: set[str]) -> None:
        self.target = target
        self._made = made  # staging folders this storage knows exist
        self.path: str | None = None
        self._buf = bytearray()
        self._fh: BinaryIO | None = None
        self._mtime_ns = 0

    def _temp(self) -> str:
        staging = _staging_dir(os.path.dirname(self.target), self._made)
        return f"{staging}/{os.path.basename(self.target)}.{_RUN}.{next(_serial)}"

    def _spill(self) -> BinaryIO:
        if self._fh is None:
            self.path = self._temp()
            self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            self._fh.write(self._buf)
            self._buf = bytearray()
        return self._fh

    def write(self, chunk: bytes) -> None:
        try:
            if self._fh is None and len(self._buf) + len(chunk) <= IN_MEMORY:
                self._buf += chunk
            else:
                self._spill().write(chunk)
        except OSError as exc:
            raise describe_os_error(exc, os.path.basename(self.target)) from None

    def close(self) -> None:
        """Put the bytes on disk (not yet visible); call from a worker thread."""
        try:
            if self._fh is None:  # still in memory: create and write in one go
                self.path = self._temp()
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                try:
                    view = memoryview(self._buf)
                    while view:
                        view = view[os.write(fd, view) :]
                    self._mtime_ns = os.fstat(fd).st_mtime_ns  # a rename keeps it
                finally:
                    os.close(fd)
                self._buf = bytearray()
            else:
                fh, self._fh = self._fh, None
                with fh:
                    fh.flush()
                    self._mtime_ns = os.fstat(fh.fileno()).st_mtime_ns
        except OSError as exc:
            raise describe_os_error(exc, os.path.basename(self.target)) from None

    def commit(self) -> int:
        """Move into place atomically; returns the committed file's mtime_ns."""
        if self.path is None or self._fh is not None:
            self.close()
        assert self.path is not None
        try:
            os.replace(self.path, self.target)
        except OSError as exc:
            raise describe_os_error(exc, os.path.basename(self.target)) from None
        return self._mtime_ns

    def discard(self) -> None:
        self._buf = bytearray()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class LocalPrepared:
    """Temp files waiting to be renamed over their targets (see LocalStorage.prepare)."""

    def __init__(self, root: Path, pending: list[tuple[int, Path, Path]]) -> None:
        self._root = root
        self._pending = [(tmp, target) for _, tmp, target in pending]

    def publish(self) -> list[str]:
        """Rename each temp over its target, in the order given, unless the target holds the
        same bytes by now (the check is made here, not when the temp was written, since the
        target may change in between); returns what changed. The checks come first and the
        renames back to back (see _rename_back_to_back)."""
        moves: list[tuple[Path, Path]] = []
        try:
            for tmp, target in self._pending:
                if _same_file(tmp, target):
                    tmp.unlink()
                else:
                    moves.append((tmp, target))
            _rename_back_to_back(moves)
        except OSError as exc:
            raise describe_os_error(exc, exc.filename or "an index file") from None
        self._pending = []
        return [str(target.relative_to(self._root)) for _, target in moves]

    def discard(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending = []


class LocalStorage:
    """A mirror tree on a local filesystem."""

    def __init__(self, root: Path, create: bool = True) -> None:
        if create:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create target directory {root}: {exc.strerror}") from None
        if root.exists() and not root.is_dir():
            raise UsageError(f"target {root} is not a directory")
        self.root = Path(os.path.realpath(root))
        self.label = str(root)
        self.local = True
        self._dirs: dict[str, str] = {}  # relpath of a folder -> its checked real path
        self._staging: set[str] = set()
        self._lock_fd: int | None = None

    def path(self, relpath: str) -> Path:
        """safe_join, with the resolved parent folder cached: one lstat per package, not eight."""
        candidate = self._in_known_folder(relpath)
        if candidate is not None and not os.path.islink(candidate):
            return Path(candidate)
        return self._checked(relpath)

    def _in_known_folder(self, relpath: str) -> str | None:
        """relpath as a path string, when its folder was checked already and its name is plain."""
        head, _, name = relpath.rpartition("/")
        parent = self._dirs.get(head) if head else None
        return f"{parent}/{name}" if parent is not None and plain_relpath(name) else None

    def _checked(self, relpath: str) -> Path:
        path = safe_join(self.root, relpath)
        head = relpath.rpartition("/")[0]
        if head and head not in self._dirs:
            self._dirs[head] = str(safe_join(self.root, head))
        return path

    def stage(self, relpath: str) -> StagedFile:
        """A file to write; no symlink check on the target, since a rename never follows one."""
        target = self._in_known_folder(relpath) or str(self._checked(relpath))
        return LocalStaged(target, self._staging)

    def read(self, relpath: str) -> bytes | None:
        try:
            return self.path(relpath).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_if_changed(self, relpath: str, data: bytes) -> bool:
        """Atomically replace relpath with data unless it already holds exactly these bytes."""
        return bool(self.publish([(relpath, data)]))

    def publish(self, files: Sequence[tuple[str, Data]]) -> list[str]:
        """Write each file to a temp beside it (fsync), then rename them in order, skipping
        those whose target already holds the same bytes.

        All temp files are complete before the first rename, so a full disk fails before any
        published file changes, and the renames land back to back. Data may be a Future (say,
        a compression still running): ready files are written first, while it finishes.
        Returns what changed.
        """
        prepared = self.prepare(files)
        try:
            return prepared.publish()
        finally:
            prepared.discard()

    def put_immutable(self, files: Sequence[tuple[str, bytes]]) -> None:
        """Content-addressed files (CEP-16 shards): each is written to a temp beside it and
        renamed into place, complete, without an fsync of its own; `sync()` then makes them
        all durable at once, before anything that names them is published (one fsync per
        file costs ~1 ms: 25 s for a first write of 25,000 shards, measured)."""
        made: set[Path] = set()
        relpath = ""
        try:
            for relpath, data in files:
                target = self.path(relpath)
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                tmp = target.parent / f".{target.name}.{_RUN}{next(_serial)}.tmp"
                try:
                    with open(tmp, "wb") as fh:
                        fh.write(data)
                    os.replace(tmp, target)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
        except OSError as exc:
            raise describe_os_error(exc, relpath) from None

    def sync(self) -> None:
        """Flush everything written to this filesystem (syncfs(2); sync(2) where missing)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs = getattr(_libc, "syncfs", None)
            if syncfs is None or syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def prepare(self, files: Sequence[tuple[str, Data]], staged: bool = False) -> LocalPrepared:
        """The write half of publish(): temp files, complete and fsynced, not yet renamed.

        `staged` puts them in the subdir's staging folder, which the next run clears, for
        files prepared long before they are published (a kill -9 in between leaves no litter).
        """
        pending: list[tuple[int, Path, Path]] = []
        relpath = ""
        try:
            ready_first = sorted(range(len(files)), key=lambda i: isinstance(files[i][1], Future))
            for i in ready_first:
                relpath, data = files[i]
                if isinstance(data, Future):
                    data = data.result()
                target = self.path(relpath)
                if staged:
                    folder = Path(_staging_dir(str(target.parent), self._staging))
                else:
                    folder = target.parent
                    folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
                pending.append((i, tmp, target))
                with open(tmp, "wb") as fh:
                    fh.writelines([data] if isinstance(data, bytes) else data)
                    fh.flush()
                    os.fsync(fh.fileno())
        except BaseException as exc:
            LocalPrepared(self.root, pending).discard()
            if isinstance(exc, OSError):
                raise describe_os_error(exc, relpath) from None
            raise
        return LocalPrepared(self.root, sorted(pending))

    def delete(self, relpath: str) -> None:
        try:
            self.path(relpath).unlink(missing_ok=True)
        except OSError as exc:
            raise describe_os_error(exc, relpath) from None

    def stat(self, relpath: str) -> tuple[int, int] | None:
        try:
            st = self.path(relpath).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size, st.st_mtime_ns

    def open(self, relpath: str) -> BinaryIO:
        return open(self.path(relpath), "rb")

    def clear_staging(self, subdir: str) -> None:
        staging = self.path(subdir) / STAGING
        self._staging.discard(str(staging))
        if staging.is_symlink():
            staging.unlink()
        shutil.rmtree(staging, ignore_errors=True)

    def listing(self, subdir: str) -> dict[str, tuple[int, int]]:
        """{filename: (size, mtime_ns)} of the regular files in a subdir folder."""
        out: dict[str, tuple[int, int]] = {}
        try:
            with os.scandir(self.path(subdir)) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        out[entry.name] = (st.st_size, st.st_mtime_ns)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    def hash(self, relpath: str, algorithms: tuple[str, ...]) -> tuple[int, dict[str, str]]:
        return hash_file(self.path(relpath), algorithms)

    @contextmanager
    def lock(self, enabled: bool = True) -> Iterator[None]:
        """An exclusive, non-blocking flock on DIR/.condasync/lock; the kernel drops it on
        kill -9, so it never goes stale. (`enabled` exists for object stores.)"""
        path = self.path(f"{STATE_DIR}/lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockedError(
                        f"{self.label} is locked by another condasync run; try again later"
                    ) from None
                raise
            self._lock_fd = fd
            _LOCK_FDS.add(fd)
            yield
        finally:
            self._lock_fd = None
            _LOCK_FDS.discard(fd)
            os.close(fd)

    def claim_lock(self) -> None:
        """Write who holds the lock (pid and host) into the lock file, once the run is about
        to write: a run that ends without writing leaves even the lock file as it was."""
        fd = self._lock_fd
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)


# rename(2) through PyDLL: the GIL stays held through each call (see _rename_back_to_back).
# This module is POSIX-only already (fcntl), so the C library is always there.
_rename: Callable[[bytes, bytes], int] = ctypes.PyDLL(None, use_errno=True).rename
_libc = ctypes.CDLL(None, use_errno=True)  # syncfs: the GIL is released while it runs


def _rename_back_to_back(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename each pair in order, with no other Python thread running in between.

    A subdir's .zst and .json are two renames; a crash between them leaves the two
    disagreeing until the next run. With os.replace the thread gives up the GIL for each
    rename and may wait milliseconds to get it back while the event loop runs, which is
    long enough for a `kill -9` at a random moment to land there (seen in CI). Calling
    rename(2) with the GIL held makes the gap the two syscalls themselves.
    """
    for tmp, target in moves:
        if _rename(os.fsencode(tmp), os.fsencode(target)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), target.name)


def _same_file(tmp: Path, target: Path) -> bool:
    """Does target hold exactly tmp's bytes? (Sizes first: a changed index rarely keeps its.)"""
    try:
        return tmp.stat().st_size == target.stat().st_size and filecmp.cmp(
            tmp, target, shallow=False
        )
    except (FileNotFoundError, NotADirectoryError):
        return False
