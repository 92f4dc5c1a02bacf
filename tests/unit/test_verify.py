"""verify_tree against copies of the real channel, each damaged in one way."""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from condasync.engine.verify import KINDS, VerifyReport, verify_tree
from condasync.errors import UsageError

REAL_CHANNEL = Path(__file__).resolve().parents[1] / "data" / "real-channel"
SHA_PKG = ("noarch", "dependent-2.0-0.conda")
MD5_PKG = ("noarch", "conda-index-pkg-a-1.0-pyhed9eced_1.tar.bz2")  # its record has no sha256
BZ2_PKG = ("linux-64", "other-package-0.2-0.tar.bz2")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "channel"
    shutil.copytree(REAL_CHANNEL, root)
    return root


def load(root: Path, subdir: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((root / subdir / "repodata.json").read_bytes())
    return doc


def save(root: Path, subdir: str, doc: dict[str, Any]) -> None:
    (root / subdir / "repodata.json").write_bytes(
        json.dumps(doc, indent=2, sort_keys=True).encode()
    )


def record(doc: dict[str, Any], filename: str) -> dict[str, Any]:
    section = "packages.conda" if filename.endswith(".conda") else "packages"
    rec: dict[str, Any] = doc[section][filename]
    return rec


def edit_record(root: Path, subdir: str, filename: str, /, **fields: Any) -> None:
    doc = load(root, subdir)
    rec = record(doc, filename)
    for key, value in fields.items():
        if value is ...:
            rec.pop(key, None)
        else:
            rec[key] = value
    save(root, subdir, doc)


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            st = path.stat()
            out[str(path.relative_to(root))] = (path.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def kinds(report: VerifyReport) -> list[tuple[str, str | None, str]]:
    return [(p.subdir, p.filename, p.kind) for p in report.problems]


# --- damage, one kind at a time ----------------------------------------------------------------


def delete_file(root: Path) -> None:
    (root.joinpath(*SHA_PKG)).unlink()


def truncate_file(root: Path) -> None:
    path = root.joinpath(*BZ2_PKG)
    path.write_bytes(path.read_bytes()[:-10])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def write_stale_zst(root: Path) -> None:
    data = (root / "noarch" / "repodata.json").read_bytes()
    stale = data.replace(b'"version": "2.0"', b'"version": "2.1"', 1)
    assert stale != data
    (root / "noarch" / "repodata.json.zst").write_bytes(zstandard.compress(stale))


def write_garbage_zst(root: Path) -> None:
    (root / "noarch" / "repodata.json.zst").write_bytes(b"not zstd at all")


def write_longer_zst(root: Path) -> None:
    data = (root / "noarch" / "repodata.json").read_bytes()
    (root / "noarch" / "repodata.json.zst").write_bytes(zstandard.compress(data + b"\n"))


def write_stale_bz2(root: Path) -> None:
    data = (root / "osx-64" / "repodata.json").read_bytes()
    (root / "osx-64" / "repodata.json.bz2").write_bytes(bz2.compress(data[:-1]))


def break_json(root: Path) -> None:
    (root / "linux-64" / "repodata.json").write_bytes(b'{"packages": {')


def wrong_info_subdir(root: Path) -> None:
    doc = load(root, "osx-64")
    doc["info"]["subdir"] = "linux-64"
    save(root, "osx-64", doc)


def add_unsafe_key(root: Path) -> None:
    doc = load(root, "noarch")
    victim = dict(record(doc, SHA_PKG[1]))
    doc["packages.conda"]["../linux-64/zlib-1.2.11-h7b6447c_3.conda"] = victim
    save(root, "noarch", doc)


def drop_hashes(root: Path) -> None:
    edit_record(root, *SHA_PKG, sha256=..., md5=...)


def remove_noarch(root: Path) -> None:
    shutil.rmtree(root / "noarch")


DAMAGE: list[tuple[str, Callable[[Path], None], list[tuple[str, str | None, str]]]] = [
    ("delete", delete_file, [(*SHA_PKG, "missing")]),
    ("truncate", truncate_file, [(*BZ2_PKG, "size")]),
    ("flip-sha256", lambda r: flip_byte(r.joinpath(*SHA_PKG)), [(*SHA_PKG, "hash")]),
    ("flip-md5-only", lambda r: flip_byte(r.joinpath(*MD5_PKG)), [(*MD5_PKG, "hash")]),
    ("stale-zst", write_stale_zst, [("noarch", "repodata.json.zst", "zst-mismatch")]),
    ("garbage-zst", write_garbage_zst, [("noarch", "repodata.json.zst", "zst-mismatch")]),
    ("longer-zst", write_longer_zst, [("noarch", "repodata.json.zst", "zst-mismatch")]),
    ("stale-bz2", write_stale_bz2, [("osx-64", "repodata.json.bz2", "bz2-mismatch")]),
    ("invalid-json", break_json, [("linux-64", "repodata.json", "invalid-index")]),
    ("info-subdir", wrong_info_subdir, [("osx-64", "repodata.json", "invalid-index")]),
    (
        "unsafe-key",
        add_unsafe_key,
        [("noarch", "../linux-64/zlib-1.2.11-h7b6447c_3.conda", "unsafe-key")],
    ),
    ("no-hashes", drop_hashes, [(*SHA_PKG, "invalid-record")]),
    ("no-noarch", remove_noarch, [("noarch", "repodata.json", "missing-index")]),
]


def test_clean_copy_is_ok(tree: Path) -> None:
    for deep in (False, True):
        report = verify_tree(tree, deep=deep)
        assert report.ok, report.problems
        assert report.subdirs_checked == ["linux-64", "noarch", "osx-64"]
        assert report.files_checked == 19
        assert report.orphans == []


@pytest.mark.parametrize(("damage", "expected"), [(d[1], d[2]) for d in DAMAGE],
                         ids=[d[0] for d in DAMAGE])  # fmt: skip
def test_damage_is_reported(
    tree: Path, damage: Callable[[Path], None], expected: list[tuple[str, str | None, str]]
) -> None:
    damage(tree)
    heard: list[str] = []
    report = verify_tree(tree, on_problem=heard.append)
    assert kinds(report) == expected
    assert not report.ok
    assert len(heard) == len(report.problems)
    assert all(p.kind in KINDS for p in report.problems)


def test_md5_is_used_only_without_sha256(tree: Path) -> None:
    flip_byte(tree.joinpath(*MD5_PKG))
    flip_byte(tree.joinpath(*SHA_PKG))
    details = {p.filename: p.detail for p in verify_tree(tree).problems}
    assert details[MD5_PKG[1]].startswith("md5 ")
    assert details[SHA_PKG[1]].startswith("sha256 ")


def test_unsafe_key_is_never_opened(tree: Path) -> None:
    # The key points at a real file with the victim's exact size and hash: still only unsafe-key.
    add_unsafe_key(tree)
    report = verify_tree(tree, deep=True)
    assert [p.kind for p in report.problems] == ["unsafe-key"]
    assert report.files_checked == 19
    assert "'../linux-64/" in str(report.problems[0])


def test_deep_catches_record_that_disagrees_with_package(tree: Path) -> None:
    edit_record(tree, *SHA_PKG, version="2.1")  # hashes still match the file
    assert verify_tree(tree).ok
    report = verify_tree(tree, deep=True)
    assert kinds(report) == [(*SHA_PKG, "metadata")]
    assert "version: record '2.1', package '2.0'" in report.problems[0].detail


def test_deep_compares_against_folder_when_record_has_no_subdir(tree: Path) -> None:
    edit_record(tree, *SHA_PKG, subdir=...)
    assert verify_tree(tree, deep=True).ok
    # The same package, listed without a subdir, in a folder it was not built for:
    shutil.copy(tree.joinpath(*SHA_PKG), tree / "linux-64" / SHA_PKG[1])
    noarch = record(load(tree, "noarch"), SHA_PKG[1])
    linux = load(tree, "linux-64")
    linux["packages.conda"][SHA_PKG[1]] = noarch
    save(tree, "linux-64", linux)
    report = verify_tree(tree, deep=True)
    assert kinds(report) == [("linux-64", SHA_PKG[1], "metadata")]
    assert "subdir: record 'linux-64', package 'noarch'" in report.problems[0].detail


def test_deep_reports_unreadable_archive(tree: Path) -> None:
    junk = b"this is not a conda package" * 50
    (tree / "noarch" / "junk-1.0-0.conda").write_bytes(junk)
    doc = load(tree, "noarch")
    doc["packages.conda"]["junk-1.0-0.conda"] = {
        "name": "junk", "version": "1.0", "build": "0", "build_number": 0, "depends": [],
        "size": len(junk), "md5": hashlib.md5(junk).hexdigest(),
        "sha256": hashlib.sha256(junk).hexdigest(), "subdir": "noarch",
    }  # fmt: skip
    save(tree, "noarch", doc)
    assert verify_tree(tree).ok
    assert kinds(verify_tree(tree, deep=True)) == [("noarch", "junk-1.0-0.conda", "corrupt")]


def test_orphans_are_reported_but_not_problems(tree: Path) -> None:
    shutil.copy(tree.joinpath(*SHA_PKG), tree / "noarch" / "extra-1.0-0.conda")
    shutil.copy(tree.joinpath(*BZ2_PKG), tree / "linux-64" / "extra-1.0-0.tar.bz2")
    # Not orphans: dot-files, staging folders, state, and files that are not packages.
    (tree / "noarch" / ".extra-2.0-0.conda.1234.tmp").write_bytes(b"partial")
    (tree / "noarch" / ".condasync-tmp").mkdir()
    (tree / "noarch" / ".condasync-tmp" / "x-1.0-0.conda.abc").write_bytes(b"partial")
    (tree / ".condasync").mkdir()
    (tree / ".condasync" / "lock").write_bytes(b"")
    (tree / "noarch" / "notes.txt").write_bytes(b"hello")
    # A subdir folder with packages but no index: its packages are orphans too.
    (tree / "win-64").mkdir()
    shutil.copy(tree.joinpath(*BZ2_PKG), tree / "win-64" / "other-package-0.2-0.tar.bz2")
    report = verify_tree(tree)
    assert report.ok
    assert report.orphans == [
        "linux-64/extra-1.0-0.tar.bz2",
        "noarch/extra-1.0-0.conda",
        "win-64/other-package-0.2-0.tar.bz2",
    ]
    assert report.subdirs_checked == ["linux-64", "noarch", "osx-64"]


def test_verify_modifies_nothing(tree: Path) -> None:
    flip_byte(tree.joinpath(*SHA_PKG))
    write_stale_zst(tree)
    write_stale_bz2(tree)
    truncate_file(tree)
    shutil.copy(tree.joinpath(*MD5_PKG), tree / "noarch" / "orphan-1.0-0.tar.bz2")
    before = snapshot(tree)
    for deep in (False, True):
        assert not verify_tree(tree, deep=deep).ok
    assert snapshot(tree) == before
    assert not (tree / ".condasync").exists()


def test_report_shape(tree: Path) -> None:
    delete_file(tree)
    doc = verify_tree(tree).to_dict()
    assert set(doc) == {
        "dir",
        "subdirs_checked",
        "files_checked",
        "problems",
        "orphans",
        "warnings",
        "ok",
    }
    assert doc["ok"] is False
    assert doc["problems"] == [
        {
            "subdir": "noarch",
            "filename": SHA_PKG[1],
            "kind": "missing",
            "detail": "indexed file does not exist",
        }
    ]
    json.dumps(doc)


def test_workers_do_not_change_the_result(tree: Path) -> None:
    flip_byte(tree.joinpath(*SHA_PKG))
    flip_byte(tree.joinpath(*BZ2_PKG))
    serial = verify_tree(tree, deep=True, workers=1).to_dict()
    assert verify_tree(tree, deep=True, workers=4).to_dict() == serial
    assert len(serial["problems"]) == 2


@pytest.mark.parametrize(
    ("setup", "ok", "problem_kinds"),
    [
        ("empty", False, ["missing-index"]),  # nothing indexed: not a channel
        ("empty-noarch", True, []),
    ],
)
def test_minimal_trees(tmp_path: Path, setup: str, ok: bool, problem_kinds: list[str]) -> None:
    if setup == "empty-noarch":
        (tmp_path / "noarch").mkdir()
        (tmp_path / "noarch" / "repodata.json").write_bytes(b'{"info": {"subdir": "noarch"}}')
    report = verify_tree(tmp_path)
    assert report.ok is ok
    assert [p.kind for p in report.problems] == problem_kinds


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        verify_tree(tmp_path / "nope")
