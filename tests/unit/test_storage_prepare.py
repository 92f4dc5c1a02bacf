"""LocalStorage.prepare/publish: temp files first, renames in order, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from condasync.errors import StorageError
from condasync.storage import STAGING, LocalStorage


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_prepare_writes_staged_temps_and_publish_renames_in_order(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / "noarch").mkdir()
    (tmp_path / "noarch" / "a.json").write_bytes(b"old a")
    prepared = storage.prepare([("noarch/a.json", b"new a"), ("noarch/b.json", b"b")], staged=True)
    # nothing visible yet; the temps sit in the staging folder the next run clears
    assert (tmp_path / "noarch" / "a.json").read_bytes() == b"old a"
    assert not (tmp_path / "noarch" / "b.json").exists()
    assert {p.parent.name for p in _temps(tmp_path)} == {STAGING}
    assert prepared.publish() == ["noarch/a.json", "noarch/b.json"]
    assert (tmp_path / "noarch" / "a.json").read_bytes() == b"new a"
    assert (tmp_path / "noarch" / "b.json").read_bytes() == b"b"
    assert _temps(tmp_path) == []


def test_discard_removes_temps_and_changes_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    prepared = storage.prepare([("noarch/a.json", b"a")], staged=True)
    assert len(_temps(tmp_path)) == 1
    prepared.discard()
    assert _temps(tmp_path) == []
    assert not (tmp_path / "noarch" / "a.json").exists()
    assert prepared.publish() == []  # nothing left to publish


def test_same_bytes_are_skipped_when_published(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.publish([("noarch/a.json", b"same")]) == ["noarch/a.json"]
    assert storage.publish([("noarch/a.json", b"same")]) == []  # already holds these bytes
    # prepared while the target holds these bytes, published after another write changed it:
    # whether the bytes are new is decided at publish time
    prepared = storage.prepare([("noarch/a.json", b"same")], staged=True)
    storage.publish([("noarch/a.json", b"interim")])
    assert prepared.publish() == ["noarch/a.json"]
    assert (tmp_path / "noarch" / "a.json").read_bytes() == b"same"


def test_prepare_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "mirror")
    with pytest.raises(StorageError):
        storage.prepare([("../escape.json", b"x")], staged=True)
    assert not (tmp_path / "escape.json").exists()
    assert _temps(tmp_path) == []


def test_staging_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    storage = LocalStorage(tmp_path / "mirror")
    (tmp_path / "mirror" / "noarch").mkdir()
    (tmp_path / "mirror" / "noarch" / STAGING).symlink_to(outside)
    staged = storage.stage("noarch/a-1-0.conda")
    staged.write(b"package bytes")
    with pytest.raises(StorageError):
        staged.commit()
    with pytest.raises(StorageError):
        storage.prepare([("noarch/repodata.json", b"{}")], staged=True)
    assert list(outside.iterdir()) == []
    storage.clear_staging("noarch")  # a run starts by removing the link
    assert not (tmp_path / "mirror" / "noarch" / STAGING).exists()
    assert list(outside.iterdir()) == []
    staged = storage.stage("noarch/a-1-0.conda")
    staged.write(b"package bytes")
    mtime_ns = staged.commit()
    target = tmp_path / "mirror" / "noarch" / "a-1-0.conda"
    assert target.read_bytes() == b"package bytes"
    assert target.stat().st_mtime_ns == mtime_ns
