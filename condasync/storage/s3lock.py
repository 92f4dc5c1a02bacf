"""The lock on an S3 prefix: one object, `prefix/.condasync/<name>`, created with a conditional PUT
(`If-None-Match: *`) and holding its owner and expiry; an expired lock is taken over with
`If-Match: <its ETag>`. Stores that cannot do conditional writes are detected, not trusted.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import obstore
import orjson
from obstore.exceptions import AlreadyExistsError, NotSupportedError, PreconditionError

from condasync.errors import EXIT_USAGE, LockedError, StorageError
from condasync.storage.base import STATE_DIR

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from obstore.store import S3Store


class S3Storage(Protocol):
    """What the lock needs of the bucket backend (storage/s3.py), which imports this module."""

    store: S3Store
    label: str

    def key(self, relpath: str) -> str: ...
    def count(self, kind: str, n: int = 1) -> None: ...
    def translate(self, what: str) -> AbstractContextManager[None]: ...
    def delete(self, relpath: str) -> None: ...


NO_LOCK_FLAG = "--s3-no-lock"


class ConditionalWriteUnsupported(StorageError):
    """The store ignores or rejects `If-None-Match: *`, so it cannot hold our lock."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class S3Lock:
    """A held lock: its relpath and key, our token in its body, the ETag we wrote, the expiry."""

    relpath: str
    key: str
    token: str
    etag: str | None
    expires: float


def acquire(storage: S3Storage, name: str, ttl_seconds: float) -> S3Lock:
    relpath = f"{STATE_DIR}/{name}"
    for _ in range(3):
        token = uuid.uuid4().hex
        body, expires = _body(token, ttl_seconds)
        try:
            etag = _put(storage, relpath, body, "create")
        except AlreadyExistsError:
            held = _read(storage, relpath)
            if held is None:
                continue  # released in between: try to create it again
            doc, current_etag = held
            if time.time() < doc["expires"] and not _holder_died(doc):
                raise LockedError(_locked_message(storage.label, doc)) from None
            try:
                etag = _put(storage, relpath, body, {"e_tag": current_etag})
            except (PreconditionError, AlreadyExistsError):
                continue  # another run took over the expired lock first
            return S3Lock(relpath, storage.key(relpath), token, etag, expires)
        _ensure_create_refused(storage, relpath, body)
        return S3Lock(relpath, storage.key(relpath), token, etag, expires)
    raise LockedError(f"{storage.label} is locked by another condasync run; try again later")


def _holder_died(doc: dict[str, Any]) -> bool:
    """A lock left by a run on this very host whose process is gone (say, kill -9) is stale:
    no need to wait for it to expire."""
    if doc.get("host") != socket.gethostname() or not isinstance(doc.get("pid"), int):
        return False
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def renew(storage: S3Storage, lock: S3Lock, ttl_seconds: float) -> S3Lock:
    body, expires = _body(lock.token, ttl_seconds)
    try:
        etag = _put(storage, lock.relpath, body, {"e_tag": lock.etag})
    except PreconditionError:
        raise LockedError(f"{storage.label}: our lock expired and was taken over") from None
    return S3Lock(lock.relpath, lock.key, lock.token, etag, expires)


def release(storage: S3Storage, lock: S3Lock) -> None:
    held = _read(storage, lock.relpath)
    if held is not None and held[0].get("token") == lock.token:
        storage.delete(lock.relpath)


def _body(token: str, ttl_seconds: float) -> tuple[bytes, float]:
    now = time.time()
    doc = {"token": token, "host": socket.gethostname(), "pid": os.getpid()}
    return orjson.dumps(doc | {"acquired": now, "expires": now + ttl_seconds}), now + ttl_seconds


def _put(storage: S3Storage, relpath: str, body: bytes, mode: Any) -> str | None:
    storage.count("lock_put")
    try:
        with storage.translate(f"taking the lock {relpath}"):
            return obstore.put(storage.store, storage.key(relpath), body, mode=mode)["e_tag"]
    except NotSupportedError:
        raise ConditionalWriteUnsupported(_no_conditional_message(storage.label)) from None
    except StorageError as exc:
        if re.search(r"\b501\b|NotImplemented", str(exc)):
            raise ConditionalWriteUnsupported(_no_conditional_message(storage.label)) from None
        raise


def _ensure_create_refused(storage: S3Storage, relpath: str, body: bytes) -> None:
    """A store that ignores `If-None-Match` would let two runs both "create" the lock: prove this
    one refuses a second create (412) before trusting it."""
    try:
        _put(storage, relpath, body, "create")
    except AlreadyExistsError:
        return
    storage.delete(relpath)
    raise ConditionalWriteUnsupported(_no_conditional_message(storage.label))


def _read(storage: S3Storage, relpath: str) -> tuple[dict[str, Any], str | None] | None:
    storage.count("get")
    try:
        with storage.translate(f"reading the lock {relpath}"):
            result = obstore.get(storage.store, storage.key(relpath))
            raw = bytes(result.bytes())
    except FileNotFoundError:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = {}
    if not isinstance(doc, dict) or not isinstance(doc.get("expires"), (int, float)):
        doc = {"expires": 0}  # unreadable: treat as expired
    return doc, result.meta["e_tag"]


def _locked_message(label: str, doc: dict[str, Any]) -> str:
    until = datetime.datetime.fromtimestamp(float(doc["expires"]), datetime.timezone.utc)
    holder = f"{doc.get('host', '?')} pid {doc.get('pid', '?')}"
    return (
        f"{label} is locked by another condasync run ({holder}, until "
        f"{until:%Y-%m-%d %H:%M:%S} UTC); try again later"
    )


def _no_conditional_message(label: str) -> str:
    return (
        f"{label}: this object store does not support conditional writes (If-None-Match: *), "
        f"so condasync cannot lock it; pass {NO_LOCK_FLAG} to go on without a lock if you are "
        "sure no other run writes to this prefix"
    )
