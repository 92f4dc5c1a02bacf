"""Where the server keeps channel files: a local DIR (`DIR/<name>/`) or an S3 prefix
(`s3://bucket/prefix/<name>/`), both in the usual tree layout. The server, the proxy cache, the
catalog and the sync tasks reach channel files only through this interface."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Protocol

from condasync.channel.repodata import is_subdir
from condasync.serve.files import Headers, Scope, Send, send_file
from condasync.serve.paths import is_channel_name
from condasync.serve.s3files import send_object
from condasync.storage import STAGING, LocalStorage, S3Options
from condasync.storage.s3 import S3Storage


class ChannelStore(Protocol):
    label: str
    local: bool
    s3_options: S3Options

    def is_tree(self, name: str) -> bool: ...
    def names(self) -> list[str]: ...
    def storage(self, name: str) -> LocalStorage | S3Storage: ...
    def staging(self, name: str, subdir: str) -> Path: ...
    def mirror_target(self, name: str) -> str: ...
    def create(self, name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def read(self, name: str, relpath: str) -> bytes | None: ...
    def stat(self, name: str, relpath: str) -> tuple[int, int] | None: ...
    def subdirs(self, name: str) -> list[str]: ...

    async def send(
        self,
        scope: Scope,
        send: Send,
        name: str,
        relpath: str,
        filename: str,
        private: bool,
        extra: Headers | None = None,
    ) -> bool: ...


class LocalChannels:
    """Channels as folders of DIR; or, when DIR is itself one channel tree (`serve ./mirror`
    right after `condasync mirror`), that tree as the one channel `single`."""

    local = True

    def __init__(self, root: Path, single: str | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        self.root_str = str(self.root)
        self.label = str(root)
        self.s3_options = S3Options()
        self.single = single

    def _dir(self, name: str) -> str:
        if name == self.single:
            return self.root_str
        return os.path.join(self.root_str, name)

    def is_tree(self, name: str) -> bool:
        return os.path.isdir(self._dir(name))

    def names(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self.root))
        except OSError:
            return []
        found = [e for e in entries if is_channel_name(e) and (self.root / e).is_dir()]
        if self.single is not None:  # subdir folders belong to the one tree, not channels
            found = sorted({self.single, *(e for e in found if not is_subdir(e))})
        return found

    def storage(self, name: str) -> LocalStorage:
        return LocalStorage(Path(self._dir(name)))

    def staging(self, name: str, subdir: str) -> Path:
        # Beside the final file, so committing is an atomic rename.
        return Path(self._dir(name)) / subdir / STAGING

    def mirror_target(self, name: str) -> str:
        return self._dir(name)

    def create(self, name: str) -> None:
        os.makedirs(self._dir(name), exist_ok=True)

    def remove(self, name: str) -> None:
        if name != self.single:  # never the tree DIR itself
            shutil.rmtree(self._dir(name), ignore_errors=True)

    def read(self, name: str, relpath: str) -> bytes | None:
        try:
            with open(os.path.join(self._dir(name), relpath), "rb") as fh:
                return fh.read()
        except OSError:
            return None

    def stat(self, name: str, relpath: str) -> tuple[int, int] | None:
        try:
            st = os.stat(os.path.join(self._dir(name), relpath))
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def subdirs(self, name: str) -> list[str]:
        base = Path(self._dir(name))
        if not base.is_dir():
            return []
        return sorted(
            p.name
            for p in base.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "repodata.json").is_file()
        )

    async def send(
        self,
        scope: Scope,
        send: Send,
        name: str,
        relpath: str,
        filename: str,
        private: bool,
        extra: Headers | None = None,
    ) -> bool:
        # Every segment is validated (no "..", no separator, no dot-file), so the join stays
        # in the channel; send_file refuses a symlinked file as well.
        path = os.path.join(self._dir(name), relpath)
        return await send_file(scope, send, path, filename, private, extra)


def is_channel_tree(folder: Path) -> bool:
    """A folder that is one channel: subdir folders holding a repodata.json."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    return any(
        is_subdir(e.name) and e.is_dir() and os.path.isfile(os.path.join(e.path, "repodata.json"))
        for e in entries
    )


class S3Channels:
    """Channels under an S3 prefix; `scratch` is a local folder for proxy downloads in flight
    (verified there, then uploaded: an object is committed only once its bytes match)."""

    local = False

    def __init__(self, url: str, options: S3Options, scratch: Path) -> None:
        self.s3_options = options
        self.root = self._open(url)
        self.label = self.root.label
        self.scratch = scratch
        self._storages: dict[str, S3Storage] = {}
        self._lock = threading.Lock()

    def _open(self, url: str) -> S3Storage:
        return S3Storage(
            url,
            endpoint=self.s3_options.endpoint,
            force_path_style=self.s3_options.force_path_style,
        )

    def check(self) -> None:
        """One LIST: fails now (S3AccessError, exit 3) on wrong credentials or no bucket."""
        self._folders("")

    def _folders(self, relpath: str) -> list[str]:
        """Names of the "folders" directly under relpath ("" for the prefix itself)."""
        import obstore

        base = self.root.key(relpath) + "/" if relpath else (self.root.prefix + "/").lstrip("/")
        with self.root.translate(f"listing {relpath or '/'}"):
            result = obstore.list_with_delimiter(self.root.store, base or None)
        found = [p.rstrip("/").rsplit("/", 1)[-1] for p in result["common_prefixes"]]
        if relpath and result["objects"]:
            found.append("")  # objects directly in it: it exists
        return found

    def is_tree(self, name: str) -> bool:
        return bool(self._folders(name))

    def names(self) -> list[str]:
        return sorted(n for n in self._folders("") if is_channel_name(n))

    def storage(self, name: str) -> S3Storage:
        with self._lock:
            storage = self._storages.get(name)
            if storage is None:
                storage = self._storages[name] = self._open(self.mirror_target(name))
            return storage

    def staging(self, name: str, subdir: str) -> Path:
        return self.scratch / name / subdir

    def mirror_target(self, name: str) -> str:
        return f"{self.label}/{name}"

    def create(self, name: str) -> None:
        """Nothing: an S3 "folder" exists once it holds an object."""

    def remove(self, name: str) -> None:
        storage = self.storage(name)
        for obj in storage.list():
            storage.delete(obj.relpath)
        shutil.rmtree(self.scratch / name, ignore_errors=True)

    def read(self, name: str, relpath: str) -> bytes | None:
        return self.storage(name).read(relpath)

    def stat(self, name: str, relpath: str) -> tuple[int, int] | None:
        return self.storage(name).stat(relpath)

    def subdirs(self, name: str) -> list[str]:
        storage = self.storage(name)
        found = [s for s in self._folders(name) if s and is_subdir(s)]
        return sorted(s for s in found if storage.stat(f"{s}/repodata.json") is not None)

    async def send(
        self,
        scope: Scope,
        send: Send,
        name: str,
        relpath: str,
        filename: str,
        private: bool,
        extra: Headers | None = None,
    ) -> bool:
        storage = self.storage(name)
        return await send_object(
            scope, send, storage.store, storage.key(relpath), filename, private, extra
        )


def open_channels(
    root: Path, storage: str | None, options: S3Options | None = None, single: str | None = None
) -> LocalChannels | S3Channels:
    """DIR itself (or DIR as the one channel `single`), or the `s3://bucket/prefix` given with
    --storage (DIR then holds only the default database and scratch files)."""
    if storage:
        return S3Channels(storage, options or S3Options(), root / ".condasync" / "proxy-tmp")
    return LocalChannels(root, single)
