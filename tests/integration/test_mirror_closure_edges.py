"""Issue 14, points the main closure tests leave open: a --with-deps record whose dependencies
do not solve is reported under `unsolvable` and is not fatal; noarch is the union over the
platforms' solves; --keep-unselected keeps for its duration, then prunes; --dry-run on an
existing mirror writes nothing; --exclude-newer lets the solver use records without a timestamp;
unchanged subdirs' indexes are kept under DIR/.condasync/closure/, not fetched again."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import CliResult, assert_consistent, disk_packages, index_records, ok
from tests.integration.test_mirror_closure import (  # noqa: F401
    APP09_LINUX,
    APP10_LINUX,
    NOARCH,
    built_channel,
    mirror,
    plain,
    records,
    up_server,
    upstream,
    write_pixi_lock,
)
from tests.servers import ChannelServer
from tests.shard_support import shard_problems, shard_records


def assert_shards_match(root: Path) -> None:
    """The shards hold exactly the published repodata.json's records (closure selection and
    kept records included)."""
    for subdir in ("linux-64", "osx-arm64", "noarch"):
        if (root / subdir / "repodata.json").exists():
            assert shard_records(root, subdir) == index_records(root, subdir), subdir
    assert not shard_problems(root)


def patch_depends(root: Path, subdir: str, filename: str, depends: list[str]) -> None:
    """Upstream hotfixes a record's depends (the package file is unchanged)."""
    path = root / subdir / "repodata.json"
    doc = json.loads(path.read_text())
    doc["packages.conda"][filename]["depends"] = depends
    path.write_text(json.dumps(doc))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_with_deps_record_that_does_not_solve_is_reported_not_fatal(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path,
) -> None:  # fmt: skip
    patch_depends(upstream, "linux-64", "other-big-1.0-h0.conda", ["does-not-exist >=1"])
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--include", "other-big",
                       "--include", "app 0.9", "--with-deps", "-s", "linux-64"))  # fmt: skip
    closure = result.json()["closure"]
    assert [(u["subdir"], u["filename"]) for u in closure["unsolvable"]] == [
        ("linux-64", "other-big-1.0-h0.conda")
    ]
    assert "does-not-exist" in closure["unsolvable"][0]["error"]
    assert "other-big-1.0-h0.conda" in result.stderr and "warning" in result.stderr
    # the rest of the selection still gets its dependencies
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX | {"other-big-1.0-h0.conda"}
    assert disk_packages(mirror_dir, "noarch") == NOARCH
    assert_consistent(mirror_dir)


def test_noarch_is_the_union_over_the_platforms(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path,
) -> None:  # fmt: skip
    # osx-arm64's app needs a noarch package that linux-64's does not, and the reverse
    patch_depends(upstream, "osx-arm64", "app-1.0-h0.conda", ["libz >=1.3", "unused-noarch"])
    args = ("--solve", "app", "--keep-unselected", "0", "--max-delete", "100")
    result = ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    union = NOARCH | {"unused-noarch-1.0-0.conda"}
    assert disk_packages(mirror_dir, "noarch") == union
    assert set(records(mirror_dir, "noarch")) == union
    assert result.json()["closure"]["selected"]["noarch"]["total"] == 3
    # upstream changes in linux-64 only: its re-solve prunes nothing osx-arm64 still needs
    patch_depends(upstream, "linux-64", "libz-1.3-h0.conda", ["libc-shim >=1"])
    again = ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    assert again.json()["unchanged"] is False
    assert disk_packages(mirror_dir, "noarch") == union
    assert set(records(mirror_dir, "noarch")) == union
    assert_consistent(mirror_dir)
    assert_shards_match(mirror_dir)


def test_keep_unselected_keeps_for_its_duration_then_prunes(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    lock = tmp_path / "pixi.lock"
    write_pixi_lock(upstream, up_server.url, lock, "linux-64=app <1")
    args = ("--lock", lock, "-s", "linux-64", "--max-delete", "100", "--keep-unselected", "1m")
    ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    write_pixi_lock(upstream, up_server.url, lock, "linux-64=app >=1")
    ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX | APP10_LINUX
    assert_shards_match(mirror_dir)
    # two minutes later (the saved selection aged): the same inputs, upstream unchanged
    path = mirror_dir / ".condasync" / "closure" / "selection.json"
    state: dict[str, Any] = json.loads(path.read_text())
    for files in state["subdirs"].values():
        for fn in files:
            files[fn] -= 120_000
    state["expires_ms"] -= 120_000
    path.write_text(json.dumps(state))
    pruned = ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    assert set(pruned.json()["deleted"]) == {"app-0.9-h0.conda", "libz-1.2-h0.conda"}
    assert disk_packages(mirror_dir, "linux-64") == APP10_LINUX
    assert set(records(mirror_dir, "linux-64")) == APP10_LINUX
    assert_consistent(mirror_dir)
    assert_shards_match(mirror_dir)


def test_dry_run_on_an_existing_mirror_writes_nothing(
    run_cli: Callable[..., CliResult],
    up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path,
) -> None:
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app <1", "--platform", "linux-64"))
    before = snapshot(mirror_dir)
    changed = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app >=1", "--dry-run",
                        "--keep-unselected", "0", "--max-delete", "100"))  # fmt: skip
    linux = changed.json()["subdirs"]["linux-64"]
    assert set(linux["added"]) == {"app-1.0-h0.conda", "libz-1.3-h0.conda"}
    assert set(linux["deleted"]) == {"app-0.9-h0.conda", "libz-1.2-h0.conda"}
    assert snapshot(mirror_dir) == before
    lines = ok(plain(run_cli, up_server.url, mirror_dir, "--solve", "app >=1", "--dry-run",
                     "--keep-unselected", "0", "--max-delete", "100")).stderr  # fmt: skip
    assert "linux-64: 2 files to fetch (" in lines
    assert "linux-64: would fetch app-1.0-h0.conda" in lines
    assert "linux-64: would delete app-0.9-h0.conda" in lines
    assert snapshot(mirror_dir) == before
    ok(mirror(run_cli, up_server.url, mirror_dir, "--include", "torchy", "--with-deps",
              "--dry-run"))  # fmt: skip
    assert snapshot(mirror_dir) == before
    # and the real run afterwards still sees the change (the dry runs saved nothing)
    real = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app >=1", "--keep-unselected",
                     "0", "--max-delete", "100"))  # fmt: skip
    assert set(real.json()["subdirs"]["linux-64"]["added"]) == set(linux["added"])
    assert disk_packages(mirror_dir, "linux-64") == APP10_LINUX


def test_exclude_newer_allows_records_without_a_timestamp(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path,
) -> None:  # fmt: skip
    path = upstream / "linux-64" / "repodata.json"
    doc = json.loads(path.read_text())
    del doc["packages.conda"]["libc-shim-1.0-h0.conda"]["timestamp"]
    path.write_text(json.dumps(doc))
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app", "--platform",
                       "linux-64", "--exclude-newer", "2024-06-01T13:00:00"))  # fmt: skip
    assert result.json()["closure"]["solves"][0]["records"] == 5
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX


def test_unchanged_subdirs_indexes_are_kept_not_fetched_again(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path,
) -> None:  # fmt: skip
    ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app"))
    kept = mirror_dir / ".condasync" / "closure"
    assert {p.name for p in kept.glob("*.repodata.json")} == {
        f"{s}.repodata.json" for s in ("linux-64", "osx-arm64", "noarch")
    }
    up_server.clear_log()
    patch_depends(upstream, "linux-64", "libz-1.3-h0.conda", ["libc-shim >=1"])
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app"))
    # every platform was solved again, but only linux-64's index was downloaded again
    assert [s["records"] for s in result.json()["closure"]["solves"]] == [5, 5]
    gets = [r for r in up_server.log() if r.method == "GET" and "repodata" in r.path]
    bodies = {r.path for r in gets if r.status == 200}
    assert bodies == {"/linux-64/repodata.json"}, bodies


def test_locked_packages_of_subdirs_left_out_by_subdir_are_not_foreign(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    """Upstream does list osx-arm64's packages; `-s linux-64` only leaves them out."""
    lock = write_pixi_lock(
        upstream, up_server.url, tmp_path / "pixi.lock", "linux-64=app <1", "osx-arm64=app"
    )
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--lock", lock, "-s", "linux-64"))
    closure = result.json()["closure"]
    assert closure["foreign"] == []
    assert closure["inputs"][0]["foreign"] == 0 and closure["inputs"][0]["not_mirrored"] == 3
    lines = ok(plain(run_cli, up_server.url, tmp_path / "plain", "--lock", lock, "-s", "linux-64"))
    assert "foreign):" not in lines.stderr
    assert "1 skipped (PyPI/source), 0 foreign, 3 in subdirs not mirrored" in lines.stderr
    assert disk_packages(mirror_dir, "linux-64") == APP09_LINUX
    assert not (mirror_dir / "osx-arm64").exists()


def test_with_deps_solves_a_noarch_record_on_each_mirrored_platform(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path,
) -> None:  # fmt: skip
    patch_depends(upstream, "noarch", "pyhelper-1.0-pyh0.conda", ["tzdata", "libz >=1.3"])
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--include", "pyhelper",
                       "--with-deps"))  # fmt: skip
    assert result.json()["closure"]["unsolvable"] == []
    assert disk_packages(mirror_dir, "noarch") == NOARCH
    for platform in ("linux-64", "osx-arm64"):
        assert disk_packages(mirror_dir, platform) == {
            "libz-1.3-h0.conda", "libc-shim-1.0-h0.conda"
        }, platform  # fmt: skip
    assert_shards_match(mirror_dir)


def test_keep_unselected_keeps_what_drops_out_when_upstream_moves_on(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path,
) -> None:  # fmt: skip
    args = ("--include", "app", "--latest", "1", "--with-deps", "-s", "linux-64")
    ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    assert disk_packages(mirror_dir, "linux-64") == APP10_LINUX
    path = upstream / "linux-64" / "repodata.json"
    doc = json.loads(path.read_text())
    doc["packages.conda"]["app-1.1-h0.conda"] = dict(
        doc["packages.conda"]["app-1.0-h0.conda"], version="1.1"
    )
    path.write_text(json.dumps(doc))
    shutil.copy(
        upstream / "linux-64" / "app-1.0-h0.conda", upstream / "linux-64" / "app-1.1-h0.conda"
    )
    result = ok(mirror(run_cli, up_server.url, mirror_dir, *args))
    assert result.json()["closure"]["selected"]["linux-64"]["kept"] == 1
    assert set(records(mirror_dir, "linux-64")) == APP10_LINUX | {"app-1.1-h0.conda"}
    pruned = ok(mirror(run_cli, up_server.url, mirror_dir, *args, "--keep-unselected", "0"))
    assert pruned.json()["deleted"] == ["app-1.0-h0.conda"]
    assert_consistent(mirror_dir)
    assert_shards_match(mirror_dir)


def test_published_records_are_upstreams_bytes_and_the_json_report_is_complete(
    run_cli: Callable[..., CliResult], upstream: Path, up_server: ChannelServer,  # noqa: F811
    mirror_dir: Path,
) -> None:  # fmt: skip
    path = upstream / "linux-64" / "repodata.json"
    doc = json.loads(path.read_text())
    raw = json.dumps(doc, indent=3)  # upstream's own layout, not ours
    path.write_text(raw)
    result = ok(mirror(run_cli, up_server.url, mirror_dir, "--solve", "app <1", "--platform",
                       "linux-64"))  # fmt: skip
    published = (mirror_dir / "linux-64" / "repodata.json").read_text()
    assert set(records(mirror_dir, "linux-64")) == APP09_LINUX
    for fn in APP09_LINUX:  # each record's text, byte for byte as upstream wrote it
        text = json.dumps(doc["packages.conda"][fn], indent=3).replace("\n", "\n      ")
        assert f'"{fn}": {text}' in raw and text in published, fn
    closure = result.json()["closure"]
    assert {"solves", "selected", "foreign", "lock_mismatch", "excluded_but_locked",
            "unsolvable", "skipped"} <= set(closure)  # fmt: skip
    (solve,) = closure["solves"]
    assert set(solve) >= {"platform", "specs", "virtual_packages", "records", "seconds"}
    assert isinstance(solve["seconds"], (int, float)) and solve["records"] == 5
    assert closure["selected"]["linux-64"] == {
        "total": 3, "filters": 0, "lock": 0, "solve": 3, "with_deps": 0, "kept": 0
    }  # fmt: skip
