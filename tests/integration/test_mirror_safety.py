"""An operator's mistake never empties a mirror: a wrong URL, an upstream that answers 404 or an
empty index, a subdir gone upstream, a filter changed by mistake. Each case runs against a real
HTTP server with an already-populated mirror and checks that nothing under DIR changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import (
    Channel,
    assert_consistent,
    disk_packages,
    index_records,
    mirror_args,
    ok,
)
from tests.servers import ChannelServer


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """relpath -> (size, mtime_ns) of every file and folder under root, state included
    (the lock file's contents are never written, so its mtime holds still too)."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.stat()
            size = 0 if path.is_dir() else st.st_size
            out[str(path.relative_to(root))] = (size, st.st_mtime_ns)
    return out


@pytest.fixture
def populated(real_channel: Channel, channel_server: ChannelServer, mirror_dir: Path, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    assert disk_packages(mirror_dir, "noarch")
    return mirror_dir


@pytest.mark.parametrize("with_subdirs", [False, True])
def test_upstream_that_answers_404_for_everything_changes_nothing(
    populated: Path, tmp_path: Path, serve, run_cli, with_subdirs: bool
) -> None:
    empty = tmp_path / "empty-site"
    empty.mkdir()
    server = serve(empty)
    before = snapshot(populated)
    result = run_cli(*mirror_args(server.url, populated, subdirs=with_subdirs))
    ok(result, 3)
    assert "error: no conda channel at" in result.stderr
    assert server.url in result.stderr
    assert snapshot(populated) == before
    # and the summary of zeros is not printed after the error
    assert "added 0" not in result.output


def test_mistyped_channel_name_and_token_change_nothing(
    populated: Path, channel_server: ChannelServer, run_cli
) -> None:
    before = snapshot(populated)
    for url in (channel_server.url + "/conda-froge", channel_server.url + "/t/wrong-token/x"):
        ok(run_cli(*mirror_args(url, populated, subdirs=False)), 3)
    assert snapshot(populated) == before


def test_missing_local_path_changes_nothing(populated: Path, tmp_path: Path, run_cli) -> None:
    before = snapshot(populated)
    result = run_cli(*mirror_args(str(tmp_path / "no-such-channel"), populated))
    ok(result, 3)
    assert "no conda channel at" in result.stderr
    assert snapshot(populated) == before


def test_subdir_gone_upstream_is_an_error_for_that_subdir(
    populated: Path, real_channel: Channel, channel_server: ChannelServer, run_cli
) -> None:
    noarch_before = {k: v for k, v in snapshot(populated).items() if k.startswith("noarch")}
    for name in ("repodata.json", "repodata.json.zst"):
        (real_channel.root / "noarch" / name).unlink(missing_ok=True)
    real_channel.add("linux-64", "newpkg-1.0-0.tar.bz2")
    real_channel.write("linux-64")
    for subdirs in (True, False):  # named with -s, and found by discovery from our state
        result = run_cli(*mirror_args(channel_server.url, populated, subdirs=subdirs))
        ok(result, 3)
        assert "noarch/repodata.json not found upstream" in result.stderr
        after = {k: v for k, v in snapshot(populated).items() if k.startswith("noarch")}
        assert after == noarch_before
    # the other subdirs were still brought up to date
    assert "newpkg-1.0-0.tar.bz2" in index_records(populated, "linux-64")
    assert_consistent(populated)


def test_empty_noarch_is_published_only_when_we_hold_none(
    gen_channel: Channel, serve, mirror_dir: Path, run_cli
) -> None:
    gen_channel.add("linux-64", "a-1.0-0.tar.bz2")
    gen_channel.write()
    server = serve(gen_channel.root)
    ok(run_cli(*mirror_args(server.url, mirror_dir, subdirs=False)))
    doc = json.loads((mirror_dir / "noarch" / "repodata.json").read_bytes())
    assert doc["packages"] == {} and doc["info"]["subdir"] == "noarch"


def test_empty_upstream_index_trips_the_mass_deletion_guard(
    populated: Path, real_channel: Channel, channel_server: ChannelServer, run_cli
) -> None:
    held = len(disk_packages(populated, "linux-64"))
    real_channel.docs["linux-64"]["packages"] = {}
    real_channel.docs["linux-64"]["packages.conda"] = {}
    real_channel.write("linux-64")
    before = snapshot(populated)
    result = run_cli(*mirror_args(channel_server.url, populated))
    ok(result, 3)
    assert f"would delete {held} of {held} packages" in result.stderr
    assert "--max-delete 100" in result.stderr
    linux = {k: v for k, v in snapshot(populated).items() if k.startswith("linux-64")}
    assert linux == {k: v for k, v in before.items() if k.startswith("linux-64")}
    # a dry run tells the same
    ok(run_cli(*mirror_args(channel_server.url, populated, "--dry-run")), 3)
    # the intended shrink goes through with --max-delete 100
    ok(run_cli(*mirror_args(channel_server.url, populated, "--max-delete", "100")))
    assert disk_packages(populated, "linux-64") == set()
    assert_consistent(populated)


def test_filter_changed_by_mistake_trips_the_guard(
    populated: Path, channel_server: ChannelServer, run_cli
) -> None:
    def guarded(tree: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        return {k: v for k, v in tree.items() if k.split("/")[0] in ("linux-64", "noarch")}

    before = snapshot(populated)
    result = run_cli(*mirror_args(channel_server.url, populated, "--include", "zlib"))
    ok(result, 3)
    # linux-64 would lose 4 of 6 and noarch 9 of 9: both refused; osx-64 loses 2 of 4 (50%)
    assert "linux-64: this run would delete 4 of 6 packages" in result.stderr
    assert "noarch: this run would delete 9 of 9 packages" in result.stderr
    assert guarded(snapshot(populated)) == guarded(before)
    assert disk_packages(populated, "osx-64") == {
        "zlib-1.2.11-h1de35cc_3.conda",
        "zlib-1.2.11-h1de35cc_3.tar.bz2",
    }
    # a shrink within the limit goes through
    ok(run_cli(*mirror_args(channel_server.url, populated, "--exclude", "other-package")))
    assert not any(n.startswith("other-package") for n in disk_packages(populated, "linux-64"))


def test_max_delete_from_config(
    populated: Path, channel_server: ChannelServer, run_cli, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    table = (
        f'[[mirror]]\nurl = "{channel_server.url}"\ndir = "{populated}"\n'
        'subdirs = ["linux-64", "osx-64", "noarch"]\ninclude = ["zlib"]\n'
    )
    config.write_text(table)
    ok(run_cli("mirror", "--config", str(config)), 3)
    config.write_text(table + "max_delete = 100\n")
    ok(run_cli("mirror", "--config", str(config)))
    assert all(n.startswith("zlib-") for n in disk_packages(populated, "linux-64"))


def test_max_delete_must_be_a_percentage(populated: Path, channel_server, run_cli) -> None:
    result = run_cli(*mirror_args(channel_server.url, populated, "--max-delete", "150"))
    ok(result, 2)
    assert "--max-delete" in result.stderr
