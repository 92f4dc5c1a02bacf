"""Second and later runs: the no-op, re-uploads, deletions, --keep-removed and --dry-run."""

from __future__ import annotations

from tests.conftest import (
    REAL_SUBDIRS,
    assert_consistent,
    disk_packages,
    index_records,
    iter_tree,
    load_index,
    mirror_args,
    ok,
    real_files,
    sha256_of,
    tree_bytes,
    tree_stat,
)

PACKAGE_SUFFIXES = (".conda", ".tar.bz2")


def _is_package_path(path: str) -> bool:
    return path.endswith(PACKAGE_SUFFIXES)


def test_noop_second_run_rewrites_nothing(channel_server, mirror_dir, run_cli):
    first = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert first.returncode == 0, str(first)
    before = tree_stat(mirror_dir)
    channel_server.clear_log()

    second = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert second.returncode == 0, str(second)
    report = second.json()
    assert report["unchanged"] is True, report
    assert report["added"] == [] and report["replaced"] == [] and report["deleted"] == []
    assert report["failed"] == {} and report["exit_code"] == 0
    assert all(s["unchanged"] for s in report["subdirs"].values()), report["subdirs"]
    # same size, same mtime_ns, same inode: nothing was rewritten, not even with equal bytes
    assert tree_stat(mirror_dir) == before

    log = channel_server.log()
    fetched_packages = [r for r in log if _is_package_path(r.path) and r.method == "GET"]
    assert fetched_packages == [], [r.path for r in fetched_packages]
    for sub in REAL_SUBDIRS:
        index_requests = [
            r for r in log if r.path.startswith(f"/{sub}/repodata.json") and r.method == "GET"
        ]
        assert index_requests, f"no index request for {sub}"
        conditional = [
            r for r in index_requests if r.header("If-None-Match") or r.header("If-Modified-Since")
        ]
        assert conditional, f"{sub}: index not requested conditionally: {index_requests}"
        assert any(r.status == 304 for r in conditional), f"{sub}: no 304 for {conditional}"
        assert not [r for r in index_requests if r.status == 200], f"{sub}: index re-downloaded"


def test_noop_run_says_up_to_date(channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    again = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert again.returncode == 0, str(again)
    assert "up to date" in again.output.lower(), str(again)


def test_noop_after_state_dir_kept_but_file_deleted_repairs_tree(
    real_channel, channel_server, mirror_dir, run_cli
):
    """An unchanged upstream with a damaged local tree is not a no-op: the file comes back."""
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    victim = mirror_dir / "noarch" / "dependency-1.0-0.conda"
    victim.unlink()
    result = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert result.returncode == 0, str(result)
    assert victim.is_file()
    assert_consistent(mirror_dir)


def test_same_name_reupload_is_replaced(real_channel, channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    new_bytes = b"re-uploaded package bytes " * 200
    record = real_channel.reupload("noarch", "dependent-1.0-0.conda", new_bytes)
    real_channel.write()

    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert result.returncode == 0, str(result)
    report = result.json()
    assert report["replaced"] == ["dependent-1.0-0.conda"], report
    assert report["added"] == [] and report["deleted"] == []
    assert report["unchanged"] is False
    on_disk = (mirror_dir / "noarch" / "dependent-1.0-0.conda").read_bytes()
    assert on_disk == new_bytes
    assert index_records(mirror_dir, "noarch")["dependent-1.0-0.conda"] == record
    assert sha256_of(on_disk) == record["sha256"]
    assert_consistent(mirror_dir)
    # and the run after that is a no-op again
    again = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert again.returncode == 0 and again.json()["unchanged"] is True, str(again)


def test_record_removed_upstream_is_deleted(real_channel, channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    real_channel.remove("linux-64", "test-package-0.1-0.tar.bz2")
    real_channel.remove("noarch", "dependency-1.0-0.conda", delete_file=False)
    real_channel.write()

    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert result.returncode == 0, str(result)
    report = result.json()
    assert sorted(report["deleted"]) == ["dependency-1.0-0.conda", "test-package-0.1-0.tar.bz2"]
    assert not (mirror_dir / "linux-64" / "test-package-0.1-0.tar.bz2").exists()
    assert not (mirror_dir / "noarch" / "dependency-1.0-0.conda").exists()
    assert "test-package-0.1-0.tar.bz2" not in index_records(mirror_dir, "linux-64")
    assert "dependency-1.0-0.conda" not in index_records(mirror_dir, "noarch")
    expected = real_files(real_channel)
    for sub in REAL_SUBDIRS:
        assert disk_packages(mirror_dir, sub) == expected[sub], sub
    assert_consistent(mirror_dir)


def test_package_left_by_a_killed_run_is_deleted_once_upstream_drops_it(
    real_channel, channel_server, mirror_dir, run_cli
):
    """A killed run can put a verified package in place before it saves its state; if upstream
    drops that package before the next run finishes, no state names the file. The listing
    made because the folder changed finds it, and the run deletes it like any removal."""
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    # what a run killed after committing an add, before saving its state, leaves behind;
    # upstream (unchanged here) no longer lists the package
    (mirror_dir / "noarch" / "newpkg-1.0-0.conda").write_bytes(b"new package " * 300)
    (mirror_dir / "noarch" / "NOTES.txt").write_text("not a package: never touched")

    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert result.returncode == 0, str(result)
    assert result.json()["deleted"] == ["newpkg-1.0-0.conda"]
    assert not (mirror_dir / "noarch" / "newpkg-1.0-0.conda").exists()
    assert (mirror_dir / "noarch" / "NOTES.txt").read_text() == "not a package: never touched"
    expected = real_files(real_channel)
    for sub in REAL_SUBDIRS:
        assert disk_packages(mirror_dir, sub) == expected[sub], sub
    assert_consistent(mirror_dir)
    again = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert again.returncode == 0 and again.json()["unchanged"] is True, str(again)


def test_keep_removed_keeps_file_and_record(real_channel, channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    old_record = dict(real_channel.record("linux-64", "test-package-0.1-0.tar.bz2"))
    real_channel.remove("linux-64", "test-package-0.1-0.tar.bz2")
    real_channel.write()

    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--keep-removed", "--json"))
    assert result.returncode == 0, str(result)
    assert result.json()["deleted"] == []
    assert (mirror_dir / "linux-64" / "test-package-0.1-0.tar.bz2").is_file()
    assert index_records(mirror_dir, "linux-64").get("test-package-0.1-0.tar.bz2") == old_record
    assert_consistent(mirror_dir)

    # without the flag, the next run deletes it
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert result.returncode == 0, str(result)
    assert result.json()["deleted"] == ["test-package-0.1-0.tar.bz2"]
    assert not (mirror_dir / "linux-64" / "test-package-0.1-0.tar.bz2").exists()


def test_dry_run_on_empty_dir_writes_nothing(real_channel, channel_server, mirror_dir, run_cli):
    mirror_dir.mkdir()
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--dry-run", "--json"))
    assert result.returncode == 0, str(result)
    report = result.json()
    assert report["dry_run"] is True
    expected = real_files(real_channel)
    assert sorted(report["added"]) == sorted(f for files in expected.values() for f in files)
    assert list(iter_tree(mirror_dir)) == [], list(iter_tree(mirror_dir))
    assert not [r for r in channel_server.log() if _is_package_path(r.path)]
    # state was not advanced: a real run still does the work
    real = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert real.returncode == 0, str(real)
    assert sorted(real.json()["added"]) == sorted(report["added"])


def test_dry_run_reports_changes_and_touches_nothing(
    real_channel, channel_server, mirror_dir, run_cli
):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    real_channel.reupload("noarch", "dependent-1.0-0.conda", b"new bytes" * 100)
    real_channel.remove("linux-64", "test-package-0.1-0.tar.bz2")
    real_channel.add("linux-64", "brand-new-1.0-0.conda", b"brand new" * 50)
    real_channel.write()
    before_stat, before_bytes = tree_stat(mirror_dir), tree_bytes(mirror_dir)
    channel_server.clear_log()

    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--dry-run", "--json"))
    assert result.returncode == 0, str(result)
    report = result.json()
    assert report["dry_run"] is True and report["unchanged"] is False
    assert report["added"] == ["brand-new-1.0-0.conda"]
    assert report["replaced"] == ["dependent-1.0-0.conda"]
    assert report["deleted"] == ["test-package-0.1-0.tar.bz2"]
    assert tree_stat(mirror_dir) == before_stat
    assert tree_bytes(mirror_dir) == before_bytes
    assert not [r for r in channel_server.log() if _is_package_path(r.path)]

    real = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert real.returncode == 0, str(real)
    report = real.json()
    assert (report["added"], report["replaced"], report["deleted"]) == (
        ["brand-new-1.0-0.conda"],
        ["dependent-1.0-0.conda"],
        ["test-package-0.1-0.tar.bz2"],
    )
    assert_consistent(mirror_dir)


def test_upstream_change_after_noop_is_picked_up(real_channel, channel_server, mirror_dir, run_cli):
    """The conditional request must not hide a real change (ETag changes with the content)."""
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    real_channel.add("noarch", "late-1.0-0.conda", b"late" * 10)
    real_channel.write()
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert result.returncode == 0, str(result)
    assert result.json()["added"] == ["late-1.0-0.conda"]
    assert "late-1.0-0.conda" in index_records(mirror_dir, "noarch")
    assert load_index(mirror_dir, "noarch")["packages.conda"]["late-1.0-0.conda"]["size"] == 40
