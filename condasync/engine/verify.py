"""Check a channel tree against its indexes (`verify`): files, sizes, hashes, companion indexes,
and with `deep` each package's own `info/index.json`. Read-only: it never writes to the tree.
"""

from __future__ import annotations

import bz2
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import zstandard

from condasync.channel.repodata import (
    check_filename,
    check_record,
    decompress_zst,
    digest_of,
    is_package_name,
    is_subdir,
    parse_repodata,
)
from condasync.engine.indexer import (
    CHUNK,
    WORKERS,
    PackageError,
    map_in_order,
    read_index_json,
    scan_files,
)
from condasync.engine.shardverify import SHARD_KINDS, check_shards
from condasync.errors import UsageError
from condasync.models import Record
from condasync.storage import hash_file

if TYPE_CHECKING:
    from condasync.storage.s3 import S3Object, S3Storage

# Every problem kind verify reports. Any problem makes the report not ok (exit 4).
KINDS = {
    "missing-index": "noarch/repodata.json is absent, so clients reject the channel",
    "invalid-index": "repodata.json is unreadable, not repodata, or names another subdir",
    "zst-mismatch": "repodata.json.zst does not decompress to repodata.json's exact bytes",
    "bz2-mismatch": "repodata.json.bz2 does not decompress to repodata.json's exact bytes",
    "unsafe-key": "a package key is not a safe <name>-<version>-<build> filename",
    "invalid-record": "a record lacks a sane size or any hash, so it cannot be checked",
    "missing": "an indexed file does not exist",
    "size": "an indexed file's size differs from its record",
    "hash": "an indexed file's sha256 (or md5 when the record has no sha256) differs",
    "unreadable": "an indexed file exists but cannot be opened",
    "corrupt": "deep: the package archive cannot be read",
    "metadata": "deep: info/index.json disagrees with the record's name/version/build/subdir",
    **SHARD_KINDS,
}
# Orphans (package files no index lists) are reported but are NOT problems: `--keep-removed`
# and interrupted runs legitimately leave them, and no client can ever see them.


@dataclass(frozen=True)
class Problem:
    """One finding; `filename` is the package key or index file involved, if any (untrusted)."""

    subdir: str
    filename: str | None
    kind: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "subdir": self.subdir,
            "filename": self.filename,
            "kind": self.kind,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        where = self.subdir if self.filename is None else f"{self.subdir}/{_shown(self.filename)}"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class VerifyReport:
    """`files_checked` counts records with a safe key and a checkable record, missing or not."""

    dir: str
    subdirs_checked: list[str] = field(default_factory=list)
    files_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # not problems (old orphan shards)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "subdirs_checked": self.subdirs_checked,
            "files_checked": self.files_checked,
            "problems": [p.to_dict() for p in self.problems],
            "orphans": self.orphans,
            "warnings": self.warnings,
            "ok": self.ok,
        }


ProblemListener = Callable[[str], None]


def verify_tree(
    root: Path,
    deep: bool = False,
    on_problem: ProblemListener | None = None,
    workers: int = WORKERS,
) -> VerifyReport:
    """Check every `<subdir>/repodata.json` under root against the files beside it.

    `on_problem` hears each problem as a one-line message as soon as it is found.
    """
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    report = VerifyReport(dir=str(root))

    def add(problem: Problem) -> None:
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(str(problem))

    for subdir in _find_subdirs(root):
        files = scan_files(root / subdir)
        if "repodata.json" not in files:
            # packages in a folder without an index are invisible to clients: orphans
            report.orphans.extend(f"{subdir}/{n}" for n in sorted(files) if is_package_name(n))
            continue
        report.subdirs_checked.append(subdir)
        checked, orphans = _verify_subdir(
            root / subdir, subdir, files, deep, workers, add, report.warnings
        )
        report.files_checked += checked
        report.orphans.extend(f"{subdir}/{n}" for n in orphans)
    if "noarch" not in report.subdirs_checked:
        add(Problem("noarch", "repodata.json", "missing-index", KINDS["missing-index"]))
    return report


def _find_subdirs(root: Path) -> list[str]:
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if is_subdir(e.name) and e.is_dir())


def _verify_subdir(
    folder: Path,
    subdir: str,
    files: dict[str, tuple[int, int]],
    deep: bool,
    workers: int,
    add: Callable[[Problem], None],
    warnings: list[str],
) -> tuple[int, list[str]]:
    """Check one subdir; return (records checked, orphan filenames)."""
    try:
        raw = (folder / "repodata.json").read_bytes()
    except OSError as exc:
        add(Problem(subdir, "repodata.json", "invalid-index", f"cannot read: {exc.strerror}"))
        return 0, []
    for name, kind, opener in _COMPANIONS:
        problem = _check_companion(folder / name, subdir, raw, kind, opener)
        if problem is not None:
            add(problem)
    try:
        repodata = parse_repodata(raw, subdir)
    except ValueError as exc:
        add(Problem(subdir, "repodata.json", "invalid-index", str(exc)))
        return 0, []  # without an index nothing is listed, so orphans would be meaningless
    declared = repodata.info.get("subdir")
    if declared is not None and declared != subdir:
        detail = f"info.subdir is {declared!r}, but the index is in {subdir!r}"
        add(Problem(subdir, "repodata.json", "invalid-index", detail))

    sound = _sound_records(repodata.records, subdir, add)
    to_hash: list[tuple[str, Record]] = []
    for key, record in sound:
        on_disk = files.get(key)
        if on_disk is None:
            add(Problem(subdir, key, "missing", "indexed file does not exist"))
        elif on_disk[0] != record["size"]:
            detail = f"expected {record['size']} bytes, found {on_disk[0]}"
            add(Problem(subdir, key, "size", detail))
        else:
            to_hash.append((key, record))

    def check(job: tuple[str, Record]) -> list[Problem]:
        return _check_file(folder / job[0], subdir, job[0], job[1], deep)

    for _job, problems in map_in_order(check, to_hash, workers):
        for problem in problems:
            add(problem)
    orphans = [n for n in sorted(files) if is_package_name(n) and n not in repodata.records]

    def read(relpath: str) -> bytes | None:  # relpaths made of fixed names and hex digits
        try:
            return (folder / relpath).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    _add_shards(subdir, read, scan_files(folder / "shards"), repodata.records, add, warnings)
    return len(sound), orphans


def _add_shards(
    subdir: str,
    read: Callable[[str], bytes | None],
    shard_files: dict[str, tuple[int, int]],
    records: dict[str, Record],
    add: Callable[[Problem], None],
    warnings: list[str],
) -> None:
    found = check_shards(subdir, read, shard_files, records)
    for filename, kind, detail in found.problems:
        add(Problem(subdir, filename, kind, detail))
    warnings.extend(found.warnings)


def _sound_records(
    records: dict[str, Record], subdir: str, add: Callable[[Problem], None]
) -> list[tuple[str, Record]]:
    """The records with a safe key and a checkable record; the others become problems."""
    sound = []
    for key, record in records.items():
        reason = check_filename(key)
        if reason is not None:
            add(Problem(subdir, key, "unsafe-key", reason))  # never joined into a path
            continue
        reason = check_record(record)
        if reason is not None:
            add(Problem(subdir, key, "invalid-record", reason))
            continue
        sound.append((key, record))
    return sound


def _check_file(path: Path, subdir: str, key: str, record: Record, deep: bool) -> list[Problem]:
    """Hash one file with the record's strongest hash; with `deep`, compare its index.json."""
    algorithm, expected = digest_of(record).split(":", 1)
    try:
        size, digests = hash_file(path, (algorithm,))
    except FileNotFoundError:
        return [Problem(subdir, key, "missing", "indexed file vanished while verifying")]
    except OSError as exc:
        return [Problem(subdir, key, "unreadable", f"cannot read: {exc.strerror or exc}")]
    if size != record["size"]:
        return [Problem(subdir, key, "size", f"expected {record['size']} bytes, read {size}")]
    if digests[algorithm] != expected:
        detail = f"{algorithm} is {digests[algorithm]}, record says {expected}"
        return [Problem(subdir, key, "hash", detail)]
    if not deep:
        return []
    try:
        index = read_index_json(path)
    except PackageError as exc:
        return [Problem(subdir, key, "corrupt", str(exc))]
    except OSError as exc:
        return [Problem(subdir, key, "unreadable", f"cannot read: {exc.strerror or exc}")]
    wanted = {k: record.get(k) for k in ("name", "version", "build")}
    wanted["subdir"] = record.get("subdir", subdir)
    diffs = [
        f"{k}: record {v!r}, package {index.get(k)!r}"
        for k, v in wanted.items()
        if index.get(k) != v and not (k == "subdir" and "subdir" not in index)
    ]
    if diffs:
        return [Problem(subdir, key, "metadata", "; ".join(diffs))]
    return []


def _open_zst(fh: IO[bytes]) -> IO[bytes]:
    reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
    return reader


def _open_bz2(fh: IO[bytes]) -> IO[bytes]:
    return bz2.open(fh, "rb")


_COMPANIONS: tuple[tuple[str, str, Callable[[IO[bytes]], IO[bytes]]], ...] = (
    ("repodata.json.zst", "zst-mismatch", _open_zst),
    ("repodata.json.bz2", "bz2-mismatch", _open_bz2),
)


def _check_companion(
    path: Path,
    subdir: str,
    expected: bytes,
    kind: str,
    opener: Callable[[IO[bytes]], IO[bytes]],
) -> Problem | None:
    """A compressed twin must decompress to exactly `expected`; streamed, so a bomb stops early."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; a missing companion is fine
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Problem(subdir, path.name, kind, f"cannot read: {exc.strerror}")
    try:
        with fh, opener(fh) as reader:
            same = _same_bytes(reader, expected)
    except (zstandard.ZstdError, OSError, EOFError, ValueError) as exc:
        return Problem(subdir, path.name, kind, f"cannot decompress: {exc}")
    if same:
        return None
    return Problem(subdir, path.name, kind, "does not decompress to repodata.json's bytes")


def _same_bytes(reader: IO[bytes], expected: bytes) -> bool:
    view = memoryview(expected)
    pos = 0
    while chunk := reader.read(CHUNK):
        end = pos + len(chunk)
        if end > len(expected) or view[pos:end] != chunk:
            return False
        pos = end
    return pos == len(expected)


def _shown(name: str) -> str:
    """A filename fit for a log line: untrusted keys are shown quoted and escaped."""
    return name if check_filename(name) is None else repr(name)[:240]


def verify_storage(
    storage: S3Storage, deep: bool = False, on_problem: ProblemListener | None = None
) -> VerifyReport:
    """`verify` for an object store: one LIST, each index read once.

    Without `deep`, an object is checked by its size, and by its ETag where that is a plain MD5
    and the record has an md5; with `deep`, every object is downloaded and hashed. The
    metadata check of `verify_tree --deep` (opening each package) is local only.
    """
    report = VerifyReport(dir=storage.label)

    def add(problem: Problem) -> None:
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(str(problem))

    by_subdir: dict[str, dict[str, S3Object]] = {}
    shard_objects: dict[str, dict[str, tuple[int, int]]] = {}
    for obj in storage.list():
        subdir, _, name = obj.relpath.partition("/")
        if is_subdir(subdir) and name and "/" not in name:
            by_subdir.setdefault(subdir, {})[name] = obj
        elif is_subdir(subdir) and name.startswith("shards/") and name.count("/") == 1:
            shard_objects.setdefault(subdir, {})[name[7:]] = (obj.size, obj.mtime_ns)
    for subdir, objects in sorted(by_subdir.items()):
        if "repodata.json" not in objects:
            report.orphans.extend(f"{subdir}/{n}" for n in sorted(objects) if is_package_name(n))
            continue
        report.subdirs_checked.append(subdir)
        raw = storage.read(f"{subdir}/repodata.json") or b""
        zst = storage.read(f"{subdir}/repodata.json.zst")
        if zst is not None and not _zst_matches(zst, raw):
            detail = "does not decompress to repodata.json's bytes"
            add(Problem(subdir, "repodata.json.zst", "zst-mismatch", detail))
        try:
            records = parse_repodata(raw, subdir).records
        except ValueError as exc:
            add(Problem(subdir, "repodata.json", "invalid-index", str(exc)))
            continue
        sound = _sound_records(records, subdir, add)
        report.files_checked += len(sound)
        for key, record in sound:
            for problem in _check_object(storage, subdir, key, record, objects.get(key), deep):
                add(problem)
        report.orphans.extend(
            f"{subdir}/{n}" for n in sorted(objects) if is_package_name(n) and n not in records
        )

        def read(relpath: str, subdir: str = subdir) -> bytes | None:
            return storage.read(f"{subdir}/{relpath}")

        shard_files = shard_objects.get(subdir, {})
        _add_shards(subdir, read, shard_files, records, add, report.warnings)
    if "noarch" not in report.subdirs_checked:
        add(Problem("noarch", "repodata.json", "missing-index", KINDS["missing-index"]))
    return report


def _zst_matches(zst: bytes, raw: bytes) -> bool:
    try:
        return decompress_zst(zst) == raw
    except ValueError:
        return False


def _check_object(
    storage: S3Storage, subdir: str, key: str, record: Record, obj: S3Object | None, deep: bool
) -> list[Problem]:
    if obj is None:
        return [Problem(subdir, key, "missing", "indexed object does not exist")]
    if obj.size != record["size"]:
        return [Problem(subdir, key, "size", f"expected {record['size']} bytes, found {obj.size}")]
    if deep:
        algorithm, expected = digest_of(record).split(":", 1)
        _, digests = storage.hash_object(f"{subdir}/{key}", (algorithm,))
        if digests[algorithm] != expected:
            detail = f"{algorithm} is {digests[algorithm]}, record says {expected}"
            return [Problem(subdir, key, "hash", detail)]
        return []
    etag = (obj.etag or "").strip('"').lower()
    md5 = record.get("md5")
    if md5 and len(etag) == 32 and "-" not in etag and etag != md5:
        return [Problem(subdir, key, "hash", f"ETag (md5) is {etag}, record says {md5}")]
    return []
