"""Issue 14: mirror what environments need. --lock (pixi.lock written by py-rattler, conda-lock.yml,
@EXPLICIT), --solve and --with-deps give a mirror py-rattler installs from over HTTP, while the
same files under upstream's full index do not install; plus hash mismatch, foreign packages,
unsolvable specs, no-op, --keep-unselected, virtual packages and --exclude."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.closure_channel import make_closure_channel
from tests.conftest import (
    REPO_ROOT,
    CliResult,
    RattlerResult,
    assert_consistent,
    cli_env,
    disk_packages,
    load_index,
    ok,
)
from tests.servers import ChannelServer

LOCKWRITER = REPO_ROOT / "tests" / "closure_lockwriter.py"
APP09_LINUX = {"app-0.9-h0.conda", "libz-1.2-h0.conda", "libc-shim-1.0-h0.conda"}
APP10_LINUX = {"app-1.0-h0.conda", "libz-1.3-h0.conda", "libc-shim-1.0-h0.conda"}
NOARCH = {"pyhelper-1.0-pyh0.conda", "tzdata-2024a-h0.conda"}


@pytest.fixture(scope="session")
def built_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_closure_channel(tmp_path_factory.mktemp("closure") / "channel")


@pytest.fixture
def upstream(built_channel: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_channel, tmp_path / "upstream"))


@pytest.fixture
def up_server(upstream: Path, serve: Callable[..., ChannelServer]) -> ChannelServer:
    return serve(upstream)


def mirror(run_cli: Callable[..., CliResult], url: str, target: Path, *args: Any) -> CliResult:
    return run_cli("mirror", url, target, "-j", "2", "--json", *args, timeout=120)


def plain(run_cli: Callable[..., CliResult], url: str, target: Path, *args: Any) -> CliResult:
    """Without --json: the per-input, per-solve and per-subdir lines on stderr."""
    return run_cli("mirror", url, target, "-j", "2", *args, timeout=120)


def records(root: Path, subdir: str) -> dict[str, Any]:
    return dict(load_index(root, subdir).get("packages.conda", {}))


def full_index_copy(mirror_dir: Path, upstream: Path, dst: Path) -> Path:
    """The mirror's package files, but upstream's whole index for each subdir."""
    shutil.copytree(mirror_dir, dst, ignore=shutil.ignore_patterns(".condasync"))
    for sub in dst.iterdir():
        if sub.is_dir() and (upstream / sub.name / "repodata.json").exists():
            data = (upstream / sub.name / "repodata.json").read_bytes()
            (sub / "repodata.json").write_bytes(data)
            (sub / "repodata.json.zst").write_bytes(zstandard.compress(data))
            # the mirror's shards describe its restricted index: without them a client
            # reads upstream's whole index, which is the point of this copy
            (sub / "repodata_shards.msgpack.zst").unlink(missing_ok=True)
            shutil.rmtree(sub / "shards", ignore_errors=True)
    return dst


def assert_installs_only_restricted(
    target: Path,
    upstream: Path,
    serve: Callable[..., ChannelServer],
    rattler_install: Callable[..., RattlerResult],
    tmp_path: Path,
    expect: set[str],
) -> None:
    """py-rattler installs `app` from the mirror over HTTP; with upstream's full index over
    the same files it picks a record the mirror does not hold, and fails."""
    assert_consistent(target)
    got = rattler_install(serve(target).url, ["app"], tmp_path)
    assert got.returncode == 0, got.stderr[-3000:]
    assert {r["file_name"] for r in got.records} == expect
    full = full_index_copy(target, upstream, tmp_path / "full-index")
    bad = rattler_install(serve(full).url, ["app"], tmp_path)
    assert bad.returncode != 0, bad.records


def write_pixi_lock(channel: Path, url: str, out: Path, *wanted: str) -> Path:
    proc = subprocess.run(
        [sys.executable, str(LOCKWRITER), str(channel), url, str(out), *wanted],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def upstream_record(upstream: Path, subdir: str, filename: str) -> dict[str, Any]:
    doc = json.loads((upstream / subdir / "repodata.json").read_text())
    return dict(doc["packages.conda"][filename])


def explicit_file(
    path: Path, base: str, upstream: Path, entries: list[tuple[str, str, str]]
) -> Path:
    """entries: (subdir, filename, hash style: md5 | sha256 | sha256: | none | bad-md5)."""
    lines = ["# platform: linux-64", "@EXPLICIT"]
    for subdir, fn, style in entries:
        url = f"{base}/{subdir}/{fn}"
        rec = upstream_record(upstream, subdir, fn) if style != "foreign" else {}
        fragment = {
            "md5": f"#{rec.get('md5')}",
            "sha256": f"#{rec.get('sha256')}",
            "sha256:": f"#sha256:{rec.get('sha256')}",
            "bad-md5": "#" + "0" * 32,
            "none": "",
            "foreign": "#" + "1" * 32,
        }[style]
        lines.append(url + fragment)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pixi_lock_written_by_rattler_installs_from_mirror(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, serve: Callable[..., ChannelServer],
    rattler_install: Callable[..., RattlerResult], tmp_path: Path,
) -> None:  # fmt: skip
    lock = write_pixi_lock(
        upstream, up_server.url, tmp_path / "pixi.lock", "linux-64=app <1", "osx-arm64=app"
    )
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--lock", lock))
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX
    assert disk_packages(mirror_dir, "osx-arm64") == {
        "app-1.0-h0.conda", "libz-1.3-h0.conda", "libc-shim-1.0-h0.conda"
    }  # fmt: skip
    assert disk_packages(mirror_dir, "noarch") == NOARCH
    closure = result.json()["closure"]
    assert closure["skipped"] == 1  # the PyPI wheel
    assert closure["selected"]["linux-64"]["lock"] == 3
    assert closure["foreign"] == [] and closure["lock_mismatch"] == []
    lines = ok(plain(run_cli, up_server.url, tmp_path / "plain", "--lock", lock)).stderr
    assert f"lock {lock} (pixi.lock): 8 conda packages, 1 skipped (PyPI/source), 0 foreign" in lines
    assert "linux-64: selected 3 (lock 3)" in lines
    # the published index lists exactly the selected records, as upstream wrote them
    for subdir in ("linux-64", "osx-arm64", "noarch"):
        published = records(mirror_dir, subdir)
        assert set(published) == disk_packages(mirror_dir, subdir)
        for fn, rec in published.items():
            assert rec == upstream_record(upstream, subdir, fn)
    assert_installs_only_restricted(
        mirror_dir, upstream, serve, rattler_install, tmp_path, APP09_LINUX | NOARCH
    )


def test_conda_lock_yml_installs_from_mirror(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, serve: Callable[..., ChannelServer],
    rattler_install: Callable[..., RattlerResult], tmp_path: Path,
) -> None:  # fmt: skip
    packages = []
    for subdir, fn in [("linux-64", f) for f in sorted(APP09_LINUX)] + [
        ("noarch", f) for f in sorted(NOARCH)
    ]:
        rec = upstream_record(upstream, subdir, fn)
        packages.append({
            "name": rec["name"], "version": rec["version"], "manager": "conda",
            "platform": "linux-64", "dependencies": {}, "url": f"{up_server.url}/{subdir}/{fn}",
            "hash": {"md5": rec["md5"], "sha256": rec["sha256"]},
            "category": "main", "optional": False,
        })  # fmt: skip
    packages.append({
        "name": "requests", "version": "2.32.3", "manager": "pip", "platform": "linux-64",
        "dependencies": {}, "url": "https://files.pythonhosted.org/r/requests-2.32.3-py3-none-any.whl",
        "hash": {"sha256": "7" * 64}, "category": "main", "optional": False,
    })  # fmt: skip
    doc = {
        "version": 1,
        "metadata": {
            "content_hash": {"linux-64": "0" * 64},
            "channels": [{"url": up_server.url, "used_env_vars": []}],
            "platforms": ["linux-64"], "sources": ["environment.yml"],
        },
        "package": packages,
    }  # fmt: skip
    lock = tmp_path / "conda-lock.yml"
    lock.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--lock", lock))
    closure = result.json()["closure"]
    assert closure["skipped"] == 1
    assert closure["inputs"][0]["kind"] == "conda-lock.yml"
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX
    assert disk_packages(mirror_dir, "osx-arm64") == set()
    assert_installs_only_restricted(
        mirror_dir, upstream, serve, rattler_install, tmp_path, APP09_LINUX | NOARCH
    )


def test_explicit_file_with_every_hash_style_installs(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, serve: Callable[..., ChannelServer],
    rattler_install: Callable[..., RattlerResult], tmp_path: Path,
) -> None:  # fmt: skip
    lock = explicit_file(tmp_path / "explicit.txt", up_server.url, upstream, [
        ("linux-64", "app-0.9-h0.conda", "md5"),
        ("linux-64", "libz-1.2-h0.conda", "sha256"),
        ("linux-64", "libc-shim-1.0-h0.conda", "sha256:"),
        ("noarch", "pyhelper-1.0-pyh0.conda", "none"),
        ("noarch", "tzdata-2024a-h0.conda", "md5"),
    ])  # fmt: skip
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--lock", lock, "-s", "linux-64"))
    assert result.json()["closure"]["inputs"][0]["kind"] == "explicit"
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX
    assert_installs_only_restricted(
        mirror_dir, upstream, serve, rattler_install, tmp_path, APP09_LINUX | NOARCH
    )


def test_solve_installs_from_mirror(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, serve: Callable[..., ChannelServer],
    rattler_install: Callable[..., RattlerResult], tmp_path: Path,
) -> None:  # fmt: skip
    args = ("--solve", "app <1", "--platform", "linux-64")
    result = ok(mirror(run_cli, up_server.url, tmp_path / "dry", *args, "--dry-run"))
    assert (
        "solve linux-64: 5 records in"
        in ok(plain(run_cli, up_server.url, mirror_dir, *args)).stderr
    )
    solves = result.json()["closure"]["solves"]
    assert [(s["platform"], s["specs"], s["records"]) for s in solves] == [
        ("linux-64", ["app <1"], 5)
    ]
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX
    assert disk_packages(mirror_dir, "osx-arm64") == set()
    assert_installs_only_restricted(
        mirror_dir, upstream, serve, rattler_install, tmp_path, APP09_LINUX | NOARCH
    )


def test_with_deps_installs_from_mirror(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, serve: Callable[..., ChannelServer],
    rattler_install: Callable[..., RattlerResult], tmp_path: Path,
) -> None:  # fmt: skip
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--include", "app 0.9",
                       "--with-deps", "-s", "linux-64"))  # fmt: skip
    selected = result.json()["closure"]["selected"]
    assert selected["linux-64"]["filters"] == 1
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX
    assert disk_packages(mirror_dir, "noarch") == NOARCH
    assert_installs_only_restricted(
        mirror_dir, upstream, serve, rattler_install, tmp_path, APP09_LINUX | NOARCH
    )


def test_with_deps_noarch_record_on_each_platform_and_unsolvable_is_reported(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path
) -> None:
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--include", "pyhelper",
                       "--include", "torchy", "--with-deps"))  # fmt: skip
    closure = result.json()["closure"]
    assert disk_packages(mirror_dir, "noarch") == NOARCH
    # torchy's cuda build needs __cuda, which is the client's to have: its deps still solve
    assert {"torchy-1.0-cpu_0.conda", "torchy-1.0-cuda_1.conda", "libz-1.3-h0.conda"} <= (
        disk_packages(mirror_dir, "linux-64")
    )
    assert closure["unsolvable"] == []


def test_hash_mismatch_exits_1_and_leaves_the_file_out(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    lock = explicit_file(tmp_path / "explicit.txt", up_server.url, upstream, [
        ("linux-64", "app-0.9-h0.conda", "md5"),
        ("linux-64", "libz-1.2-h0.conda", "bad-md5"),
    ])  # fmt: skip
    result = mirror(run_cli, up_server.url, mirror_dir, "--lock", lock, "-s", "linux-64")
    ok(result, 1)
    closure = result.json()["closure"]
    assert [(m["filename"], m["hash"]) for m in closure["lock_mismatch"]] == [
        ("libz-1.2-h0.conda", "md5")
    ]
    assert disk_packages(mirror_dir, "linux-64") == {"app-0.9-h0.conda"}
    assert set(records(mirror_dir, "linux-64")) == {"app-0.9-h0.conda"}
    assert_consistent(mirror_dir)
    again = mirror(run_cli, up_server.url, mirror_dir, "--lock", lock, "-s", "linux-64")
    ok(again, 1)  # reported again, never a silent no-op
    assert len(again.json()["closure"]["lock_mismatch"]) == 1


def test_foreign_package_warns_and_does_not_change_the_exit_code(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    lock = explicit_file(tmp_path / "explicit.txt", up_server.url, upstream, [
        ("linux-64", "app-0.9-h0.conda", "md5"),
        ("linux-64", "elsewhere-1.0-h0.conda", "foreign"),
        ("linux-64", "gone-2.0-h1.conda", "foreign"),
    ])  # fmt: skip
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--lock", lock, "-s", "linux-64"))
    warnings = [
        line for line in result.stderr.splitlines() if "foreign" in line and "warning" in line
    ]
    assert len(warnings) == 1, result.stderr
    assert "2 locked package(s)" in warnings[0]
    foreign = result.json()["closure"]["foreign"]
    assert {f["filename"] for f in foreign} == {"elsewhere-1.0-h0.conda", "gone-2.0-h1.conda"}
    assert disk_packages(mirror_dir, "linux-64") == {"app-0.9-h0.conda"}


def test_unsolvable_spec_exits_6_and_writes_nothing(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path
) -> None:
    result = mirror(run_cli, up_server.url, mirror_dir, "--solve", "app >=5")
    ok(result, 6)
    assert "No candidates were found for app >=5" in result.stderr
    written = [p for p in mirror_dir.rglob("*") if p.is_file() and p.name != "lock"]
    assert written == []
    # an existing mirror is left as it was
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app"))
    before = {p: p.read_bytes() for p in mirror_dir.rglob("*") if p.is_file()}
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app", "--solve", "torchy >=9"), 6)
    assert {p: p.read_bytes() for p in mirror_dir.rglob("*") if p.is_file()} == before


def test_solve_without_a_platform_exits_2(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path
) -> None:
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "pyhelper", "-s", "noarch"), 2)


def test_noop_makes_no_solve(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path
) -> None:
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app"))
    again = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app"))
    doc = again.json()
    assert doc["unchanged"] is True
    assert doc["closure"] == {"no_op": True, "solves": []}
    assert "solve " not in again.stderr
    # a changed input is not a no-op
    changed = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app", "--solve", "tzdata"))
    assert len(changed.json()["closure"]["solves"]) == 2


def test_upstream_change_resolves_with_last_selection_locked(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path,
) -> None:  # fmt: skip
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "pyhelper", "--solve", "libz",
              "-s", "linux-64"))  # fmt: skip
    assert "libz-1.3-h0.conda" in disk_packages(mirror_dir, "linux-64")
    # upstream gains libz 1.4 in linux-64 only; noarch is unchanged but is solved against too
    doc = json.loads((upstream / "linux-64" / "repodata.json").read_text())
    rec = dict(doc["packages.conda"]["libz-1.3-h0.conda"], version="1.4")
    doc["packages.conda"]["libz-1.4-h0.conda"] = rec
    shutil.copy(
        upstream / "linux-64" / "libz-1.3-h0.conda", upstream / "linux-64" / "libz-1.4-h0.conda"
    )
    (upstream / "linux-64" / "repodata.json").write_text(json.dumps(doc))
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "pyhelper", "--solve", "libz",
                       "-s", "linux-64"))  # fmt: skip
    assert result.json()["closure"]["solves"][0]["records"] == 4
    assert "libz-1.4-h0.conda" not in disk_packages(mirror_dir, "linux-64")  # no churn
    assert disk_packages(mirror_dir, "noarch") == NOARCH


def test_keep_unselected_keeps_previous_lock_then_zero_prunes(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    lock = tmp_path / "pixi.lock"
    write_pixi_lock(upstream, up_server.url, lock, "linux-64=app <1")
    args = ("--lock", lock, "-s", "linux-64", "--max-delete", "100")
    ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX
    write_pixi_lock(upstream, up_server.url, lock, "linux-64=app >=1")  # the lockfile moves on
    result = ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX | APP10_LINUX
    assert set(records(mirror_dir, "linux-64")) == APP09_LINUX | APP10_LINUX
    assert result.json()["closure"]["selected"]["linux-64"]["kept"] == 2
    pruned = ok(mirror(run_cli, up_server.url, mirror_dir, *args, "--keep-unselected", "0"))
    assert disk_packages(mirror_dir, "linux-64") == APP10_LINUX
    assert set(pruned.json()["deleted"]) == {"app-0.9-h0.conda", "libz-1.2-h0.conda"}
    assert_consistent(mirror_dir)


def test_pruning_counts_toward_max_delete(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path
) -> None:
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app", "-s", "linux-64"))
    result = mirror(run_cli, up_server.url, mirror_dir, "--solve", "other-big", "-s", "linux-64",
                    "--keep-unselected", "0", "--max-delete", "50")  # fmt: skip
    assert result.returncode == 3, str(result)
    assert "--max-delete" in result.stderr
    assert disk_packages(mirror_dir, "linux-64") == APP10_LINUX


def test_virtual_packages_follow_the_target_platform_not_the_host(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path, tmp_path: Path
) -> None:
    result = ok(mirror(run_cli, up_server.url, tmp_path / "both", "--solve", "app"))
    solves = {s["platform"]: s for s in result.json()["closure"]["solves"]}
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "torchy", "--platform", "linux-64"))
    assert "__osx=13.0=0" in solves["osx-arm64"]["virtual_packages"]
    assert not any(
        v.startswith(("__cuda", "__glibc")) for v in solves["osx-arm64"]["virtual_packages"]
    )
    assert not any(v.startswith("__cuda") for v in solves["linux-64"]["virtual_packages"])
    assert "torchy-1.0-cpu_0.conda" in disk_packages(mirror_dir, "linux-64")
    assert "torchy-1.0-cuda_1.conda" not in disk_packages(mirror_dir, "linux-64")
    cuda = ok(mirror(run_cli, up_server.url, tmp_path / "cuda", "--solve", "torchy",
                     "--platform", "linux-64", "--virtual-package", "__cuda=12.4"))  # fmt: skip
    assert "__cuda=12.4=0" in cuda.json()["closure"]["solves"][0]["virtual_packages"]
    assert "torchy-1.0-cuda_1.conda" in disk_packages(tmp_path / "cuda", "linux-64")
    # __glibc below libc-shim's minimum: nothing that needs it solves
    ok(mirror(run_cli, up_server.url, tmp_path / "old", "--solve", "app", "--platform",
              "linux-64", "--virtual-package", "__glibc=2.12"), 6)  # fmt: skip


def test_exclude_removes_records_from_the_solver_input(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path
) -> None:
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app", "--platform", "linux-64",
              "--exclude", "libz >=1.3"))  # fmt: skip
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX


def test_exclude_newer_is_passed_to_the_solver(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path
) -> None:
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app", "--platform", "linux-64",
              "--exclude-newer", "2024-06-01T13:00:00"))  # fmt: skip
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX


def test_locked_package_is_never_dropped_by_a_filter(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    lock = explicit_file(tmp_path / "explicit.txt", up_server.url, upstream, [
        ("linux-64", "libz-1.2-h0.conda", "md5"),
    ])  # fmt: skip
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--lock", lock, "-s", "linux-64",
                       "--exclude", "libz"))  # fmt: skip
    assert result.json()["closure"]["excluded_but_locked"] == [
        {"subdir": "linux-64", "filename": "libz-1.2-h0.conda"}
    ]
    assert disk_packages(mirror_dir, "linux-64") == {"libz-1.2-h0.conda"}


def test_dry_run_prints_the_selection_and_writes_nothing(
    run_cli: Callable[..., CliResult], up_server: ChannelServer, mirror_dir: Path
) -> None:
    lines = ok(plain(run_cli, up_server.url, mirror_dir, "--solve", "app", "--dry-run")).stderr
    assert "linux-64: selected 3 (solve 3)" in lines
    assert "linux-64: 3 files to fetch (" in lines
    assert all(f"linux-64: would fetch {fn}" in lines for fn in APP10_LINUX)
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app", "--dry-run"))
    assert set(result.json()["subdirs"]["linux-64"]["added"]) == APP10_LINUX
    assert not mirror_dir.exists()


def test_config_keys(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,
    mirror_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    explicit_file(tmp_path / "explicit.txt", up_server.url, upstream, [
        ("linux-64", "libz-1.2-h0.conda", "md5"),
    ])  # fmt: skip
    config = tmp_path / "mirror.toml"
    config.write_text(
        f'[[mirror]]\nurl = "{up_server.url}"\ndir = "{mirror_dir}"\nsubdirs = ["linux-64"]\n'
        'lock = ["explicit.txt"]\nsolve = ["pyhelper"]\nplatforms = ["linux-64"]\n'
        'virtual_packages = ["__glibc=2.17"]\nwith_deps = false\nkeep_unselected = "7d"\n'
    )
    result = ok(run_cli("mirror", "--config", config, "--json", timeout=120))
    closure = result.json()["mirrors"][0]["closure"]
    assert "__glibc=2.17=0" in closure["solves"][0]["virtual_packages"]
    assert disk_packages(mirror_dir, "linux-64") == {"libz-1.2-h0.conda"}
    assert disk_packages(mirror_dir, "noarch") == NOARCH
