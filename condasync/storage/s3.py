"""The S3 backend of the storage interface (obstore): a mirror tree as objects under
`s3://bucket/prefix`, streamed multipart uploads, no PUT for unchanged bytes, and a count of the
requests that write (so a test can prove a no-op run writes nothing). The lock is in s3lock.py,
the upload, prepared-publish and reader objects in s3files.py.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    GenericError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from condasync.errors import StorageError, UpstreamError, UsageError
from condasync.storage import s3lock
from condasync.storage.base import (
    HASH_CHUNK,
    Data,
    SafetyError,
    StagedFile,
    Storage,
    joined,
    plain_relpath,
)
from condasync.storage.s3files import ObjectReader, S3Prepared, S3Staged
from condasync.storage.s3lock import NO_LOCK_FLAG as NO_LOCK_FLAG  # re-exported for the CLI
from condasync.storage.s3lock import ConditionalWriteUnsupported as ConditionalWriteUnsupported
from condasync.storage.s3lock import S3Lock

if TYPE_CHECKING:
    from obstore import ObjectMeta

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 16 * 1024 * 1024
LOCK_TTL = 900.0  # seconds; renewed every third of that while a run holds the lock
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PLAIN_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class S3AccessError(UpstreamError):
    """The object store refused our credentials, has no such bucket, or cannot be reached."""


@dataclass(frozen=True)
class S3Object:
    relpath: str  # relative to the prefix
    size: int
    mtime_ns: int
    etag: str | None


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix"); refuses unsafe names."""
    if not url.startswith("s3://"):
        raise UsageError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise UsageError(f"invalid S3 bucket name {bucket!r} in {url!r}")
    prefix = prefix.strip("/")
    if prefix and not plain_relpath(prefix):
        raise UsageError(f"invalid S3 prefix {prefix!r} in {url!r}")
    return bucket, prefix


def _mtime_ns(moment: datetime.datetime) -> int:
    # whole seconds: HEAD's Last-Modified has no fraction, LIST's may; both must compare equal
    return (moment - _EPOCH) // datetime.timedelta(seconds=1) * 1_000_000_000


def _describe(exc: BaseException) -> str:
    """The S3 error code and message when the body has them, else the first line."""
    text = str(exc)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    message = re.search(r"<Message>([^<]+)</Message>", text)
    if code:
        return f"{code.group(1)}: {message.group(1)}" if message else code.group(1)
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _unreachable(exc: BaseException) -> bool:
    text = str(exc).lower()
    signs = ("error sending request", "connection refused", "dns error", "timed out", "connect")
    return any(sign in text for sign in signs)


def _ready(data: Data) -> bytes:
    return data.result() if isinstance(data, Future) else joined(data)


class S3Storage:
    """A mirror tree in an S3 bucket under a prefix. Same interface as `LocalStorage`."""

    local = False

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        force_path_style: bool | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 8,
        max_retries: int = 3,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Credentials, endpoint and region default to AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
        AWS_SESSION_TOKEN, AWS_ENDPOINT_URL and AWS_REGION (or AWS_DEFAULT_REGION).

        force_path_style None means path-style URLs with a custom endpoint (what S3-compatible
        stores expect) and virtual-hosted ones on AWS itself.
        """
        if part_size < MIN_PART_SIZE:
            raise UsageError(f"S3 part size must be at least {MIN_PART_SIZE} bytes")
        env = os.environ if env is None else env
        self.bucket, self.prefix = parse_s3_url(url)
        self.label = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.endpoint = (
            endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        )
        self.region = (
            region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        )
        self.counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        config: dict[str, Any] = {"region": self.region}
        key_id = access_key_id or env.get("AWS_ACCESS_KEY_ID")
        secret = secret_access_key or env.get("AWS_SECRET_ACCESS_KEY")
        if key_id and secret:
            config["access_key_id"] = key_id
            config["secret_access_key"] = secret
            if env.get("AWS_SESSION_TOKEN") and not access_key_id:
                config["token"] = env["AWS_SESSION_TOKEN"]
        path_style = force_path_style if force_path_style is not None else bool(self.endpoint)
        config["virtual_hosted_style_request"] = not path_style
        if self.endpoint:
            if not re.match(r"^https?://[^/]+/?$", self.endpoint):
                raise UsageError(
                    f"invalid S3 endpoint {self.endpoint!r}: use http(s)://host[:port]"
                )
            scheme, host = self.endpoint.rstrip("/").split("://", 1)
            config["endpoint"] = (
                f"{scheme}://{host}" if path_style else f"{scheme}://{self.bucket}.{host}"
            )
        self.store = S3Store(
            self.bucket,
            config=config,  # type: ignore[arg-type]
            client_options={
                "allow_http": bool(self.endpoint and self.endpoint.startswith("http://")),
                "connect_timeout": datetime.timedelta(seconds=10),
                "timeout": datetime.timedelta(minutes=10),
            },
            retry_config={
                "max_retries": max_retries,
                "retry_timeout": datetime.timedelta(seconds=60),
            },
        )

    # --- bookkeeping ------------------------------------------------------------------------

    @property
    def put_count(self) -> int:
        """PUT requests that wrote tree or state objects (multipart parts included; the lock's
        conditional PUTs are counted apart, under counts["lock_put"])."""
        return self.counts["put"]

    def count(self, kind: str, n: int = 1) -> None:
        with self._count_lock:
            self.counts[kind] += n

    def key(self, relpath: str) -> str:
        """The object key of relpath; refuses anything that could leave the prefix."""
        if not plain_relpath(relpath):
            raise SafetyError(f"refusing unsafe path {relpath!r}")
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    @contextlib.contextmanager
    def translate(self, what: str) -> Iterator[None]:
        """Turn obstore errors into ours: access problems exit 3, the rest are StorageErrors.
        Not-found, already-exists and precondition failures pass through for the caller."""
        try:
            yield
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise self._denied(what, exc) from None
        except (FileNotFoundError, NotFoundError) as exc:
            if "NoSuchBucket" in str(exc):
                raise self._no_bucket() from None
            raise FileNotFoundError(what) from None
        except (AlreadyExistsError, PreconditionError, NotSupportedError):
            raise
        except GenericError as exc:
            code = re.search(r"<Code>([^<]+)</Code>", str(exc))
            if code and code.group(1) in _AUTH_CODES:
                raise self._denied(what, exc) from None
            if code and code.group(1) == "NoSuchBucket":
                raise self._no_bucket() from None
            if "169.254.169.254" in str(exc) or "credential" in str(exc).lower():
                raise S3AccessError(
                    f"{self.label}: no usable S3 credentials while {what}; set "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ) from None
            if _unreachable(exc) and "<Code>" not in str(exc):
                raise S3AccessError(
                    f"{self.label}: cannot reach the object store "
                    f"{self.endpoint or 'AWS S3'} while {what} ({_describe(exc)})"
                ) from None
            raise StorageError(f"{self.label}: {what} failed ({_describe(exc)})") from None
        except BaseError as exc:
            raise StorageError(f"{self.label}: {what} failed ({_describe(exc)})") from None

    def _denied(self, what: str, exc: BaseException) -> S3AccessError:
        return S3AccessError(
            f"{self.label}: access denied while {what} ({_describe(exc)}); "
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )

    def _no_bucket(self) -> S3AccessError:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return S3AccessError(f"{self.label}: bucket {self.bucket!r} does not exist{where}")

    def _head(self, relpath: str) -> ObjectMeta | None:
        self.count("head")
        try:
            with self.translate(f"checking {relpath}"):
                return obstore.head(self.store, self.key(relpath))
        except FileNotFoundError:
            return None

    def _put(self, relpath: str, data: bytes) -> None:
        self.count("put")
        with self.translate(f"writing {relpath}"):
            obstore.put(self.store, self.key(relpath), data, use_multipart=False)

    # --- the Storage protocol ---------------------------------------------------------------

    def stage(self, relpath: str) -> StagedFile:
        return S3Staged(self, relpath)

    def read(self, relpath: str) -> bytes | None:
        self.count("get")
        try:
            with self.translate(f"reading {relpath}"):
                return bytes(obstore.get(self.store, self.key(relpath)).bytes())
        except FileNotFoundError:
            return None

    def write_if_changed(self, relpath: str, data: bytes) -> bool:
        """PUT data unless the object already holds exactly these bytes (no PUT then)."""
        return bool(self.publish([(relpath, data)]))

    def publish(self, files: Sequence[tuple[str, Data]]) -> list[str]:
        """PUT each changed file in the given order (packages before .zst before .json), after
        checking all of them first; returns the relpaths written."""
        ready = [(relpath, _ready(data)) for relpath, data in files]
        changed = [(relpath, data) for relpath, data in ready if not self._holds(relpath, data)]
        for relpath, data in changed:
            self._put(relpath, data)
        return [relpath for relpath, _ in changed]

    def put_immutable(self, files: Sequence[tuple[str, bytes]]) -> None:
        """Content-addressed objects (CEP-16 shards): PUT as they are (a PUT is atomic and
        durable once answered; the caller already knows which ones are missing)."""
        for relpath, data in files:
            self._put(relpath, data)

    def sync(self) -> None:
        """Nothing to flush: an answered PUT is durable."""

    def prepare(self, files: Sequence[tuple[str, Data]], staged: bool = False) -> S3Prepared:
        """An object store has no rename: the PUTs (and the check for unchanged objects) wait
        for publish(); the data stays here until then."""
        return S3Prepared(self, [(relpath, _ready(data)) for relpath, data in files])

    def _holds(self, relpath: str, data: bytes) -> bool:
        """Same bytes? A plain PUT's ETag is the MD5 of the body, so usually one HEAD decides."""
        meta = self._head(relpath)
        if meta is None or meta["size"] != len(data):
            return False
        etag = (meta["e_tag"] or "").strip('"').lower()
        if _PLAIN_MD5_ETAG.match(etag):
            return etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
        return self.read(relpath) == data  # a multipart ETag: compare the bytes

    def delete(self, relpath: str) -> None:
        self.count("delete")
        try:
            with self.translate(f"deleting {relpath}"):
                obstore.delete(self.store, self.key(relpath))
        except FileNotFoundError:
            pass

    def stat(self, relpath: str) -> tuple[int, int] | None:
        """(size, mtime_ns from LastModified), or None; a "folder" has no object, so None."""
        meta = self._head(relpath)
        return None if meta is None else (meta["size"], _mtime_ns(meta["last_modified"]))

    def open(self, relpath: str) -> BinaryIO:
        """A streaming reader of the object; FileNotFoundError when it does not exist."""
        self.count("get")
        with self.translate(f"reading {relpath}"):
            result = obstore.get(self.store, self.key(relpath))
        chunks = iter(result.stream(min_chunk_size=HASH_CHUNK))
        return io.BufferedReader(ObjectReader(self, relpath, chunks), buffer_size=HASH_CHUNK)

    def clear_staging(self, subdir: str) -> None:
        """Nothing is staged under other keys: an unfinished upload was never visible. (A bucket
        lifecycle rule `AbortIncompleteMultipartUpload` reaps the parts a killed run left.)"""

    def listing(self, subdir: str) -> dict[str, tuple[int, int]]:
        """{filename: (size, mtime_ns)} of the objects directly in a subdir (one LIST per 1000)."""
        return {
            o.relpath[len(subdir) + 1 :]: (o.size, o.mtime_ns)
            for o in self.list(subdir)
            if "/" not in o.relpath[len(subdir) + 1 :]
        }

    def hash(self, relpath: str, algorithms: tuple[str, ...]) -> tuple[int, dict[str, str]]:
        return self.hash_object(relpath, algorithms)

    def claim_lock(self) -> None:
        """The lock object already names its holder (it is written when taken)."""

    @contextlib.contextmanager
    def lock(self, enabled: bool = True) -> Iterator[None]:
        """The run lock (see acquire_lock), renewed in the background while held. Disabled
        with --s3-no-lock for stores without conditional writes."""
        if not enabled:
            yield
            return
        held = self.acquire_lock("lock", LOCK_TTL)
        stop = threading.Event()

        def renew() -> None:
            nonlocal held
            while not stop.wait(LOCK_TTL / 3):
                try:
                    held = self.renew_lock(held, LOCK_TTL)
                except Exception:  # the run goes on; the lock may lapse
                    return

        renewer = threading.Thread(target=renew, name="condasync-s3-lock", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            self.release_lock(held)

    # --- beyond the protocol ----------------------------------------------------------------

    def list(self, prefix: str = "") -> list[S3Object]:
        """Every object under prefix (a relpath folder, "" for all), sorted by relpath."""
        base = self.key(prefix) if prefix else self.prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[S3Object] = []
        self.count("list")
        with self.translate(f"listing {prefix or '/'}"):
            for chunk in obstore.list(self.store, prefix=base or None, chunk_size=1000):
                for meta in chunk:
                    out.append(
                        S3Object(
                            relpath=meta["path"][strip:],
                            size=meta["size"],
                            mtime_ns=_mtime_ns(meta["last_modified"]),
                            etag=meta["e_tag"],
                        )
                    )
        return sorted(out, key=lambda o: o.relpath)

    def hash_object(self, relpath: str, algorithms: tuple[str, ...]) -> tuple[int, dict[str, str]]:
        """Stream the object once; (bytes read, {algorithm: hexdigest}), like storage.hash_file."""
        hashers = [hashlib.new(name) for name in algorithms]
        size = 0
        with self.open(relpath) as fh:
            while chunk := fh.read(HASH_CHUNK):
                for hasher in hashers:
                    hasher.update(chunk)
                size += len(chunk)
        return size, {name: h.hexdigest() for name, h in zip(algorithms, hashers, strict=True)}

    # --- the lock (condasync/s3lock.py) ----------------------------------------------------

    def acquire_lock(self, name: str = "lock", ttl_seconds: float = 3600.0) -> S3Lock:
        """Create `prefix/.condasync/<name>` with `If-None-Match: *`; its body names the holder
        and an expiry. An expired lock is taken over with `If-Match: <its ETag>`. LockedError when
        another run holds it; ConditionalWriteUnsupported when the store cannot do this."""
        return s3lock.acquire(self, name, ttl_seconds)

    def renew_lock(self, lock: S3Lock, ttl_seconds: float = 3600.0) -> S3Lock:
        """Push the expiry out (a long run); LockedError when the lock is no longer ours."""
        return s3lock.renew(self, lock, ttl_seconds)

    def release_lock(self, lock: S3Lock) -> None:
        """Delete the lock object if it still holds our token (after expiry it may not)."""
        s3lock.release(self, lock)

    @contextlib.contextmanager
    def hold_lock(self, name: str = "lock", ttl_seconds: float = 3600.0) -> Iterator[S3Lock]:
        lock = self.acquire_lock(name, ttl_seconds)
        try:
            yield lock
        finally:
            self.release_lock(lock)


if TYPE_CHECKING:  # mypy proves both classes satisfy the protocols the engine uses

    def _conforms(storage: S3Storage, staged: S3Staged) -> tuple[Storage, StagedFile]:
        return storage, staged
