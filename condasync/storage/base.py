"""What every storage backend shares: the Storage protocol, the files it hands out, the state
and staging folder names, path safety, and hashing a local file.

Every path handed to a backend is a relative `subdir/filename` (or a top-level file name) made
of validated parts; the backend still refuses anything that would resolve outside its root.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from condasync.errors import NotWritable, StorageError

STAGING = ".condasync-tmp"
HASH_CHUNK = 1024 * 1024
IN_MEMORY = 1024 * 1024  # staged files up to this size stay in memory until commit
STATE_DIR = ".condasync"


class SafetyError(StorageError):
    """A path would escape the storage root."""


def plain_relpath(relpath: str) -> bool:
    """A relative path of plain segments: no NUL, no backslash, no leading "/", no empty,
    "." or ".." segment. Both backends accept nothing else."""
    if not relpath or "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in relpath.split("/"))


def safe_join(root: Path, relpath: str) -> Path:
    """Join relpath under root, refusing anything that escapes it (realpath + commonpath)."""
    if not plain_relpath(relpath):
        raise SafetyError(f"refusing unsafe path {relpath!r}")
    candidate = os.path.realpath(os.path.join(root, relpath))
    if os.path.commonpath([candidate, str(root)]) != str(root):
        raise SafetyError(f"refusing path outside the target: {relpath!r}")
    return Path(candidate)


def describe_os_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"disk full while writing {what}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = exc.filename or what
        reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return NotWritable(f"cannot write {where}: {reason}")
    return StorageError(f"cannot write {what}: {exc.strerror or exc}")


# A file's bytes: whole, in parts written one after the other (never joined in memory), or
# still being made (a compression running in another thread).
Data = bytes | list[bytes | memoryview] | Future[bytes]


def joined(data: bytes | list[bytes | memoryview]) -> bytes:
    return data if isinstance(data, bytes) else b"".join(data)


class StagedFile(Protocol):
    """A file being written beside its target; invisible until committed."""

    def write(self, chunk: bytes) -> None: ...
    def close(self) -> None: ...
    def commit(self) -> int: ...
    def discard(self) -> None: ...


class Prepared(Protocol):
    """Files written out in full but not yet visible: publish() puts them in place, in order."""

    def publish(self) -> list[str]: ...
    def discard(self) -> None: ...


class Storage(Protocol):
    """A mirror target. `local` is True when small writes are cheap enough to do inline and
    the folder mtime tells whether someone else touched a subdir."""

    label: str
    local: bool

    def stage(self, relpath: str) -> StagedFile: ...
    def read(self, relpath: str) -> bytes | None: ...
    def write_if_changed(self, relpath: str, data: bytes) -> bool: ...
    def publish(self, files: Sequence[tuple[str, Data]]) -> list[str]: ...
    def put_immutable(self, files: Sequence[tuple[str, bytes]]) -> None: ...
    def sync(self) -> None: ...
    def prepare(self, files: Sequence[tuple[str, Data]], staged: bool = False) -> Prepared: ...
    def delete(self, relpath: str) -> None: ...
    def stat(self, relpath: str) -> tuple[int, int] | None: ...
    def open(self, relpath: str) -> BinaryIO: ...
    def clear_staging(self, subdir: str) -> None: ...
    def listing(self, subdir: str) -> dict[str, tuple[int, int]]: ...
    def hash(self, relpath: str, algorithms: tuple[str, ...]) -> tuple[int, dict[str, str]]: ...
    def lock(self, enabled: bool = True) -> AbstractContextManager[None]: ...
    def claim_lock(self) -> None: ...


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


@dataclass(frozen=True)
class S3Options:
    """What the CLI's --s3-* flags say; the rest comes from the AWS_* environment."""

    endpoint: str | None = None
    force_path_style: bool | None = None
    no_lock: bool = False
