"""Pure repodata format logic: parse, validate untrusted keys and records, dump, zstd.

`parse_repodata`/`dump_repodata` give and take plain dicts (used by `index`, `verify` and
tests). The mirror engine's view of a 600k-record index is in `bigindex`.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import zstandard

from condasync.models import PACKAGE_KEYS, Record, Repodata

SUBDIR_RE = re.compile(r"^(noarch|[a-z0-9]+-[a-z0-9]+)$")
NAME_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")
BUILD_RE = re.compile(r"^[A-Za-z0-9_.+]+$")
VERSION_RE = re.compile(r"^[A-Za-z0-9_.+!*]+$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
EXTENSIONS = (".conda", ".tar.bz2")
MAX_NAME = 64
MAX_FILENAME = 211
MAX_SIZE = 64 * 1024**3  # no real conda package comes near this; larger is a hostile record
MAX_DECOMPRESSED = 8 * 1024**3


KNOWN_SUBDIRS = (
    "noarch", "linux-64", "linux-aarch64", "linux-ppc64le", "linux-s390x", "linux-armv6l",
    "linux-armv7l", "linux-32", "linux-riscv64", "osx-64", "osx-arm64", "win-64", "win-32",
    "win-arm64", "emscripten-wasm32", "wasi-wasm32", "zos-z",
)  # fmt: skip


def is_subdir(name: str) -> bool:
    return bool(SUBDIR_RE.match(name))


def is_package_name(name: str) -> bool:
    """A file that looks like a package (its name is checked in full by check_filename)."""
    return name.endswith(EXTENSIONS) and not name.startswith(".")


def split_filename(filename: str) -> tuple[str, str, str, str] | None:
    """Split `<name>-<version>-<build><ext>` into its parts, or None when it is not one."""
    for ext in EXTENSIONS:
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            parts = stem.rsplit("-", 2)
            if len(parts) == 3:
                return parts[0], parts[1], parts[2], ext
            return None
    return None


def check_filename(filename: object) -> str | None:
    """Return why a package key is unsafe or malformed, or None for a valid package filename."""
    if not isinstance(filename, str) or not filename:
        return "not a filename"
    if len(filename) > MAX_FILENAME:
        return f"filename longer than {MAX_FILENAME} characters"
    if any(bad in filename for bad in ("/", "\\", "\x00", "..")) or filename.startswith("."):
        return "unsafe characters in filename"
    parts = split_filename(filename)
    if parts is None:
        return "not <name>-<version>-<build>.(conda|tar.bz2)"
    name, version, build, _ = parts
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        return "invalid package name"
    if not VERSION_RE.match(version):
        return "invalid version"
    if not BUILD_RE.match(build):
        return "invalid build string"
    return None


def check_record(record: object) -> str | None:
    """Return why a record cannot be mirrored safely, or None when it can."""
    if not isinstance(record, dict):
        return "record is not an object"
    size = record.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > MAX_SIZE:
        return "missing or absurd size"
    sha256, md5 = record.get("sha256"), record.get("md5")
    if sha256 is not None and not (isinstance(sha256, str) and HEX64.match(sha256)):
        return "malformed sha256"
    if md5 is not None and not (isinstance(md5, str) and HEX32.match(md5)):
        return "malformed md5"
    if sha256 is None and md5 is None:
        return "record has no sha256 and no md5"
    for key in ("name", "version", "build"):
        if not isinstance(record.get(key), str):
            return f"record has no {key}"
    return None


def digest_of(record: Record) -> str:
    """The one hash a download of this record is verified against: sha256 when known, else md5."""
    sha256 = record.get("sha256")
    if sha256:
        return f"sha256:{sha256}"
    return f"md5:{record['md5']}"


@contextmanager
def gc_paused() -> Iterator[None]:
    # Parsing creates millions of containers; the cyclic GC would rescan them over and over.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_repodata(data: bytes, subdir: str) -> Repodata:
    """Parse repodata.json bytes. Raises ValueError on anything that is not a repodata object."""
    try:
        with gc_paused():
            doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{subdir}/repodata.json is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{subdir}/repodata.json is not a JSON object")
    info = doc.pop("info", None)
    info = {} if info is None else info
    if not isinstance(info, dict):
        raise ValueError(f"{subdir}/repodata.json has a malformed 'info'")
    records: dict[str, Record] = {}
    for key in PACKAGE_KEYS:
        section = doc.pop(key, None)
        section = {} if section is None else section
        if not isinstance(section, dict):
            raise ValueError(f"{subdir}/repodata.json has a malformed '{key}'")
        records.update(section)
    removed = doc.pop("removed", None)
    removed = [] if removed is None else removed
    if not isinstance(removed, list):
        raise ValueError(f"{subdir}/repodata.json has a malformed 'removed'")
    version = doc.pop("repodata_version", None)
    if version is not None and not isinstance(version, int):
        raise ValueError(f"{subdir}/repodata.json has a malformed 'repodata_version'")
    return Repodata(info=info, records=records, removed=removed, version=version, extra=doc)


def partition_records(records: dict[str, Any]) -> tuple[dict[str, Record], dict[str, str]]:
    """Split records into (valid, rejected-with-reason). Rejected keys are never used as paths."""
    valid: dict[str, Record] = {}
    rejected: dict[str, str] = {}
    for filename, record in records.items():
        reason = check_filename(filename) or check_record(record)
        if reason is None:
            valid[filename] = record
        else:
            rejected[filename] = reason
    return valid, rejected


def empty_repodata(subdir: str) -> Repodata:
    return Repodata(info={"subdir": subdir}, records={}, removed=[], version=1)


def publishable(upstream: Repodata, subdir: str, records: dict[str, Record]) -> Repodata:
    """The index a mirror publishes: upstream's top level, our records, and no off-site base_url."""
    info = {k: v for k, v in upstream.info.items() if k != "base_url"}
    info["subdir"] = subdir
    return Repodata(
        info=info,
        records=records,
        removed=list(upstream.removed),
        version=upstream.version,
        extra=dict(upstream.extra),
    )


def dump_repodata(repodata: Repodata) -> bytes:
    """Deterministic JSON bytes: same input, same bytes (sorted keys, fixed layout)."""
    doc: dict[str, Any] = dict(repodata.extra)
    doc["info"] = repodata.info
    doc["packages"] = {k: v for k, v in repodata.records.items() if k.endswith(".tar.bz2")}
    doc["packages.conda"] = {k: v for k, v in repodata.records.items() if k.endswith(".conda")}
    doc["removed"] = repodata.removed
    if repodata.version is not None:
        doc["repodata_version"] = repodata.version
    with gc_paused():
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def compress_zst(data: bytes, level: int = 3, threads: int = 0) -> bytes:
    return zstandard.ZstdCompressor(level=level, threads=threads).compress(data)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RAW_BLOCK = 128 * 1024  # the largest block a zstd frame may hold


def zst_stored(parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """A zstd frame of `parts` (joined) stored as raw blocks, uncompressed: every zstd reader
    takes it, and it costs no CPU. For an index that lives a second (the interim one), where
    compressing 340 MB would slow the downloads it runs beside."""
    total = sum(len(part) for part in parts)
    # frame header: content size in 8 bytes, single segment (no window descriptor), no checksum
    out: list[bytes | memoryview] = [_ZSTD_MAGIC + b"\xe0" + total.to_bytes(8, "little")]
    block: list[bytes | memoryview] = []
    room = _RAW_BLOCK
    left = total

    def close_block() -> None:
        size = _RAW_BLOCK - room
        last = 1 if left == 0 else 0
        out.append((last | size << 3).to_bytes(3, "little"))  # block type 0: raw
        out.extend(block)

    for part in parts:
        view = memoryview(part)
        while view:
            take = view[:room]
            block.append(take)
            room -= len(take)
            left -= len(take)
            view = view[len(take) :]
            if room == 0:
                close_block()
                block, room = [], _RAW_BLOCK
    if block or total == 0:
        close_block()
    return out


def decompress_zst(data: bytes) -> bytes:
    """Decompress a zstd stream, refusing outputs beyond a sane bound (zip-bomb guard).

    Every frame counts, as for any other zstd reader: the result is what clients get from
    the same bytes (a mirror may publish them as they are).
    """
    try:
        size = zstandard.frame_content_size(data)
        if size > MAX_DECOMPRESSED:
            raise ValueError("decompressed repodata is implausibly large")
        if size > 0:  # one shot into a buffer of the declared size, when that is all there is
            with contextlib.suppress(zstandard.ZstdError):
                return zstandard.ZstdDecompressor().decompress(
                    data, max_output_size=size, allow_extra_data=False
                )
        chunks: list[bytes] = []
        total = 0
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        with reader:
            while chunk := reader.read(16 * 1024 * 1024):
                total += len(chunk)
                if total > MAX_DECOMPRESSED:
                    raise ValueError("decompressed repodata is implausibly large")
                chunks.append(chunk)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt zstd data: {exc}") from None
    return b"".join(chunks)


def suggest_subdir(name: str) -> str:
    """` (did you mean 'linux-64'?)` for a near miss of a known subdir, else ""."""
    close = difflib.get_close_matches(name, KNOWN_SUBDIRS, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""
