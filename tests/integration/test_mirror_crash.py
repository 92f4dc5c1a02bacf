"""Concurrency and crashes: the lock (exit 5), kill -9 at several points, Ctrl-C (exit 130).

After every interruption the tree a reader sees must be consistent, and the next normal run must
complete the mirror to exactly what a clean run produces.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import signal
import time
from pathlib import Path

from tests.conftest import (
    REAL_CHANNEL,
    STATE_DIR,
    Channel,
    assert_consistent,
    copy_channel,
    index_records,
    iter_tree,
    md5_of,
    mirror_args,
    ok,
    published_subdirs,
    real_files,
    sha256_of,
    tree_bytes,
    wait_for,
)
from tests.servers import FaultServer
from tests.shard_support import SHARD_INDEX, named_tree, read_index

PKG = "/noarch/dependent-2.0-0.conda"
PKG_NAME = "dependent-2.0-0.conda"
DRIP = {"chunk": 1, "interval": 0.05}  # ~3 minutes for a 3.9 KB package: "forever" in a test


def lock_path(root: Path) -> Path:
    return root / STATE_DIR / "lock"


def lock_is_held(root: Path) -> bool:
    path = lock_path(root)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def published_files(root: Path) -> set[str]:
    """Every file a finished or cleanly interrupted run may leave outside the state folder."""
    names = set()
    for sub in published_subdirs(root):
        for companion in ("repodata.json", "repodata.json.zst", "repodata.json.bz2"):
            if (root / sub / companion).exists():
                names.add(f"{sub}/{companion}")
        names |= {f"{sub}/{f}" for f in index_records(root, sub)}
        shard_index = read_index(root, sub)  # CEP-16: the shard index and the shards it names
        if shard_index is not None:
            names.add(f"{sub}/{SHARD_INDEX}")
            names |= {f"{sub}/shards/{d.hex()}.msgpack.zst" for d in shard_index["shards"].values()}
    if (root / "channeldata.json").exists():
        names.add("channeldata.json")
    return names


def clean_mirror(run_cli, url: str, tmp_path: Path, name: str = "clean") -> dict[str, bytes]:
    target = tmp_path / name
    result = run_cli(*mirror_args(url, target))
    assert result.returncode == 0, str(result)
    return tree_bytes(target)


def finish_and_compare(
    run_cli, server: FaultServer, target: Path, tmp_path: Path, check_noop: bool = False
) -> None:
    server.clear_faults()
    final = run_cli(*mirror_args(server.url, target, "--json"))
    assert final.returncode == 0, str(final)
    assert_consistent(target)
    got = named_tree(target, tree_bytes(target))  # orphan shards stay for a grace period
    want = clean_mirror(run_cli, server.url, tmp_path)
    differ = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
    assert not differ, f"after the resumed run the tree differs from a clean mirror in {differ}"
    if check_noop:
        again = run_cli(*mirror_args(server.url, target, "--json"))
        assert again.returncode == 0 and again.json()["unchanged"] is True, str(again)


# --- the lock ---------------------------------------------------------------------------------


def test_lock_held_by_another_process_exits_5(real_channel, channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    real_channel.add("noarch", "while-locked-1.0-0.conda")
    real_channel.write()
    before = tree_bytes(mirror_dir)
    lock_path(mirror_dir).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(mirror_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"), timeout=30)
        assert result.returncode == 5, str(result)
        assert time.monotonic() - started < 20, "a locked run must give up, not wait"
        assert "lock" in result.output.lower(), str(result)
        assert result.json()["exit_code"] == 5
        assert tree_bytes(mirror_dir) == before
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    after = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert after.returncode == 0, str(after)
    assert after.json()["added"] == ["while-locked-1.0-0.conda"]


def test_lock_held_on_fresh_dir_exits_5(channel_server, mirror_dir, run_cli):
    lock_path(mirror_dir).parent.mkdir(parents=True)
    fd = os.open(lock_path(mirror_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = run_cli(*mirror_args(channel_server.url, mirror_dir), timeout=30)
        assert result.returncode == 5, str(result)
        assert published_subdirs(mirror_dir) == []
    finally:
        os.close(fd)


def test_second_concurrent_run_exits_5(fault_server, mirror_dir, run_cli, start_cli, tmp_path):
    fault_server.fault(PKG, "slow", **DRIP)
    first = start_cli(*mirror_args(fault_server.url, mirror_dir))
    wait_for(lambda: fault_server.fault_hits(PKG) >= 1, what="the slow download to start")
    wait_for(lambda: lock_is_held(mirror_dir), what="the lock to be held")
    second = run_cli(*mirror_args(fault_server.url, mirror_dir, "--json"), timeout=30)
    assert second.returncode == 5, str(second)
    assert second.json()["exit_code"] == 5
    assert first.alive(), "the first run should still be downloading"
    first.kill9()
    assert_consistent(mirror_dir)
    finish_and_compare(run_cli, fault_server, mirror_dir, tmp_path)


# --- kill -9 ----------------------------------------------------------------------------------


def test_kill9_during_first_downloads(fault_server, mirror_dir, run_cli, start_cli, tmp_path):
    fault_server.fault(PKG, "slow", **DRIP)
    run = start_cli(*mirror_args(fault_server.url, mirror_dir))
    wait_for(lambda: fault_server.fault_hits(PKG) >= 1, what="the slow download to start")
    time.sleep(0.5)  # the other packages finish meanwhile
    run.kill9()
    assert_consistent(mirror_dir)
    assert PKG_NAME not in {
        f for sub in published_subdirs(mirror_dir) for f in index_records(mirror_dir, sub)
    }
    finish_and_compare(run_cli, fault_server, mirror_dir, tmp_path)


def test_kill9_during_replacement_keeps_old_snapshot(
    real_channel, fault_server, mirror_dir, run_cli, start_cli, tmp_path
):
    ok(run_cli(*mirror_args(fault_server.url, mirror_dir)))
    old_bytes = (mirror_dir / "noarch" / PKG_NAME).read_bytes()
    old_index = tree_bytes(mirror_dir)["noarch/repodata.json"]
    real_channel.reupload("noarch", PKG_NAME, b"second upload " * 400)
    real_channel.remove("linux-64", "test-package-0.1-0.tar.bz2")
    real_channel.add("noarch", "added-later-1.0-0.conda", b"later" * 100)
    real_channel.write()
    fault_server.fault(PKG, "slow", chunk=64, interval=0.05)
    run = start_cli(*mirror_args(fault_server.url, mirror_dir))
    wait_for(lambda: fault_server.fault_hits(PKG) >= 1, what="the slow replacement to start")
    time.sleep(0.3)
    run.kill9()
    assert_consistent(mirror_dir)
    # the published noarch index still is the old snapshot, and so is the file it lists
    assert tree_bytes(mirror_dir)["noarch/repodata.json"] == old_index
    assert (mirror_dir / "noarch" / PKG_NAME).read_bytes() == old_bytes
    finish_and_compare(run_cli, fault_server, mirror_dir, tmp_path)
    assert (mirror_dir / "noarch" / PKG_NAME).read_bytes() == b"second upload " * 400
    assert not (mirror_dir / "linux-64" / "test-package-0.1-0.tar.bz2").exists()


def _make_variant(root: Path) -> Channel:
    """Upstream state B: two re-uploads, two removals, two additions relative to the fixture."""
    channel = Channel(copy_channel(REAL_CHANNEL, root))
    channel.reupload("noarch", "dependent-1.0-0.conda", b"variant B dependent " * 500)
    channel.reupload("linux-64", "other-package-0.2-0.conda", b"variant B other " * 4000)
    channel.remove("linux-64", "test-package-0.1-0.tar.bz2")
    channel.remove("osx-64", "mock-2.0.0-py37_1000.tar.bz2")
    channel.add("noarch", "newpkg-1.0-0.conda", b"new package " * 3000)
    channel.add("linux-64", "newbin-2.0-h1_0.tar.bz2", b"new binary " * 9000)
    channel.write()
    return channel


def test_kill9_at_random_points(tmp_path, run_cli, start_cli):
    """Alternate upstream between two snapshots and SIGKILL each run at a random moment."""
    state_a = Channel(copy_channel(REAL_CHANNEL, tmp_path / "state-a"))
    state_b = _make_variant(tmp_path / "state-b")
    target = tmp_path / "mirror"
    rng = random.Random(20240611)
    kills = 0
    with FaultServer(state_a.root) as server:

        def slow_everything() -> None:
            for channel in (state_a, state_b):
                for sub, files in real_files(channel).items():
                    for name in files:
                        server.fault(f"/{sub}/{name}", "slow", chunk=8192, interval=0.03)

        for i in range(8):
            server.root = (state_a if i % 2 == 0 else state_b).root
            server.clear_log()
            slow_everything()
            run = start_cli(*mirror_args(server.url, target))
            delay = rng.uniform(0.05, 1.5)
            if i % 2:
                # measure from the first request, so the kill lands inside the sync itself
                wait_for(
                    lambda run=run: server.log() or not run.alive(),
                    timeout=20,
                    what="the first upstream request",
                )
            time.sleep(delay)
            if run.alive():
                run.kill9()
                kills += 1
            else:
                result = run.wait()
                assert result.returncode == 0, str(result)
            problems = []
            try:
                assert_consistent(target)
            except AssertionError as exc:
                problems.append(f"run {i} (killed after {delay:.2f}s): {exc}")
            assert not problems, problems
        assert kills >= 4, "too few runs were actually killed to mean anything"
        server.root = state_b.root
        finish_and_compare(run_cli, server, target, tmp_path, check_noop=True)


# --- Ctrl-C -----------------------------------------------------------------------------------


def _interrupt_and_check(run, target: Path, upstream: Channel) -> None:
    run.signal(signal.SIGINT)
    result = run.wait(timeout=20)
    assert result.returncode == 130, str(result)
    assert "Traceback" not in result.output, str(result)
    assert_consistent(target)
    # A verified package already moved into place but not yet indexed is fine (the next run
    # adopts it); a partial or temp file is litter an interrupted run must clean up.
    litter = []
    for path in iter_tree(target):
        rel = str(path.relative_to(target))
        if rel in published_files(target):
            continue
        sub, _, name = rel.partition("/")
        record = upstream.records(sub).get(name) if sub in upstream.docs else None
        data = path.read_bytes()
        good = (
            record is not None
            and len(data) == record["size"]
            and (
                sha256_of(data) == record["sha256"]
                if record.get("sha256")
                else md5_of(data) == record["md5"]
            )
        )
        if not good:
            litter.append(rel)
    assert not litter, f"an interrupted run left files behind: {sorted(litter)}"


def test_sigint_during_download_exits_130(
    real_channel, fault_server, mirror_dir, run_cli, start_cli, tmp_path
):
    fault_server.fault(PKG, "slow", **DRIP)
    run = start_cli(*mirror_args(fault_server.url, mirror_dir))
    wait_for(lambda: fault_server.fault_hits(PKG) >= 1, what="the slow download to start")
    time.sleep(0.3)
    _interrupt_and_check(run, mirror_dir, real_channel)
    finish_and_compare(run_cli, fault_server, mirror_dir, tmp_path)


def test_sigint_during_replacement_keeps_old_snapshot(
    real_channel, fault_server, mirror_dir, run_cli, start_cli, tmp_path
):
    real_channel.write()  # upstream's own formatting from the start: only noarch changes below
    ok(run_cli(*mirror_args(fault_server.url, mirror_dir)))
    before = tree_bytes(mirror_dir)
    real_channel.reupload("noarch", PKG_NAME, b"replacement " * 300)
    real_channel.write()
    fault_server.fault(PKG, "slow", **DRIP)
    run = start_cli(*mirror_args(fault_server.url, mirror_dir))
    wait_for(lambda: fault_server.fault_hits(PKG) >= 1, what="the slow download to start")
    time.sleep(0.3)
    _interrupt_and_check(run, mirror_dir, real_channel)
    assert tree_bytes(mirror_dir) == before
    finish_and_compare(run_cli, fault_server, mirror_dir, tmp_path)


# --- a reader during a sync -------------------------------------------------------------------


def test_reader_never_sees_index_and_replaced_file_disagree(
    real_channel, channel_server, mirror_dir, run_cli
):
    """Poll the tree while a run replaces a same-name package. At no instant may the published
    index list the file with a hash its bytes do not have (DESIGN §2: "at every instant").
    A 16 MB unknown top-level key makes publishing the index take long enough to observe."""
    import hashlib
    import threading

    real_channel.doc("noarch")["x_blob"] = random.Random(7).randbytes(8_000_000).hex()
    real_channel.write()
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "-s", "noarch", subdirs=False)))
    old_sha = hashlib.sha256((mirror_dir / "noarch" / PKG_NAME).read_bytes()).hexdigest().encode()
    new_bytes = b"replaced while a reader watches " * 200
    new_sha = hashlib.sha256(new_bytes).hexdigest().encode()
    real_channel.reupload("noarch", PKG_NAME, new_bytes)
    real_channel.write()

    index_path = mirror_dir / "noarch" / "repodata.json"
    file_path = mirror_dir / "noarch" / PKG_NAME
    key = f'"{PKG_NAME}"'.encode()
    stop = threading.Event()
    seen: list[str] = []
    polls = [0]

    def reader() -> None:
        while not stop.is_set():
            # file first, then index: if the file is new and the index still old when read,
            # both were true at the moment the index was read
            try:
                digest = hashlib.sha256(file_path.read_bytes()).hexdigest().encode()
            except FileNotFoundError:
                digest = None
            index = index_path.read_bytes()
            polls[0] += 1
            if key in index and (digest is None or digest not in index):
                which = {old_sha: "the old upload", new_sha: "the new upload", None: "missing"}
                state = "old" if old_sha in index else "new" if new_sha in index else "other"
                seen.append(
                    f"poll {polls[0]}: the {state} index lists {PKG_NAME} while the file on "
                    f"disk is {which.get(digest, 'unknown bytes')}"
                )
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        result = run_cli(
            *mirror_args(channel_server.url, mirror_dir, "-s", "noarch", subdirs=False)
        )
    finally:
        stop.set()
        thread.join(10)
    assert result.returncode == 0, str(result)
    assert file_path.read_bytes() == new_bytes
    assert polls[0] > 20, f"the reader only polled {polls[0]} times"
    assert not seen, seen[0]
