"""index_tree over small trees built from the real channel's package files."""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from condasync.channel.repodata import decompress_zst
from condasync.engine.indexer import (
    IndexEvent,
    PackageError,
    hash_file,
    index_tree,
    map_in_order,
    read_index_json,
)
from condasync.engine.verify import verify_tree
from condasync.errors import LockedError, UsageError
from condasync.storage import LocalStorage

REAL_CHANNEL = Path(__file__).resolve().parents[1] / "data" / "real-channel"
SUBDIRS = ("linux-64", "noarch", "osx-64")
CONDA_PKG = ("noarch", "dependent-2.0-0.conda")
BZ2_PKG = ("noarch", "_r-mutex-1.0.1-anacondar_1.tar.bz2")


@pytest.fixture
def packages(tmp_path: Path) -> Path:
    """A copy of the real channel with its package files only (no repodata.json)."""
    root = tmp_path / "channel"
    shutil.copytree(REAL_CHANNEL, root)
    for subdir in SUBDIRS:
        (root / subdir / "repodata.json").unlink()
    return root


def shipped(subdir: str) -> dict[str, dict[str, Any]]:
    doc = json.loads((REAL_CHANNEL / subdir / "repodata.json").read_bytes())
    return {**doc["packages"], **doc["packages.conda"]}


def indexed(root: Path, subdir: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((root / subdir / "repodata.json").read_bytes())
    return doc


def records(root: Path, subdir: str) -> dict[str, dict[str, Any]]:
    doc = indexed(root, subdir)
    return {**doc["packages"], **doc["packages.conda"]}


def mtimes(root: Path) -> dict[str, int]:
    return {
        f"{s}/{n}": (root / s / n).stat().st_mtime_ns
        for s in SUBDIRS
        for n in ("repodata.json", "repodata.json.zst")
    }


def test_index_matches_shipped_records(packages: Path) -> None:
    report = index_tree(packages)
    for subdir in SUBDIRS:
        built, expected = records(packages, subdir), shipped(subdir)
        assert set(built) == set(expected)
        for filename, rec in built.items():
            for key in ("name", "version", "build", "md5", "size", "subdir"):
                assert rec[key] == expected[filename][key], (filename, key)
            if "sha256" in expected[filename]:
                assert rec["sha256"] == expected[filename]["sha256"]
            assert len(rec["sha256"]) == 64
        doc = indexed(packages, subdir)
        assert doc["info"] == {"subdir": subdir}
        assert doc["removed"] == [] and doc["repodata_version"] == 1
        zst = (packages / subdir / "repodata.json.zst").read_bytes()
        assert decompress_zst(zst) == (packages / subdir / "repodata.json").read_bytes()
        sub = report.subdirs[subdir]
        assert sub.packages == sub.read == len(expected)
        assert sub.reused == 0 and sub.skipped == {} and sub.written
        assert sub.added == sorted(expected)
    assert verify_tree(packages, deep=True).ok


def test_record_is_index_json_plus_hashes(packages: Path) -> None:
    index_tree(packages)
    path = packages.joinpath(*CONDA_PKG)
    rec = records(packages, "noarch")[CONDA_PKG[1]]
    data = path.read_bytes()
    assert rec == {
        **read_index_json(path),
        "md5": hashlib.md5(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def test_second_run_reuses_everything_and_writes_nothing(packages: Path) -> None:
    index_tree(packages)
    before = mtimes(packages)
    state_before = {p.name: p.read_bytes() for p in (packages / ".condasync").iterdir()}
    report = index_tree(packages)
    for subdir in SUBDIRS:
        sub = report.subdirs[subdir]
        assert (sub.read, sub.reused, sub.written) == (0, sub.packages, False)
        assert sub.added == sub.removed == []
    assert mtimes(packages) == before
    assert {p.name: p.read_bytes() for p in (packages / ".condasync").iterdir()} == state_before


def test_changes_are_picked_up(packages: Path) -> None:
    index_tree(packages)
    (packages / "noarch" / "dependent-1.0-0.conda").unlink()
    shutil.copy(REAL_CHANNEL / "linux-64" / "test-package-0.1-0.tar.bz2", packages / "osx-64")
    touched = packages.joinpath(*BZ2_PKG)
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    report = index_tree(packages)
    noarch, osx = report.subdirs["noarch"], report.subdirs["osx-64"]
    assert noarch.removed == ["dependent-1.0-0.conda"] and noarch.added == []
    assert (noarch.read, noarch.reused, noarch.packages) == (1, 7, 8)
    # A linux-64 package dropped into osx-64 is skipped, not indexed under the wrong subdir.
    assert osx.skipped == {
        "test-package-0.1-0.tar.bz2": "info/index.json says subdir 'linux-64', "
        "but the file is in 'osx-64'"
    }
    assert "test-package-0.1-0.tar.bz2" not in records(packages, "osx-64")
    assert report.subdirs["linux-64"].written is False


def write_junk(root: Path) -> None:
    (root / "noarch" / "junk-1.0-0.conda").write_bytes(b"not a zip")
    (root / "noarch" / "junk-1.0-0.tar.bz2").write_bytes(b"not a bz2")


def write_renamed(root: Path) -> None:
    shutil.copy(root.joinpath(*BZ2_PKG), root / "noarch" / "renamed-1.0-0.tar.bz2")


def write_bad_name(root: Path) -> None:
    shutil.copy(root.joinpath(*BZ2_PKG), root / "noarch" / "Bad Name-1.0-0.tar.bz2")


@pytest.mark.parametrize(
    ("make", "filename", "reason"),
    [
        (write_junk, "junk-1.0-0.conda", "unreadable archive"),
        (write_junk, "junk-1.0-0.tar.bz2", "unreadable archive"),
        (write_renamed, "renamed-1.0-0.tar.bz2", "filename does not match"),
        (write_bad_name, "Bad Name-1.0-0.tar.bz2", "invalid package name"),
    ],
)
def test_unusable_files_are_skipped_with_a_reason(
    packages: Path, make: Any, filename: str, reason: str
) -> None:
    make(packages)
    events: list[IndexEvent] = []
    report = index_tree(packages, on_event=events.append)
    noarch = report.subdirs["noarch"]
    assert reason in noarch.skipped[filename]
    assert noarch.packages == 9
    assert filename not in records(packages, "noarch")
    assert ("skipped", "noarch", filename) in {(e.kind, e.subdir, e.name) for e in events}
    assert verify_tree(packages).ok


def test_dot_files_and_non_packages_are_ignored(packages: Path) -> None:
    shutil.copy(packages.joinpath(*CONDA_PKG), packages / "noarch" / ".hidden-1.0-0.conda")
    (packages / "noarch" / "README.txt").write_text("hi")
    (packages / "noarch" / ".condasync-tmp").mkdir()
    (packages / "pkgs").mkdir()  # not a subdir name: not indexed
    report = index_tree(packages)
    assert report.subdirs["noarch"].skipped == {}
    assert report.subdirs["noarch"].packages == 9
    assert set(report.subdirs) == set(SUBDIRS)
    assert not (packages / "pkgs" / "repodata.json").exists()


@pytest.mark.parametrize(
    ("folders", "subdirs", "expected"),
    [
        ([], None, ["noarch"]),
        (["linux-64"], None, ["noarch", "linux-64"]),
        (["linux-64", "osx-64"], ["osx-64"], ["noarch", "osx-64"]),
        ([], ["win-64"], ["noarch", "win-64"]),
    ],
)
def test_noarch_is_always_written(
    tmp_path: Path, folders: list[str], subdirs: list[str] | None, expected: list[str]
) -> None:
    for folder in folders:
        (tmp_path / folder).mkdir()
    report = index_tree(tmp_path, subdirs=subdirs)
    assert list(report.subdirs) == expected
    for subdir in expected:
        doc = indexed(tmp_path, subdir)
        assert doc["packages"] == doc["packages.conda"] == {}
        assert doc["info"] == {"subdir": subdir}
    assert verify_tree(tmp_path).ok


def test_invalid_subdir_argument_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        index_tree(tmp_path, subdirs=["../etc"])
    with pytest.raises(UsageError):
        index_tree(tmp_path / "missing")


def test_locked_tree_is_refused(packages: Path) -> None:
    with LocalStorage(packages).lock(), pytest.raises(LockedError):
        index_tree(packages)
    assert not (packages / "noarch" / "repodata.json").exists()


def test_stale_companions_are_refreshed(packages: Path) -> None:
    index_tree(packages)
    json_path = packages / "noarch" / "repodata.json"
    json_mtime = json_path.stat().st_mtime_ns
    (packages / "noarch" / "repodata.json.zst").write_bytes(b"stale")
    (packages / "noarch" / "repodata.json.bz2").write_bytes(bz2.compress(b"{}"))
    report = index_tree(packages)
    assert report.subdirs["noarch"].written
    data = json_path.read_bytes()
    assert json_path.stat().st_mtime_ns == json_mtime
    assert decompress_zst((packages / "noarch" / "repodata.json.zst").read_bytes()) == data
    assert bz2.decompress((packages / "noarch" / "repodata.json.bz2").read_bytes()) == data
    assert not (packages / "linux-64" / "repodata.json.bz2").exists()  # never created
    assert verify_tree(packages).ok


@pytest.mark.parametrize("state", [b"not json", b"[]", b'{"generation": 99, "files": {}}',
                                   b'{"generation": 1, "files": {"x": 1}}'])  # fmt: skip
def test_broken_state_costs_only_a_reread(packages: Path, state: bytes) -> None:
    index_tree(packages)
    expected = {s: indexed(packages, s) for s in SUBDIRS}
    (packages / ".condasync" / "index-noarch.json").write_bytes(state)
    report = index_tree(packages)
    assert report.subdirs["noarch"].read == 9
    assert report.subdirs["linux-64"].read == 0
    assert {s: indexed(packages, s) for s in SUBDIRS} == expected


def test_report_shape(packages: Path) -> None:
    write_junk(packages)
    doc = index_tree(packages).to_dict()
    assert set(doc) == {"dir", "subdirs", "ignored"}
    noarch = doc["subdirs"]["noarch"]
    assert {"packages", "added", "removed", "reused", "skipped"} <= set(noarch)
    assert set(noarch["skipped"]) == {"junk-1.0-0.conda", "junk-1.0-0.tar.bz2"}
    json.dumps(doc)


def test_hash_file_and_map_in_order(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    size, digests = hash_file(path, ("md5", "sha256"))
    assert size == len(data)
    assert digests == {
        "md5": hashlib.md5(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    items = list(range(200))
    for workers in (1, 4):
        assert list(map_in_order(lambda i: i * i, items, workers)) == [(i, i * i) for i in items]


def test_read_index_json_rejects_non_packages(tmp_path: Path) -> None:
    path = tmp_path / "x-1.0-0.conda"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PackageError):
        read_index_json(path)
