"""What the closure step keeps between runs under `DIR/.condasync/closure/`: each involved
subdir's whole upstream index (a solve needs it, even when that subdir did not change), and the
last selection (when each file was last selected, the last solve per platform)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec
import orjson

from condasync.engine.filters import DURATION_RE, UNITS
from condasync.engine.job import MirrorJob
from condasync.errors import UsageError
from condasync.models import MirrorReport
from condasync.storage import STATE_DIR, LocalStorage, Storage

CLOSURE_DIR = f"{STATE_DIR}/closure"
_SELECTION = f"{CLOSURE_DIR}/selection.json"


def index_path(subdir: str) -> str:
    return f"{CLOSURE_DIR}/{subdir}.repodata.json"


class SelectionState(msgspec.Struct):
    """The last run's selection: inputs hash, per subdir filename -> last selected (epoch ms),
    the last --solve result per platform, and when the first kept file expires."""

    inputs: str = ""
    subdirs: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    solved: dict[str, list[str]] = msgspec.field(default_factory=dict)
    expires_ms: int | None = None


def load_selection(storage: Storage) -> SelectionState:
    raw = storage.read(_SELECTION)
    if raw is None:
        return SelectionState()
    try:
        return msgspec.json.decode(raw, type=SelectionState)
    except msgspec.DecodeError:
        return SelectionState()  # unreadable: the next run re-selects from scratch


def save_selection(storage: Storage, state: SelectionState) -> None:
    storage.write_if_changed(_SELECTION, msgspec.json.encode(state))


def load_index(storage: Storage, subdir: str) -> bytes | None:
    return storage.read(index_path(subdir))


def local_index(storage: Storage, subdir: str) -> str | None:
    """The saved index as a local file the solver can read, when the target is local."""
    if isinstance(storage, LocalStorage):
        path = storage.path(index_path(subdir))
        return str(path) if path.exists() else None
    return None


def local_cache_path(storage: Storage, subdir: str) -> Path | None:
    """Where a local target keeps a subdir's upstream index (its folder made)."""
    if not isinstance(storage, LocalStorage):
        return None
    path = storage.path(index_path(subdir))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_index(storage: Storage, subdir: str, body: bytes) -> None:
    storage.write_if_changed(index_path(subdir), body)


def keep_ms(text: str) -> int:
    """`30d`, `12h`, `0` -> milliseconds."""
    text = text.strip()
    if text in ("0", "0d", "0s"):
        return 0
    match = DURATION_RE.match(text)
    if not match:
        raise UsageError(
            f"invalid --keep-unselected {text!r}: use a duration such as 30d, 12h or 0"
        )
    from datetime import timedelta

    return int(timedelta(**{UNITS[match.group(2)]: int(match.group(1))}).total_seconds() * 1000)


def inputs_hash(job: MirrorJob) -> str:
    """Lockfile bytes, specs, platforms, virtual packages and options: a change means
    re-selecting (and fetching every index unconditionally)."""
    c = job.closure
    locks = []
    for path in c.locks:
        try:
            locks.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        except OSError:
            locks.append(f"unreadable:{path}")
    doc = {
        "locks": locks,
        "solve": list(c.solve),
        "platforms": list(c.platforms),
        "virtual_packages": list(c.virtual_packages),
        "with_deps": c.with_deps,
        "keep_unselected": c.keep_unselected,
        "filters": [job.filters.include, job.filters.exclude, job.filters.latest],
        "exclude_newer": job.filters.exclude_newer,
        "subdirs": list(job.subdirs),
    }
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()


def save_closure_state(storage: Storage, result: Any, report: MirrorReport) -> None:
    """Save the selection once the run is over. A subdir that was not synced (an upstream
    error, --max-delete) keeps its last selection, and the next run selects again."""
    state: SelectionState = result.state
    if result.mismatch:  # select again next run: a lock hash mismatch must not turn into a no-op
        state.inputs = ""
    for sub in report.subdirs:
        if sub.error is not None:
            before = result.previous.subdirs.get(sub.subdir)
            if before is None:
                state.subdirs.pop(sub.subdir, None)
            else:
                state.subdirs[sub.subdir] = before
            state.inputs = ""
    save_selection(storage, state)
