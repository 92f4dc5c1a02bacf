"""Upstream misbehaving: unreachable, 404, bad repodata, transient faults, permanent corruption."""

from __future__ import annotations

from tests.conftest import (
    REAL_SUBDIRS,
    assert_consistent,
    disk_packages,
    index_records,
    mirror_args,
    ok,
    real_files,
    tree_bytes,
    tree_stat,
)
from tests.servers import FaultServer, free_port

PKG = "/noarch/dependent-2.0-0.conda"
PKG_NAME = "dependent-2.0-0.conda"


def no_traceback(result) -> None:
    assert "Traceback" not in result.output, str(result)


def test_unreachable_upstream_exits_3_and_keeps_tree(channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    before = tree_stat(mirror_dir)
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_cli(*mirror_args(closed, mirror_dir, "--retries", "1", "--json"), timeout=60)
    assert result.returncode == 3, str(result)
    report = result.json()
    assert report["exit_code"] == 3 and report["error"], report
    assert tree_stat(mirror_dir) == before
    no_traceback(result)


def test_upstream_down_then_back(channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    before = tree_stat(mirror_dir)
    channel_server.stop()
    down = run_cli(*mirror_args(channel_server.url, mirror_dir, "--retries", "1"))
    assert down.returncode == 3, str(down)
    assert tree_stat(mirror_dir) == before
    channel_server.start()
    back = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert back.returncode == 0, str(back)
    assert back.json()["unchanged"] is True
    assert tree_stat(mirror_dir) == before


def test_missing_requested_subdir_exits_3(channel_server, mirror_dir, run_cli):
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "-s", "win-64", subdirs=False))
    assert result.returncode == 3, str(result)
    assert not (mirror_dir / "win-64" / "repodata.json").exists()
    assert "win-64" in result.output
    no_traceback(result)


def test_missing_channel_root_exits_3(tmp_path, mirror_dir, run_cli):
    result = run_cli(*mirror_args(str(tmp_path / "does-not-exist"), mirror_dir))
    assert result.returncode == 3, str(result)
    no_traceback(result)


DAMAGES = {
    "not-json": lambda raw: b"<html>502 Bad Gateway</html>",
    "truncated": lambda raw: raw[: len(raw) // 2],
    "json-array": lambda raw: b"[1, 2, 3]",
    "packages-not-object": lambda raw: b'{"packages": [1, 2]}',
    "empty": lambda raw: b"",
}


def test_invalid_repodata_exits_3_and_keeps_tree(real_channel, channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    before_stat, before_bytes = tree_stat(mirror_dir), tree_bytes(mirror_dir)
    path = real_channel.root / "linux-64" / "repodata.json"
    good = path.read_bytes()
    for name, damage in DAMAGES.items():
        path.write_bytes(damage(good))
        result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--retries", "1", "-q"))
        assert result.returncode == 3, f"{name}: {result}"
        assert tree_bytes(mirror_dir) == before_bytes, name
        assert tree_stat(mirror_dir) == before_stat, name
        no_traceback(result)


# Each of these packages misbehaves on its first GET only.
TRANSIENT = {
    "/noarch/dependent-2.0-0.conda": "500",
    "/noarch/dependency-2.0-0.conda": "reset",
    "/linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2": "truncate",
    "/osx-64/mock-2.0.0-py37_1000.conda": "corrupt",
    "/noarch/_r-mutex-1.0.1-anacondar_1.tar.bz2": "429",
}


def test_transient_package_faults_are_retried(real_channel, fault_server, mirror_dir, run_cli):
    for path, kind in TRANSIENT.items():
        # Retry-After: 2 is longer than the first backoff (0.5 s), so honouring it shows
        fault_server.fault(path, kind, times=1, retry_after="2")
    result = run_cli(*mirror_args(fault_server.url, mirror_dir, "--retries", "3", "--json"))
    assert result.returncode == 0, str(result)
    report = result.json()
    assert report["failed"] == {}
    for path, kind in TRANSIENT.items():
        assert fault_server.fault_hits(path) == 1, path
        gets = fault_server.requests_for(path, "GET")
        assert len(gets) >= 2, (kind, gets)
        assert gets[0].fault == kind and gets[-1].status in (200, 206), (kind, gets)
        sub, name = path.strip("/").split("/")
        assert name in index_records(mirror_dir, sub), kind
        if kind == "429":
            gap = gets[1].time - gets[0].time
            assert gap >= 1.9, f"Retry-After: 2 not honoured, retried after {gap:.2f}s"
    for sub, files in real_files(real_channel).items():
        assert disk_packages(mirror_dir, sub) == files
    assert_consistent(mirror_dir)


def test_transient_repodata_fault_is_retried(real_channel, fault_server, mirror_dir, run_cli):
    fault_server.fault("/noarch/repodata.json", "reset", times=1)
    result = run_cli(*mirror_args(fault_server.url, mirror_dir, "--retries", "3"))
    assert result.returncode == 0, str(result)
    assert fault_server.fault_hits("/noarch/repodata.json") == 1
    assert set(index_records(mirror_dir, "noarch")) == real_files(real_channel)["noarch"]


def test_permanent_repodata_500_exits_3(real_channel, mirror_dir, run_cli):
    with FaultServer(real_channel.root) as server:
        ok(run_cli(*mirror_args(server.url, mirror_dir)))
        before = tree_stat(mirror_dir)
        server.fault("/noarch/repodata.json", "500")
        server.fault("/noarch/repodata.json.zst", "500")
        result = run_cli(*mirror_args(server.url, mirror_dir, "--retries", "1"))
    assert result.returncode == 3, str(result)
    assert tree_stat(mirror_dir) == before


PERMANENT = {
    "/noarch/dependent-2.0-0.conda": "corrupt",
    "/linux-64/other-package-0.2-0.tar.bz2": "500",
}


def test_permanent_package_faults_fail_only_those_files(
    real_channel, fault_server, mirror_dir, run_cli
):
    for path, kind in PERMANENT.items():
        fault_server.fault(path, kind)  # always
    names = {p.rsplit("/", 1)[1] for p in PERMANENT}
    result = run_cli(*mirror_args(fault_server.url, mirror_dir, "--retries", "2", "--json"))
    assert result.returncode == 1, str(result)
    report = result.json()
    assert report["exit_code"] == 1
    assert set(report["failed"]) == names, report["failed"]
    for path in PERMANENT:
        sub, name = path.strip("/").split("/")
        assert report["failed"][name], f"{name} failed without an error message"
        assert name in report["subdirs"][sub]["failed"]
        assert fault_server.fault_hits(path) >= 2, f"{name} was not retried"
        assert not (mirror_dir / sub / name).exists()
        assert name not in index_records(mirror_dir, sub)
        assert name in result.stderr
        # no leftovers of the failed download next to the published files
        leftovers = [p.name for p in (mirror_dir / sub).iterdir() if name in p.name]
        assert leftovers == [], leftovers
    expected = real_files(real_channel)
    for path in PERMANENT:
        sub, name = path.strip("/").split("/")
        expected[sub].discard(name)
    for sub in REAL_SUBDIRS:
        assert disk_packages(mirror_dir, sub) == expected[sub], sub
        assert set(index_records(mirror_dir, sub)) == expected[sub], sub
    assert_consistent(mirror_dir)

    # once upstream is fixed, the next run completes the mirror, though its index is unchanged
    fault_server.clear_faults()
    fixed = run_cli(*mirror_args(fault_server.url, mirror_dir, "--json"))
    assert fixed.returncode == 0, str(fixed)
    assert sorted(fixed.json()["added"]) == sorted(names)
    for path in PERMANENT:
        sub, name = path.strip("/").split("/")
        assert name in index_records(mirror_dir, sub)
    assert_consistent(mirror_dir)


def test_failed_replacement_keeps_tree_consistent(real_channel, fault_server, mirror_dir, run_cli):
    """A re-upload that cannot be fetched: the run fails that file, and the index never points
    at bytes that do not match it."""
    ok(run_cli(*mirror_args(fault_server.url, mirror_dir)))
    real_channel.reupload("noarch", PKG_NAME, b"new upload" * 300)
    real_channel.write()
    fault_server.fault(PKG, "corrupt")
    result = run_cli(*mirror_args(fault_server.url, mirror_dir, "--retries", "1", "--json"))
    assert result.returncode == 1, str(result)
    assert set(result.json()["failed"]) == {PKG_NAME}
    assert_consistent(mirror_dir)
    fault_server.clear_faults()
    fixed = run_cli(*mirror_args(fault_server.url, mirror_dir, "--json"))
    assert fixed.returncode == 0, str(fixed)
    assert (mirror_dir / "noarch" / PKG_NAME).read_bytes() == b"new upload" * 300
    assert_consistent(mirror_dir)
