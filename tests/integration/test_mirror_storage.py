"""The target misbehaving: a DIR that cannot be created, a disk that fills up mid-run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    Channel,
    assert_consistent,
    disk_packages,
    index_records,
    mirror_args,
    tree_bytes,
)


def one_clear_error(result) -> None:
    assert "Traceback" not in result.output, str(result)
    assert result.stderr.strip(), "no error message on stderr"


def test_dir_under_a_regular_file_is_a_clear_error(channel_server, tmp_path, run_cli):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory\n")
    result = run_cli(*mirror_args(channel_server.url, blocker / "sub"))
    assert result.returncode != 0, str(result)
    assert result.returncode not in (3, 5, 130), str(result)
    one_clear_error(result)
    assert blocker.read_text() == "not a directory\n"
    json_result = run_cli(*mirror_args(channel_server.url, blocker / "sub", "--json"))
    assert json_result.returncode == result.returncode
    report = json_result.json()
    assert report["error"] and report["exit_code"] == result.returncode


@pytest.fixture
def tiny_disk(tmp_path: Path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_is_a_clear_error_and_tree_stays_consistent(
    gen_channel: Channel, serve, tiny_disk, run_cli
):
    for i in range(5):
        gen_channel.add("linux-64", f"small-1.{i}-0.conda", bytes([i]) * 5_000)
    gen_channel.add("noarch", "tiny-1.0-0.conda", b"t" * 100)
    gen_channel.write()
    server = serve(gen_channel.root)
    # --no-shards: this 200 KiB disk has no room for the shard files' blocks as well
    first = run_cli(
        *mirror_args(server.url, tiny_disk, "-s", "linux-64", "--no-shards", subdirs=False)
    )
    assert first.returncode == 0, str(first)
    published = tree_bytes(tiny_disk)

    # two files that cannot both fit on a 200 KiB disk
    gen_channel.add("linux-64", "big-1.0-0.conda", b"B" * 100_000)
    gen_channel.add("linux-64", "bigger-1.0-0.conda", b"C" * 100_000)
    gen_channel.write()
    result = run_cli(
        *mirror_args(
            server.url, tiny_disk, "-s", "linux-64", "--retries", "1", "--no-shards", subdirs=False
        ),
        timeout=60,
    )
    assert result.returncode not in (0, 3, 5), str(result)
    one_clear_error(result)
    assert re.search(r"space|disk.*full|ENOSPC", result.stderr, re.I), str(result)
    # the previously published files are all still there and the tree is consistent
    assert_consistent(tiny_disk)
    indexed = set(index_records(tiny_disk, "linux-64"))
    assert {f"small-1.{i}-0.conda" for i in range(5)} <= indexed
    for name, data in published.items():
        if not name.endswith("repodata.json") and not name.endswith(".zst"):
            assert (tiny_disk / name).read_bytes() == data, name
    assert disk_packages(tiny_disk, "linux-64") >= {f"small-1.{i}-0.conda" for i in range(5)}

    # once there is room again (upstream drops one big file), the run completes
    gen_channel.remove("linux-64", "bigger-1.0-0.conda")
    gen_channel.write()
    fixed = run_cli(
        *mirror_args(server.url, tiny_disk, "-s", "linux-64", "--no-shards", subdirs=False)
    )
    assert fixed.returncode == 0, str(fixed)
    assert "big-1.0-0.conda" in index_records(tiny_disk, "linux-64")
    assert_consistent(tiny_disk)


def test_a_stray_file_frees_its_space_before_downloads(
    gen_channel: Channel, serve, tiny_disk, run_cli
):
    # A killed run put a package in place that upstream then dropped: nothing names it, so
    # the next run deletes it first, and the new file fits where it was.
    for i in range(5):
        gen_channel.add("linux-64", f"small-1.{i}-0.conda", bytes([i]) * 5_000)
    gen_channel.write()
    server = serve(gen_channel.root)
    # --no-shards: this 200 KiB disk has no room for the shard files' pages as well
    args = mirror_args(server.url, tiny_disk, "-s", "linux-64", "--no-shards", subdirs=False)
    assert run_cli(*args).returncode == 0
    (tiny_disk / "linux-64" / "dropped-1.0-0.conda").write_bytes(b"D" * 100_000)
    gen_channel.add("linux-64", "big-1.0-0.conda", b"B" * 100_000)
    gen_channel.write()
    result = run_cli(*args)
    assert result.returncode == 0, str(result)
    assert not (tiny_disk / "linux-64" / "dropped-1.0-0.conda").exists()
    assert (tiny_disk / "linux-64" / "big-1.0-0.conda").read_bytes() == b"B" * 100_000
    assert_consistent(tiny_disk)
