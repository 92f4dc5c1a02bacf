"""The files state: a base map plus a delta of the runs since, and folding one into the other."""

from __future__ import annotations

from pathlib import Path

from condasync.engine.state import compact_files, load_files, save_files
from condasync.models import FileState
from condasync.storage import STATE_DIR, LocalStorage


def _fs(n: int) -> FileState:
    return FileState(n, "sha256:" + f"{n:064x}", n * 10)


def test_changes_go_to_a_delta_and_load_merges_them(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    state = load_files(storage, "noarch")
    assert state.files == {} and state.base_sha256 == ""
    save_files(storage, "noarch", state, {"a-1-0.conda": _fs(1), "b-1-0.conda": _fs(2)})
    assert not (tmp_path / STATE_DIR / "noarch.files.json").exists()  # no base written
    again = load_files(storage, "noarch")
    assert again.files == {"a-1-0.conda": _fs(1), "b-1-0.conda": _fs(2)}
    save_files(storage, "noarch", again, {"a-1-0.conda": None, "c-1-0.conda": _fs(3)})
    third = load_files(storage, "noarch")
    assert third.files == {"b-1-0.conda": _fs(2), "c-1-0.conda": _fs(3)}


def test_compaction_writes_a_base_and_an_empty_delta(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    files = {f"p{i}-1-0.conda": _fs(i) for i in range(1500)}
    save_files(storage, "noarch", load_files(storage, "noarch"), dict(files))
    state = load_files(storage, "noarch")
    assert state.needs_compaction()  # 1500 changes on no base
    compact_files(storage, "noarch", state)
    assert (tmp_path / STATE_DIR / "noarch.files.json").exists()
    after = load_files(storage, "noarch")
    assert after.files == files and after.delta == {} and not after.needs_compaction()
    # the next run's changes are a small delta on that base
    save_files(storage, "noarch", after, {"p0-1-0.conda": None})
    assert len(load_files(storage, "noarch").files) == 1499


def test_a_delta_for_another_base_is_ignored(tmp_path: Path) -> None:
    """A crash between writing a new base and its empty delta leaves the old delta, which
    names the old base: it must not be applied to the new one (which already holds it)."""
    storage = LocalStorage(tmp_path)
    save_files(storage, "noarch", load_files(storage, "noarch"), {"a-1-0.conda": _fs(1)})
    old_delta = (tmp_path / STATE_DIR / "noarch.files-delta.json").read_bytes()
    state = load_files(storage, "noarch")
    state.files["b-1-0.conda"] = _fs(2)
    compact_files(storage, "noarch", state)
    (tmp_path / STATE_DIR / "noarch.files-delta.json").write_bytes(old_delta)  # the crash
    assert load_files(storage, "noarch").files == {"a-1-0.conda": _fs(1), "b-1-0.conda": _fs(2)}


def test_unreadable_parts_cost_only_a_recheck(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / "noarch.files.json").write_bytes(b"{broken")
    (tmp_path / STATE_DIR / "noarch.files-delta.json").write_bytes(b"[]")
    state = load_files(storage, "noarch")
    assert state.files == {} and state.delta == {}


def test_entries_the_delta_replaces_live_until_release(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    state = load_files(storage, "noarch")
    save_files(storage, "noarch", state, {f"p{i}-1-0.conda": _fs(i) for i in range(1500)})
    compact_files(storage, "noarch", load_files(storage, "noarch"))
    based = load_files(storage, "noarch")
    save_files(storage, "noarch", based, {"p1-1-0.conda": None, "p2-1-0.conda": _fs(99)})
    state = load_files(storage, "noarch")
    assert "p1-1-0.conda" not in state.files and state.files["p2-1-0.conda"] == _fs(99)
    # the base's own entries stay referenced (not freed mid-map) until the map goes
    assert dict(state.shadow) == {"p1-1-0.conda": _fs(1), "p2-1-0.conda": _fs(2)}
    state.release()
    assert state.files == {} and state.shadow == []
