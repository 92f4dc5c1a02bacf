"""The S3 backend's file objects: a streamed multipart upload that stays invisible until it is
committed, index files held for an ordered publish, and a GET body read as a raw stream."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import obstore
from obstore.exceptions import BaseError

from condasync.errors import StorageError

if TYPE_CHECKING:
    from obstore import WritableFile
    from obstore.store import S3Store


class S3Storage(Protocol):
    """What these objects use of storage/s3.py's S3Storage (which imports this module)."""

    store: S3Store
    label: str
    part_size: int
    max_concurrency: int

    def key(self, relpath: str) -> str: ...
    def translate(self, what: str) -> AbstractContextManager[None]: ...
    def count(self, kind: str, n: int = 1) -> None: ...
    def stat(self, relpath: str) -> tuple[int, int] | None: ...
    def publish(self, files: Sequence[tuple[str, bytes]]) -> list[str]: ...


class S3Prepared:
    """Index files held until publish(), which PUTs them in order (see S3Storage.prepare)."""

    def __init__(self, storage: S3Storage, files: list[tuple[str, bytes]]) -> None:
        self._storage = storage
        self._files = files

    def publish(self) -> list[str]:
        files, self._files = self._files, []
        return self._storage.publish(files)

    def discard(self) -> None:
        self._files = []


class S3Staged:
    """A streamed upload to the final key: parts go up as they fill, nothing is visible until
    commit() completes the upload; discard() aborts it."""

    def __init__(self, storage: S3Storage, relpath: str) -> None:
        self.storage = storage
        self.relpath = relpath
        self.size = 0
        with storage.translate(f"starting the upload of {relpath}"):
            self._writer: WritableFile | None = obstore.open_writer(
                storage.store,
                storage.key(relpath),
                buffer_size=storage.part_size,
                max_concurrency=storage.max_concurrency,
            )

    def write(self, chunk: bytes) -> None:
        if self._writer is None:
            raise StorageError(f"{self.relpath}: write after commit or discard")
        with self.storage.translate(f"uploading {self.relpath}"):
            self._writer.write(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        """Nothing to do: the upload stays pending (invisible) until commit()."""

    def commit(self) -> int:
        """Complete the upload; returns the object's mtime_ns, the same value stat() reports."""
        if self._writer is None:
            raise StorageError(f"{self.relpath}: commit after commit or discard")
        writer, self._writer = self._writer, None
        try:
            with self.storage.translate(f"completing the upload of {self.relpath}"):
                writer.close()
        except BaseException:
            _abort(writer)
            raise
        self.storage.count("put", max(1, -(-self.size // self.storage.part_size)))
        st = self.storage.stat(self.relpath)
        if st is None:
            raise StorageError(f"{self.storage.label}: {self.relpath} vanished after its upload")
        return st[1]

    def discard(self) -> None:
        """Abort the multipart upload (its parts are dropped); the final key is untouched."""
        writer, self._writer = self._writer, None
        if writer is not None:
            _abort(writer)


def _abort(writer: WritableFile) -> None:
    # obstore aborts the multipart upload when the writer exits with an exception; if even
    # that fails, the incomplete upload stays invisible and a bucket lifecycle rule reaps it
    with contextlib.suppress(BaseError, OSError):
        writer.__exit__(StorageError, StorageError("discarded"), None)


class ObjectReader(io.RawIOBase):
    """A GET body as a raw stream, chunk by chunk (no full-object buffering)."""

    def __init__(self, storage: S3Storage, relpath: str, chunks: Iterator[bytes]) -> None:
        self._storage = storage
        self._relpath = relpath
        self._chunks = chunks
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._view:
            try:
                with self._storage.translate(f"reading {self._relpath}"):
                    self._view = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n
