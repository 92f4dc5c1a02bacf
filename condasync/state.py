"""What the last sync verified, per subdir (the run lock lives with the storage backends).

State is two files per subdir under `DIR/.condasync/`: a small `<subdir>.meta.json` (upstream
validators, what we published, a hash of the options) read on every run, and a large
`<subdir>.files.json` (size, digest and mtime of each file) read only when there is work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import msgspec
import orjson

from condasync.models import FileState
from condasync.repodata import gc_paused
from condasync.storage import STATE_DIR, Storage

GENERATION = 1  # bump when the on-disk state format changes: forces a full re-plan


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


_files_decoder = msgspec.json.Decoder(dict[str, FileState])


def load_files(storage: Storage, subdir: str) -> dict[str, FileState]:
    raw = storage.read(_files_path(subdir))
    if raw is None:
        return {}
    try:
        with gc_paused():
            return _files_decoder.decode(raw)
    except msgspec.DecodeError:
        return {}  # unreadable state only costs a re-check of the files


def save_files(storage: Storage, subdir: str, files: dict[str, FileState]) -> None:
    storage.write_if_changed(_files_path(subdir), msgspec.json.encode(files))
