"""What the last sync verified, per subdir (the run lock lives with the storage backends).

State is three files per subdir under `DIR/.condasync/`: a small `<subdir>.meta.json` (upstream
validators, what we published, a hash of the options) read on every run; a large
`<subdir>.files.json` (size, digest and mtime of each file) read only when there is work; and
`<subdir>.files-delta.json`, what the runs since that base changed (a run that touches 1% of
600k files writes a small delta, not the whole map). The delta names the sha256 of the base
it applies to; a delta for another base is ignored (the base it belonged to was rewritten
with it folded in).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field

import msgspec
import orjson

from condasync.channel.repodata import gc_paused
from condasync.models import FileState
from condasync.storage import STATE_DIR, Storage

GENERATION = 2  # bump when the on-disk state format changes: forces a full re-plan (2: delta)


@dataclass
class SubdirMeta:
    generation: int = GENERATION
    source: str = ""  # the upstream URL the validators belong to
    etag: str | None = None
    last_modified: str | None = None
    upstream_sha256: str | None = None
    options: str = ""  # hash of the options that shape the published index
    published: dict[str, list[int]] = field(default_factory=dict)  # file -> [size, mtime_ns]
    dir_mtime_ns: int = 0  # the subdir folder after our last write: a change means files moved
    complete: bool = True  # False when packages failed: the next run must retry, not no-op
    packages: int | None = None  # records published (None: state of an older version)


def _meta_path(subdir: str) -> str:
    return f"{STATE_DIR}/{subdir}.meta.json"


def _files_path(subdir: str) -> str:
    return f"{STATE_DIR}/{subdir}.files.json"


def load_meta(storage: Storage, subdir: str) -> SubdirMeta | None:
    raw = storage.read(_meta_path(subdir))
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
        meta = SubdirMeta(**doc)
    except (orjson.JSONDecodeError, TypeError):
        return None  # unreadable state only costs a full re-plan
    return meta if meta.generation == GENERATION else None


def save_meta(storage: Storage, subdir: str, meta: SubdirMeta) -> None:
    storage.write_if_changed(
        _meta_path(subdir), orjson.dumps(asdict(meta), option=orjson.OPT_SORT_KEYS)
    )


def _delta_path(subdir: str) -> str:
    return f"{STATE_DIR}/{subdir}.files-delta.json"


class _Delta(msgspec.Struct):
    base: str  # sha256 of the base file these changes apply to ("" for no base file)
    files: dict[str, FileState | None]  # None: the file is gone


@dataclass
class FilesState:
    """Our files state: `files` is the base with the delta applied."""

    files: dict[str, FileState]
    base_sha256: str = ""
    delta: dict[str, FileState | None] = field(default_factory=dict)
    # The base's entries the delta replaced or removed, kept until the map goes: freed early,
    # they would leave holes all through the map's memory, later filled by objects that
    # outlive it, and then its pages could not be returned (see release).
    shadow: list[tuple[str, FileState]] = field(default_factory=list)

    def release(self) -> None:
        """Free the map (the run records only its changes from here on)."""
        self.files = {}
        self.shadow = []

    def needs_compaction(self) -> bool:
        """Fold the delta into a new base once it is a twentieth of the map (or 1000 files)."""
        return len(self.delta) > max(1000, len(self.files) // 20)


_files_decoder = msgspec.json.Decoder(dict[str, FileState])
_delta_decoder = msgspec.json.Decoder(_Delta)


def load_files(storage: Storage, subdir: str) -> FilesState:
    """Base and delta; unreadable parts only cost a re-check of the files."""
    raw = storage.read(_files_path(subdir))
    base_sha256 = hashlib.sha256(raw).hexdigest() if raw is not None else ""
    files: dict[str, FileState] = {}
    delta: dict[str, FileState | None] = {}
    with gc_paused():
        if raw is not None:
            # a broken base reads as empty; no delta names its hash, so none is applied
            with contextlib.suppress(msgspec.DecodeError):
                files = _files_decoder.decode(raw)
        del raw
        raw_delta = storage.read(_delta_path(subdir))
        if raw_delta is not None:
            try:
                found = _delta_decoder.decode(raw_delta)
            except msgspec.DecodeError:
                found = None
            if found is not None and found.base == base_sha256:
                delta = found.files
    # one pass over the base, not lookups by the delta's names: the entries kept must hold
    # the base's own key objects
    shadow = [(name, files[name]) for name in files if name in delta] if delta else []
    for name, state in delta.items():
        if state is None:
            files.pop(name, None)
        else:
            files[name] = state
    return FilesState(files, base_sha256, delta, shadow)


def compact_files(storage: Storage, subdir: str, state: FilesState) -> None:
    """Write `state.files` as the new base and start an empty delta on it.

    A crash between the two writes leaves the old delta naming the old base: it is ignored,
    and the new base already holds its changes.
    """
    data = msgspec.json.encode(state.files)
    storage.write_if_changed(_files_path(subdir), data)
    state.base_sha256 = hashlib.sha256(data).hexdigest()
    state.delta = {}
    storage.write_if_changed(
        _delta_path(subdir), msgspec.json.encode(_Delta(state.base_sha256, {}))
    )


def save_files(
    storage: Storage, subdir: str, state: FilesState, changes: dict[str, FileState | None]
) -> None:
    """Record this run's changes (None: gone) on top of the delta we loaded."""
    delta = {**state.delta, **changes}
    storage.write_if_changed(
        _delta_path(subdir), msgspec.json.encode(_Delta(state.base_sha256, delta))
    )


def mirrored_subdirs(storage: Storage) -> list[str]:
    """The subdirs an earlier run saved state for (what this target held before)."""
    suffix = ".meta.json"
    return sorted(n[: -len(suffix)] for n in storage.listing(STATE_DIR) if n.endswith(suffix))
