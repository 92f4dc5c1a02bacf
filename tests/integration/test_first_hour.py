"""What a new user trips over in the first hour (issue 12 §2-§4): honest messages and exit
codes, the summary, `serve DIR` on a mirror tree, a taken port, keys for unknown channels, and
no `immutable` caching for a file no index lists."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, Channel, cli_command, cli_env, mirror_args, ok
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer, free_port

EXAMPLE = REPO_ROOT / "examples" / "channel"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-j", "0"), "--jobs must be at least 1 (got 0)"),
        (("--retries", "-1"), "--retries must be 0 or more (got -1)"),
        (("--zstd-level", "30"), "--zstd-level must be from 1 to 22 (got 30)"),
        (("--latest", "0"), "--latest must be at least 1"),
        (("-s", "linux64"), "invalid subdir 'linux64' (did you mean 'linux-64'?)"),
    ],
)
def test_each_bad_option_has_its_own_message(
    run_cli, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run_cli("mirror", EXAMPLE, tmp_path / "m", *args)
    ok(result, 2)
    assert result.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_missing_dir_is_named(run_cli) -> None:
    result = run_cli("mirror", EXAMPLE)
    ok(result, 2)
    assert "missing DIR" in result.stderr


def test_unwritable_target_is_a_usage_error_naming_the_path(run_cli) -> None:
    result = run_cli("mirror", EXAMPLE, "/sys/kernel")
    ok(result, 2)
    assert "/sys/kernel" in result.stderr and "Traceback" not in result.output


def test_read_only_file_system_is_exit_2(run_cli, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        result = run_cli("mirror", EXAMPLE, ro)
        ok(result, 2)
        assert str(ro) in result.stderr and "read-only" in result.stderr
    finally:
        subprocess.run(["umount", str(ro)])


def test_lock_collision_with_quiet_prints_one_line(run_cli, tmp_path: Path) -> None:
    target = tmp_path / "m"
    ok(run_cli("mirror", EXAMPLE, target, "-q"))
    fd = os.open(target / ".condasync" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_cli("mirror", EXAMPLE, target, "-q")
    finally:
        os.close(fd)
    ok(result, 5)
    assert result.stderr.count("\n") == 1 and "locked" in result.stderr
    assert result.stdout == ""


def test_summary_counts_dry_run_bytes_repair_and_up_to_date(run_cli, tmp_path: Path) -> None:
    target = tmp_path / "m"
    dry = run_cli("mirror", EXAMPLE, target, "--dry-run", "--json")
    ok(dry)
    assert dry.json()["planned_bytes"] == 7143 and dry.json()["bytes"] == 0
    plain = run_cli("mirror", EXAMPLE, target, "--dry-run")
    assert "would download 7143 bytes (dry run)" in plain.stderr
    ok(run_cli("mirror", EXAMPLE, target))
    up = run_cli("mirror", EXAMPLE, target, "--json")
    assert {s: d["packages"] for s, d in up.json()["subdirs"].items()} == {
        "linux-64": 4,
        "noarch": 4,
    }
    assert "up to date (8 packages)" in run_cli("mirror", EXAMPLE, target).stderr
    victim = next((target / "noarch").glob("*.conda"))
    victim.unlink()
    checked = run_cli("verify", target)
    ok(checked, 4)
    assert f"to repair: condasync mirror file://localhost{EXAMPLE} {target} --repair" in (
        checked.stderr
    )
    repaired = run_cli("mirror", EXAMPLE, target, "--repair", "--json")
    ok(repaired)
    assert repaired.json()["repaired"] == [victim.name] and repaired.json()["added"] == []
    ok(run_cli("verify", target))


def test_index_warns_about_top_level_packages_and_names_bad_archives_once(
    run_cli, tmp_path: Path
) -> None:
    root = tmp_path / "own"
    (root / "noarch").mkdir(parents=True)
    (root / "noarch" / "bad-1.0-0.conda").write_bytes(b"garbage")
    shutil.copy(next((EXAMPLE / "noarch").glob("*.tar.bz2")), root / "top-1.0-0.tar.bz2")
    result = run_cli("index", root)
    ok(result)
    assert (
        "1 package file(s) at the top of" in result.stderr and "top-1.0-0.tar.bz2" in result.stderr
    )
    assert "noarch/" in result.stderr
    lines = [line for line in result.stderr.splitlines() if "bad-1.0-0.conda" in line]
    assert len(lines) == 1 and lines[0].count("bad-1.0-0.conda") == 1
    assert "'bad-1.0-0.conda'" not in lines[0]


def test_config_paths_are_relative_to_the_config_file(run_cli, tmp_path: Path) -> None:
    examples = tmp_path / "copy" / "examples"
    shutil.copytree(REPO_ROOT / "examples", examples)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        cli_command("mirror", "--config", str(examples / "condasync.toml"), "-q"),
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=cli_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    mirror = tmp_path / "copy" / "mirror"
    assert (mirror / "example" / "noarch" / "repodata.json").is_file()
    assert (mirror / "example-slice" / "linux-64" / "repodata.json").is_file()
    assert not any(elsewhere.iterdir())


def test_serve_a_mirror_tree_as_one_channel(
    run_cli,
    tmp_path: Path,
    start_serve,  # noqa: F811
    rattler_install,
) -> None:
    tree = tmp_path / "mirror"
    ok(run_cli("mirror", EXAMPLE, tree, "-q"))
    server: ServeProcess = start_serve(tree)
    names = [c["name"] for c in server.client.get("/api/channels").json()]
    assert names == ["mirror"]
    assert f"point clients at {server.url}/channels/mirror" in server.stderr
    got = rattler_install(f"{server.url}/channels/mirror", ["tinytool"], tmp_path)
    assert got.returncode == 0, got.stderr[-2000:]
    # a package file no index lists is not cached as immutable; a listed one is
    listed = next((tree / "noarch").glob("*.conda"))
    stray = tree / "noarch" / "stray-1.0-0.conda"
    stray.write_bytes(listed.read_bytes())
    r = server.client.get(f"/channels/mirror/noarch/{stray.name}")
    assert r.status_code == 200 and "immutable" not in r.headers["cache-control"]
    r = server.client.get(f"/channels/mirror/noarch/{listed.name}")
    assert "immutable" in r.headers["cache-control"]
    named = start_serve(tree, "--name", "corp")
    assert [c["name"] for c in named.client.get("/api/channels").json()] == ["corp"]
    assert named.client.get("/channels/corp/noarch/repodata.json").status_code == 200


def test_taken_port_is_one_error_line(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = subprocess.run(
            cli_command("serve", str(tmp_path / "d"), "--port", str(port)),
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip()
        == f"error: cannot listen on 127.0.0.1:{port}: the port is already in use"
    )
    assert "serving" not in proc.stdout + proc.stderr


def test_apikey_for_an_unknown_channel_is_an_error(run_cli, tmp_path: Path) -> None:
    result = run_cli("apikey", "create", tmp_path, "--channel", "nope")
    ok(result, 2)
    assert "no channel 'nope'" in result.stderr and result.stdout == ""
    (tmp_path / "real").mkdir()
    ok(run_cli("apikey", "create", tmp_path, "--channel", "real"))


def test_mirror_help_loses_nothing(run_cli) -> None:
    shown = " ".join(run_cli("mirror", "--help").stdout.split())
    assert "Concurrent downloads [default: 16]." in shown
    assert "TOML file with [[mirror]] tables." in shown


def test_progress_table_says_failed_and_totals(gen_channel: Channel, tmp_path: Path, serve) -> None:
    from condasync.display import print_summary, subdir_status
    from condasync.models import MirrorReport, SubdirReport

    report = MirrorReport(url="u", target="t", seconds=1.5, exit_code=1)
    report.subdirs = [
        SubdirReport("linux-64", added=["a"], failed={"b": "x"}, packages=3, bytes=10),
        SubdirReport("noarch", unchanged=True, packages=7),
    ]
    assert subdir_status(report, report.subdirs[0]) == "failed 1"
    assert subdir_status(report, report.subdirs[1]) == "up to date"
    report.exit_code = 130
    assert subdir_status(report, report.subdirs[0]) == "interrupted"
    from rich.console import Console

    import condasync.display as display

    console = Console(record=True, width=200)
    saved, display.err = display.err, console
    try:
        print_summary(report)
    finally:
        display.err = saved
    text = console.export_text()
    assert "total" in text and "1.5 s" in text and " 10 " in text


def test_mirror_over_http_prints_plain_fetching_line(
    channel_server: ChannelServer, mirror_dir: Path, run_cli
) -> None:
    result = ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    assert "fetching 3 indexes: linux-64 osx-64 noarch" in result.stderr
    assert httpx.get(channel_server.url + "/noarch/repodata.json").status_code == 200
