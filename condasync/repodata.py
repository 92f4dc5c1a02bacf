"""Pure repodata format logic: parse, validate untrusted keys and records, dump, zstd.

Two views of an index. `parse_repodata`/`dump_repodata` give and take plain dicts (used by
`index`, `verify` and tests). The mirror engine uses `parse_index`/`encode_index`: each record
stays the upstream's raw JSON bytes (`msgspec.Raw`, spliced into the output unchanged) next to
a small typed `Lite` view holding just what planning needs, so a 600k-record index is parsed
and written again without building 600k dicts.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
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


def is_subdir(name: str) -> bool:
    return bool(SUBDIR_RE.match(name))


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


class Lite(msgspec.Struct, gc=False):
    """What planning needs of a record: size and hashes. The full record stays raw JSON.

    Kept this small on purpose (600k of them live at once); new and changed records are
    validated in full with `check_record` on their raw JSON.
    """

    size: int
    sha256: str | None = None
    md5: str | None = None

    @property
    def digest(self) -> str:
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"md5:{self.md5}"


_TOP_KEYS = frozenset({"info", "packages", "packages.conda", "removed", "repodata_version"})
_raw_section = msgspec.json.Decoder(dict[str, msgspec.Raw])
_lite_section = msgspec.json.Decoder(dict[str, Lite])
_lite_record = msgspec.json.Decoder(Lite)


@dataclass
class Index:
    """An upstream index as the engine holds it.

    `sections` keeps every record's original JSON bytes per section ("packages",
    "packages.conda"), in upstream order; `lite` has the typed view of each structurally
    sound record, and `rejected` says why the others were dropped. Filenames are not
    validated here: callers check the ones they use.
    """

    info: dict[str, Any]
    sections: dict[str, dict[str, msgspec.Raw]]
    lite: dict[str, Lite]
    rejected: dict[str, str]
    removed: list[Any] = field(default_factory=list)
    version: int | None = None
    extra: dict[str, msgspec.Raw] = field(default_factory=dict)

    def raw(self, filename: str) -> msgspec.Raw | None:
        """A record's upstream JSON, from whichever section holds it."""
        for records in self.sections.values():
            found = records.get(filename)
            if found is not None:
                return found
        return None

    def __contains__(self, filename: object) -> bool:
        return any(filename in records for records in self.sections.values())

    def count(self) -> int:
        return sum(len(records) for records in self.sections.values())

    def not_listed(self, filenames: AbstractSet[str]) -> set[str]:
        """The filenames upstream does not list at all (set operations, for 600k names)."""
        rest = set(filenames)
        for records in self.sections.values():
            rest -= records.keys()
        return rest


def _raw_of(data: msgspec.Raw | None, where: str) -> dict[str, msgspec.Raw]:
    if data is None or bytes(data) == b"null":
        return {}
    try:
        return _raw_section.decode(data)
    except msgspec.ValidationError:
        raise ValueError(f"{where} has a malformed package section") from None


def _lite_of(
    data: msgspec.Raw | None, raw: dict[str, msgspec.Raw]
) -> tuple[dict[str, Lite], dict[str, str]]:
    if not raw or data is None:
        return {}, {}
    try:
        return _lite_section.decode(data), {}
    except msgspec.ValidationError:
        pass  # some record is malformed: find which, one by one
    lite: dict[str, Lite] = {}
    rejected: dict[str, str] = {}
    for filename, body in raw.items():
        try:
            lite[filename] = _lite_record.decode(body)
        except msgspec.ValidationError as exc:
            reason = check_record(msgspec.json.decode(body))
            rejected[filename] = reason or f"malformed record: {exc}"
    return lite, rejected


def _part(top: dict[str, msgspec.Raw], key: str, kind: type[Any], where: str) -> Any:
    data = top.get(key)
    if data is None:
        return None
    try:
        return msgspec.json.decode(data, type=kind | None)
    except msgspec.ValidationError:
        raise ValueError(f"{where} has a malformed {key!r}") from None


_NULL = msgspec.Raw(b"null")


class _RawDoc(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A whole index in one pass, records kept raw (for the common, well-formed case)."""

    info: msgspec.Raw = _NULL
    packages: dict[str, msgspec.Raw] | None = None
    conda: dict[str, msgspec.Raw] | None = msgspec.field(default=None, name="packages.conda")
    removed: msgspec.Raw = _NULL
    repodata_version: msgspec.Raw = _NULL


class _LiteDoc(msgspec.Struct, gc=False):
    packages: dict[str, Lite] | None = None
    conda: dict[str, Lite] | None = msgspec.field(default=None, name="packages.conda")


_raw_doc = msgspec.json.Decoder(_RawDoc)
_lite_doc = msgspec.json.Decoder(_LiteDoc)


def _parse_fast(data: bytes) -> tuple[dict[str, msgspec.Raw], Index] | None:
    """One pass for the raw records, one for the typed views; None unless every part is
    well-formed (the general path then finds what is not)."""
    try:
        doc = _raw_doc.decode(data)
        lite = _lite_doc.decode(data)
    except msgspec.ValidationError:
        return None
    parts = (
        ("info", doc.info),
        ("removed", doc.removed),
        ("repodata_version", doc.repodata_version),
    )
    top = dict(parts)  # a missing part is JSON null, as _part reads it
    # fill the larger (.conda) dict with the smaller; a name in both sections (a hostile
    # index) keeps its "packages" view, the record `Index.raw` returns for it
    views = lite.conda or {}
    views.update(lite.packages or {})
    sections = {"packages": doc.packages or {}, "packages.conda": doc.conda or {}}
    return top, Index(info={}, sections=sections, lite=views, rejected={})


def parse_index(data: bytes, subdir: str) -> Index:
    """Parse repodata.json bytes for the engine. Raises ValueError on a malformed document."""
    where = f"{subdir}/repodata.json"
    try:
        with gc_paused():
            fast = _parse_fast(data)
            if fast is not None:
                top, index = fast
            else:
                top = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
                sections = {key: _raw_of(top.get(key), where) for key in PACKAGE_KEYS}
                # The typed views last, so the memory they take is freed in one piece later.
                lite: dict[str, Lite] = {}
                rejected: dict[str, str] = {}
                for key in reversed(PACKAGE_KEYS):  # as the one-pass parse: "packages" wins
                    part_lite, part_rejected = _lite_of(top.get(key), sections[key])
                    lite.update(part_lite)
                    rejected.update(part_rejected)
                index = Index(info={}, sections=sections, lite=lite, rejected=rejected)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            raise ValueError(f"{where} is not a JSON object") from None
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    index.info = _part(top, "info", dict[str, Any], where) or {}
    index.removed = _part(top, "removed", list[Any], where) or []
    index.version = _part(top, "repodata_version", int, where)
    index.extra = {k: v for k, v in top.items() if k not in _TOP_KEYS}
    return index


def encode_index(
    index: Index, subdir: str, sections: Mapping[str, Mapping[str, msgspec.Raw | Record]]
) -> bytes:
    """The index a mirror publishes: upstream's top level (minus base_url) and these sections.

    Records keep their upstream bytes; the result is compact JSON.
    """
    info = {k: v for k, v in index.info.items() if k != "base_url"}
    info["subdir"] = subdir
    doc: dict[str, Any] = dict(sorted(index.extra.items()))
    doc["info"] = info
    for key in PACKAGE_KEYS:
        doc[key] = sections.get(key, {})
    doc["removed"] = index.removed
    if index.version is not None:
        doc["repodata_version"] = index.version
    with gc_paused():
        return msgspec.json.encode(doc)
