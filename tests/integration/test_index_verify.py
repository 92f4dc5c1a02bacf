"""`index` over the real channel's package files, checked by `verify` and installed by py-rattler
from the indexed tree over file:// and over HTTP."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from condasync.engine.indexer import index_tree
from condasync.engine.verify import verify_tree
from tests.conftest import REAL_CHANNEL, REAL_SUBDIRS, CliResult, RattlerResult
from tests.servers import ChannelServer

INSTALLED = {"dependent-2.0-0", "dependency-2.0-0", "_r-mutex-1.0.1-anacondar_1"}


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    """The real channel's package files, with the shipped indexes removed, then indexed."""
    root = tmp_path / "own-channel"
    shutil.copytree(REAL_CHANNEL, root)
    for subdir in REAL_SUBDIRS:
        (root / subdir / "repodata.json").unlink()
    report = index_tree(root)
    assert all(not s.skipped for s in report.subdirs.values()), report.to_dict()
    return root


def load_records(root: Path, subdir: str) -> dict[str, dict[str, Any]]:
    doc = json.loads((root / subdir / "repodata.json").read_bytes())
    return {**doc["packages"], **doc["packages.conda"]}


def test_generated_records_match_shipped(indexed: Path) -> None:
    for subdir in REAL_SUBDIRS:
        built, shipped = load_records(indexed, subdir), load_records(REAL_CHANNEL, subdir)
        assert set(built) == set(shipped)
        for filename, expected in shipped.items():
            got = built[filename]
            keys = ["md5", "size", "name", "version", "build", "build_number", "depends"]
            keys += ["sha256"] if "sha256" in expected else []  # conda-index-pkg-a has none
            assert {k: got[k] for k in keys} == {k: expected[k] for k in keys}, filename
    report = verify_tree(indexed, deep=True)
    assert report.ok, report.problems
    assert report.files_checked == 19


def test_second_index_reads_nothing_and_keeps_mtimes(indexed: Path) -> None:
    files = [indexed / s / n for s in REAL_SUBDIRS for n in ("repodata.json", "repodata.json.zst")]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    report = index_tree(indexed)
    for subdir, sub in report.subdirs.items():
        assert sub.read == 0, subdir
        assert sub.reused == sub.packages == len(load_records(REAL_CHANNEL, subdir))
        assert not sub.written
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before


@pytest.mark.slow
def test_rattler_installs_from_indexed_tree_over_file_url(
    indexed: Path, rattler_install: Callable[..., RattlerResult], tmp_path: Path
) -> None:
    got = rattler_install(indexed.as_uri(), ["dependent", "_r-mutex"], tmp_path)
    assert got.returncode == 0, got.stderr[-4000:]
    assert got.installed() == INSTALLED
    for name in INSTALLED:
        assert (got.prefix / "conda-meta" / f"{name}.json").is_file()


@pytest.mark.slow
def test_rattler_installs_from_indexed_tree_over_http(
    indexed: Path,
    serve: Callable[..., ChannelServer],
    rattler_install: Callable[..., RattlerResult],
    tmp_path: Path,
) -> None:
    server = serve(indexed)
    got = rattler_install(server.url, ["dependent", "_r-mutex"], tmp_path)
    assert got.returncode == 0, got.stderr[-4000:]
    assert got.installed() == INSTALLED
    assert server.requests_for("/noarch/repodata_shards.msgpack.zst")  # CEP-16 shards


def test_cli_index_then_verify(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    root = tmp_path / "cli-channel"
    shutil.copytree(REAL_CHANNEL, root)
    for subdir in REAL_SUBDIRS:
        (root / subdir / "repodata.json").unlink()
    result = run_cli("index", root, "--json")
    assert result.returncode == 0, result
    assert result.json()["subdirs"]["noarch"]["packages"] == 9
    result = run_cli("verify", root, "--deep", "--json")
    assert result.returncode == 0, result
    assert result.json()["ok"] is True
    (root / "noarch" / "dependent-2.0-0.conda").write_bytes(b"broken")
    result = run_cli("verify", root, "--json")
    assert result.returncode == 4, result
    assert [(p["filename"], p["kind"]) for p in result.json()["problems"]] == [
        ("dependent-2.0-0.conda", "size")
    ]
