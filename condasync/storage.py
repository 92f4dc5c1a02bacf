"""Where a mirror writes: one interface, with the local filesystem backend (atomic rename).

Every path handed to a backend is a relative `subdir/filename` (or a top-level file name) made
of validated parts; the backend still refuses anything that would resolve outside its root.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol

from condasync.errors import StorageError, UsageError

STAGING = ".condasync-tmp"
HASH_CHUNK = 1024 * 1024
STATE_DIR = ".condasync"


class SafetyError(StorageError):
    """A path would escape the storage root."""


def safe_join(root: Path, relpath: str) -> Path:
    """Join relpath under root, refusing anything that escapes it (realpath + commonpath)."""
    if not relpath or "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
        raise SafetyError(f"refusing unsafe path {relpath!r}")
    candidate = os.path.realpath(os.path.join(root, relpath))
    if os.path.commonpath([candidate, str(root)]) != str(root):
        raise SafetyError(f"refusing path outside the target: {relpath!r}")
    return Path(candidate)


def describe_os_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"disk full while writing {what}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"permission denied writing {what}")
    return StorageError(f"cannot write {what}: {exc.strerror or exc}")


class StagedFile(Protocol):
    """A file being written beside its target; invisible until committed."""

    def write(self, chunk: bytes) -> None: ...
    def close(self) -> None: ...
    def commit(self) -> int: ...
    def discard(self) -> None: ...


class Storage(Protocol):
    label: str

    def stage(self, relpath: str) -> StagedFile: ...
    def read(self, relpath: str) -> bytes | None: ...
    def write_if_changed(self, relpath: str, data: bytes) -> bool: ...
    def publish(self, files: list[tuple[str, bytes]]) -> list[str]: ...
    def delete(self, relpath: str) -> None: ...
    def stat(self, relpath: str) -> tuple[int, int] | None: ...
    def open(self, relpath: str) -> BinaryIO: ...
    def clear_staging(self, subdir: str) -> None: ...


class LocalStaged:
    """A temp file in `<subdir>/.condasync-tmp/`, moved over its target with os.replace."""

    def __init__(self, target: Path) -> None:
        self.target = target
        staging = target.parent / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        self.path = staging / f"{target.name}.{uuid.uuid4().hex[:12]}"
        self._fh: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, chunk: bytes) -> None:
        assert self._fh is not None
        try:
            self._fh.write(chunk)
        except OSError as exc:
            raise describe_os_error(exc, self.target.name) from None

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                raise describe_os_error(exc, self.target.name) from None
            finally:
                self._fh = None

    def commit(self) -> int:
        """Move into place atomically; returns the committed file's mtime_ns."""
        self.close()
        try:
            os.replace(self.path, self.target)
            return self.target.stat().st_mtime_ns
        except OSError as exc:
            raise describe_os_error(exc, self.target.name) from None

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


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

    def path(self, relpath: str) -> Path:
        return safe_join(self.root, relpath)

    def stage(self, relpath: str) -> StagedFile:
        target = self.path(relpath)
        try:
            return LocalStaged(target)
        except OSError as exc:
            raise describe_os_error(exc, relpath) from None

    def read(self, relpath: str) -> bytes | None:
        try:
            return self.path(relpath).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_if_changed(self, relpath: str, data: bytes) -> bool:
        """Atomically replace relpath with data unless it already holds exactly these bytes."""
        return bool(self.publish([(relpath, data)]))

    def publish(self, files: list[tuple[str, bytes]]) -> list[str]:
        """Write each changed file to a temp beside it (fsync), then rename them in order.

        All temp files are complete before the first rename, so a full disk fails before any
        published file changes, and the renames land back to back. Returns what changed.
        """
        pending: list[tuple[Path, Path]] = []
        try:
            for relpath, data in files:
                target = self.path(relpath)
                if _holds(target, data):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
                pending.append((tmp, target))
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            for tmp, target in pending:
                os.replace(tmp, target)
        except OSError as exc:
            raise describe_os_error(exc, relpath) from None
        finally:
            for tmp, _ in pending:
                tmp.unlink(missing_ok=True)
        return [str(target.relative_to(self.root)) for _, target in pending]

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
        shutil.rmtree(self.path(subdir) / STAGING, ignore_errors=True)


def hash_file(path: Path, algorithms: tuple[str, ...]) -> tuple[int, dict[str, str]]:
    """Stream a file once in 1 MiB chunks; return (bytes read, {algorithm: hexdigest})."""
    hashers = [hashlib.new(name) for name in algorithms]
    size = 0
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            chunk = view[:n]
            for hasher in hashers:
                hasher.update(chunk)
            size += n
    return size, {name: h.hexdigest() for name, h in zip(algorithms, hashers, strict=True)}


def _holds(target: Path, data: bytes) -> bool:
    try:
        return target.stat().st_size == len(data) and target.read_bytes() == data
    except (FileNotFoundError, NotADirectoryError):
        return False


def open_storage(target: str, create: bool = True) -> LocalStorage:
    if target.startswith("s3://"):
        raise UsageError("s3:// targets are not supported yet")
    return LocalStorage(Path(target).expanduser(), create=create)
