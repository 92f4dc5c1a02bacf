"""S3Storage against a real SeaweedFS S3 server: uploads, publish order, no-PUT no-ops, the lock,
and clear errors for wrong credentials, a missing bucket and stores without conditional writes."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from condasync.errors import EXIT_UPSTREAM, LockedError
from condasync.storage import SafetyError
from condasync.storage.s3 import (
    MIN_PART_SIZE,
    ConditionalWriteUnsupported,
    S3AccessError,
    S3Storage,
    parse_s3_url,
)
from tests.realservers import S3Proxy, S3Server
from tests.servers import free_port

MiB = 1024 * 1024


def make_storage(server: S3Server, bucket: str, prefix: str = "mirror", **kwargs: Any) -> S3Storage:
    return S3Storage(f"s3://{bucket}/{prefix}", env=server.env, **kwargs)


@pytest.fixture
def storage(s3_server: S3Server, s3_bucket: str) -> S3Storage:
    return make_storage(s3_server, s3_bucket, part_size=MIN_PART_SIZE)


class RecordingStorage(S3Storage):
    """Remembers the order of single-object PUTs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.put_order: list[str] = []

    def _put(self, relpath: str, data: bytes) -> None:
        self.put_order.append(relpath)
        super()._put(relpath, data)


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("s3://B/x", "s3://bucket/a/../b", "s3://bucket/a//b", "http://bucket/x", "s3://x"):
        with pytest.raises(Exception, match=r"invalid|not an s3"):
            parse_s3_url(bad)


def test_small_file_stage_commit_stat_read_open_list_delete(storage: S3Storage) -> None:
    data = b"small package bytes\n" * 100
    staged = storage.stage("linux-64/a-1-0.conda")
    staged.write(data[:1000])
    staged.write(data[1000:])
    staged.close()
    assert storage.stat("linux-64/a-1-0.conda") is None  # invisible until committed
    mtime_ns = staged.commit()
    assert storage.stat("linux-64/a-1-0.conda") == (len(data), mtime_ns)
    assert abs(mtime_ns / 1e9 - time.time()) < 120
    assert storage.put_count == 1
    assert storage.read("linux-64/a-1-0.conda") == data
    with storage.open("linux-64/a-1-0.conda") as fh:
        assert fh.read(7) == data[:7]
        assert fh.read() == data[7:]
    assert storage.read("linux-64/missing.conda") is None
    assert storage.stat("linux-64") is None  # a folder is not an object
    with pytest.raises(FileNotFoundError):
        storage.open("linux-64/missing.conda")

    storage.write_if_changed("noarch/repodata.json", b"{}")
    assert [o.relpath for o in storage.list()] == ["linux-64/a-1-0.conda", "noarch/repodata.json"]
    listed = storage.list("linux-64")
    assert [(o.relpath, o.size, o.mtime_ns) for o in listed] == [
        ("linux-64/a-1-0.conda", len(data), mtime_ns)
    ]
    storage.delete("linux-64/a-1-0.conda")
    storage.delete("linux-64/a-1-0.conda")  # deleting what is gone is fine
    assert storage.stat("linux-64/a-1-0.conda") is None
    assert [o.relpath for o in storage.list()] == ["noarch/repodata.json"]


def test_large_file_is_a_streamed_multipart_upload(storage: S3Storage) -> None:
    chunk = os.urandom(MiB)
    staged = storage.stage("linux-64/big-1-0.conda")
    sha = hashlib.sha256()
    for _ in range(12):
        staged.write(chunk)
        sha.update(chunk)
    assert storage.stat("linux-64/big-1-0.conda") is None  # two parts are up, none visible
    mtime_ns = staged.commit()
    assert storage.stat("linux-64/big-1-0.conda") == (12 * MiB, mtime_ns)
    assert storage.put_count == 3  # 12 MiB in 5 MiB parts
    etag = storage.list("linux-64")[0].etag or ""
    assert etag.strip('"').endswith("-3")  # S3's multipart ETag: 3 parts
    size, digests = storage.hash_object("linux-64/big-1-0.conda", ("sha256",))
    assert (size, digests["sha256"]) == (12 * MiB, sha.hexdigest())


def test_discard_aborts_and_leaves_the_published_object(storage: S3Storage) -> None:
    storage.write_if_changed("linux-64/p-1-0.conda", b"old bytes")
    before = storage.stat("linux-64/p-1-0.conda")
    staged = storage.stage("linux-64/p-1-0.conda")
    for _ in range(11):
        staged.write(b"\x01" * MiB)
    staged.discard()
    assert storage.read("linux-64/p-1-0.conda") == b"old bytes"
    assert storage.stat("linux-64/p-1-0.conda") == before
    small = storage.stage("linux-64/q-1-0.conda")
    small.write(b"never")
    small.discard()
    assert storage.stat("linux-64/q-1-0.conda") is None


def test_publish_in_order_and_skip_unchanged(s3_server: S3Server, s3_bucket: str) -> None:
    storage = RecordingStorage(f"s3://{s3_bucket}/mirror", env=s3_server.env)
    files = [
        ("linux-64/repodata.json.zst", b"zst v1"),
        ("linux-64/repodata.json.bz2", b"bz2 v1"),
        ("linux-64/repodata.json", b'{"v": 1}'),
    ]
    assert storage.publish(files) == [f for f, _ in files]
    assert storage.put_order == [f for f, _ in files]
    storage.put_order.clear()
    puts = storage.put_count
    assert storage.publish(files) == []  # identical: no PUT at all
    assert storage.put_count == puts and storage.put_order == []
    files2 = [(files[0][0], b"zst v2"), files[1], (files[2][0], b'{"v": 2}')]
    assert storage.publish(files2) == ["linux-64/repodata.json.zst", "linux-64/repodata.json"]
    assert storage.put_order == ["linux-64/repodata.json.zst", "linux-64/repodata.json"]
    assert storage.read("linux-64/repodata.json") == b'{"v": 2}'


def test_write_if_changed_issues_no_put_for_identical_bytes(storage: S3Storage) -> None:
    assert storage.write_if_changed(".condasync/linux-64.meta.json", b'{"etag": "a"}') is True
    assert storage.put_count == 1
    for _ in range(3):
        assert storage.write_if_changed(".condasync/linux-64.meta.json", b'{"etag": "a"}') is False
    assert storage.put_count == 1
    # same size, different bytes: written
    assert storage.write_if_changed(".condasync/linux-64.meta.json", b'{"etag": "b"}') is True
    assert storage.put_count == 2
    assert storage.read(".condasync/linux-64.meta.json") == b'{"etag": "b"}'


def test_write_if_changed_compares_bytes_of_a_multipart_object(storage: S3Storage) -> None:
    data = os.urandom(6 * MiB)
    staged = storage.stage("big.json")
    staged.write(data)
    staged.commit()
    puts = storage.put_count
    assert storage.write_if_changed("big.json", data) is False
    assert storage.put_count == puts


def test_every_key_stays_under_the_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    storage = make_storage(s3_server, s3_bucket, prefix="a/b")
    whole = make_storage(s3_server, s3_bucket, prefix="")
    storage.write_if_changed("noarch/x.json", b"1")
    assert [o.relpath for o in whole.list()] == ["a/b/noarch/x.json"]
    assert [o.relpath for o in storage.list()] == ["noarch/x.json"]
    bad = ["", "../x", "/abs", "a/../../b", "a//b", "a\\b", "x/./y", "nul\x00", "noarch/.."]
    for relpath in bad:
        with pytest.raises(SafetyError):
            storage.write_if_changed(relpath, b"1")
        with pytest.raises(SafetyError):
            storage.stage(relpath)
        with pytest.raises(SafetyError):
            storage.read(relpath)
    assert [o.relpath for o in whole.list()] == ["a/b/noarch/x.json"]


# --- the lock ---------------------------------------------------------------------------------


def test_lock_acquire_contend_release(s3_server: S3Server, s3_bucket: str) -> None:
    first = make_storage(s3_server, s3_bucket)
    second = make_storage(s3_server, s3_bucket)
    lock = first.acquire_lock(ttl_seconds=600)
    assert lock.key == "mirror/.condasync/lock"
    assert first.put_count == 0  # lock writes are counted apart
    assert first.counts["lock_put"] == 2  # the create, and the second create it must refuse
    with pytest.raises(LockedError, match=r"locked by another condasync run .*pid \d+"):
        second.acquire_lock(ttl_seconds=600)
    assert second.put_count == 0
    first.release_lock(lock)
    assert first.stat(".condasync/lock") is None
    with second.hold_lock(ttl_seconds=600), pytest.raises(LockedError):
        first.acquire_lock()
    assert second.stat(".condasync/lock") is None
    other = first.acquire_lock("other-lock")  # names are independent
    first.release_lock(other)


def test_expired_lock_is_taken_over_and_not_released_by_its_old_owner(
    s3_server: S3Server, s3_bucket: str
) -> None:
    old = make_storage(s3_server, s3_bucket)
    new = make_storage(s3_server, s3_bucket)
    stale = old.acquire_lock(ttl_seconds=0.5)
    time.sleep(0.6)
    fresh = new.acquire_lock(ttl_seconds=600)
    assert fresh.token != stale.token
    old.release_lock(stale)  # not ours any more: the new holder keeps it
    with pytest.raises(LockedError):
        old.acquire_lock()
    with pytest.raises(LockedError, match="taken over"):
        old.renew_lock(stale)
    renewed = new.renew_lock(fresh, ttl_seconds=900)
    assert renewed.expires > fresh.expires
    new.release_lock(renewed)
    assert new.stat(".condasync/lock") is None


def test_unreadable_lock_counts_as_expired(storage: S3Storage) -> None:
    storage.write_if_changed(".condasync/lock", b"garbage")
    lock = storage.acquire_lock(ttl_seconds=60)
    storage.release_lock(lock)


@pytest.fixture(params=["ignore", "reject"])
def fault_proxy(request: pytest.FixtureRequest, s3_server: S3Server) -> Iterator[S3Proxy]:
    """The real server behind a proxy that fakes a store without conditional writes."""
    with S3Proxy(s3_server.endpoint, conditional_put=request.param) as proxy:
        yield proxy


def test_store_without_conditional_writes_is_detected(
    s3_server: S3Server, s3_bucket: str, fault_proxy: S3Proxy
) -> None:
    storage = make_storage(s3_server, s3_bucket, endpoint=fault_proxy.url)
    storage.write_if_changed("noarch/repodata.json", b"{}")  # plain PUTs pass through
    with pytest.raises(ConditionalWriteUnsupported, match="--s3-no-lock") as info:
        storage.acquire_lock()
    assert "conditional writes" in str(info.value)
    assert any(r.method == "PUT" and r.conditional for r in fault_proxy.requests)
    assert storage.stat(".condasync/lock") is None


# --- errors -----------------------------------------------------------------------------------


def test_wrong_secret_is_a_clear_access_error(s3_server: S3Server, s3_bucket: str) -> None:
    env = {**s3_server.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
    storage = S3Storage(f"s3://{s3_bucket}/mirror", env=env)
    for action in (
        lambda: storage.read("noarch/repodata.json"),
        lambda: storage.write_if_changed("noarch/repodata.json", b"{}"),
        lambda: storage.list(),
        lambda: storage.acquire_lock(),
    ):
        with pytest.raises(S3AccessError) as info:
            action()
        message = str(info.value)
        assert info.value.exit_code == EXIT_UPSTREAM
        assert "access denied" in message and "AWS_SECRET_ACCESS_KEY" in message
        assert "wrong-secret-value" not in message
        assert "\n" not in message
    with pytest.raises(S3AccessError, match="SignatureDoesNotMatch"):
        storage.read("noarch/repodata.json")


def test_missing_bucket_and_unreachable_endpoint(s3_server: S3Server) -> None:
    storage = S3Storage("s3://no-such-bucket-here/x", env=s3_server.env)
    with pytest.raises(S3AccessError, match="does not exist"):
        storage.read("noarch/repodata.json")
    env = {**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    unreachable = S3Storage("s3://bucket/x", env=env, max_retries=0)
    started = time.monotonic()
    with pytest.raises(S3AccessError, match="cannot reach"):
        unreachable.stat("noarch/repodata.json")
    assert time.monotonic() - started < 20
