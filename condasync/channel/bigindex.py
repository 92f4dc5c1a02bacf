"""PURE: the mirror engine's view of an upstream index of up to 600k records.

Each record has a small typed `Lite` view (size and hashes: what planning needs). Its full
JSON stays in upstream's document: the few records a sync reads in full are located in those
bytes (`cut.locate`), and `sections` (every record's JSON as `msgspec.Raw`, for encoding a
changed document) is parsed from them only when asked for. So the common sync, which
publishes upstream's document as it is, parses 600k records once, into the typed views.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from functools import cached_property
from typing import Any, Generic, TypeVar

import msgspec

from condasync.channel.cut import Span, locate
from condasync.channel.repodata import check_record, gc_paused
from condasync.models import PACKAGE_KEYS, Record


class _Decoded(threading.local):
    count = 0  # Lite views decoded in this thread (see Lite.__post_init__)


_decoded = _Decoded()


class Lite(msgspec.Struct, gc=False):
    """What planning needs of a record: size and hashes. The full record stays raw JSON.

    Kept this small on purpose (600k of them live at once); new and changed records are
    validated in full with `check_record` on their raw JSON.
    """

    size: int
    sha256: str | None = None
    md5: str | None = None

    def __post_init__(self) -> None:
        # Counted so that a key listed twice shows: a dict keeps one of the two records
        # msgspec decoded (about 0.06 s on 600k records).
        _decoded.count += 1

    @property
    def digest(self) -> str:
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"md5:{self.md5}"


# Past this many records, one raw pass over the document is cheaper than finding each in it
# (600k-record index: 3,000 located in 0.19 s, 100,000 in 1.17 s; the raw pass 0.5-0.6 s).
LOCATE_MAX = 20_000
_TOP_KEYS = frozenset({"info", "packages", "packages.conda", "removed", "repodata_version"})
_raw_section = msgspec.json.Decoder(dict[str, msgspec.Raw])
_lite_section = msgspec.json.Decoder(dict[str, Lite])
_lite_record = msgspec.json.Decoder(Lite)
_NULL = msgspec.Raw(b"null")


class _RawDoc(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A whole index in one pass, records kept raw (for the common, well-formed case)."""

    info: msgspec.Raw = _NULL
    packages: dict[str, msgspec.Raw] | None = None
    conda: dict[str, msgspec.Raw] | None = msgspec.field(default=None, name="packages.conda")
    removed: msgspec.Raw = _NULL
    repodata_version: msgspec.Raw = _NULL


class _Key(msgspec.Struct, gc=False):
    """A record not read (see `parse_index`'s `names`); it must be an object."""


_Rec = TypeVar("_Rec", Lite, _Key)


class _Doc(msgspec.Struct, Generic[_Rec], forbid_unknown_fields=True, gc=False):
    """A whole index in one pass, each record into `_Rec`: its typed view (`Lite`) or nothing
    but its key (`_Key`). An unknown top-level key fails it (so a pass that succeeds also
    tells that `extra` is empty); `_DocAny` then skips them."""

    info: msgspec.Raw = _NULL
    packages: dict[str, _Rec] | None = None
    conda: dict[str, _Rec] | None = msgspec.field(default=None, name="packages.conda")
    removed: msgspec.Raw = _NULL
    repodata_version: msgspec.Raw = _NULL


class _DocAny(_Doc[_Rec], Generic[_Rec], forbid_unknown_fields=False, gc=False):
    """`_Doc` for a document with other top-level keys (found later, by `Index.extra`)."""


_raw_doc = msgspec.json.Decoder(_RawDoc)
_LITE = (msgspec.json.Decoder(_Doc[Lite]), msgspec.json.Decoder(_DocAny[Lite]))
_KEYS = (msgspec.json.Decoder(_Doc[_Key]), msgspec.json.Decoder(_DocAny[_Key]))


class Index:
    """An upstream index as the engine holds it.

    `lite` has the typed view of each structurally sound record, and `rejected` says why the
    others were dropped; `order` lists each section's filenames ("packages",
    "packages.conda") in upstream order. Filenames are not validated here: callers check the
    ones they use.

    A `partial` index (see parse_index) has typed only some records: `views` and `named`
    locate and type the others on demand, and `lite` parses the whole document first.
    """

    def __init__(
        self,
        body: bytes,
        lite: dict[str, Lite],
        order: dict[str, list[str]],
        rejected: dict[str, str] | None = None,
        sections: dict[str, dict[str, msgspec.Raw]] | None = None,
        extra: dict[str, msgspec.Raw] | None = None,
    ) -> None:
        self.body = body
        self._views = lite
        self._absent: set[str] = set()  # asked of a partial index, and not listed
        self._packed: dict[str, tuple[str, int]] = {}  # order, while detached
        self.order = order
        self.rejected = rejected or {}
        self.info: dict[str, Any] = {}
        self.removed: list[Any] = []
        self.version: int | None = None
        self.spans: dict[str, Span] = {}  # entries located in `body` (see records)
        self.unique = False  # every package key is listed once (known after the fast parse)
        self.partial = False  # only some records are typed yet (see views)
        self._objects: int | None = None  # the "{" a plain document has (see plain)
        self._sections = sections
        self._extra = extra

    @property
    def lite(self) -> dict[str, Lite]:
        """Every sound record's typed view (a partial index is parsed whole first)."""
        if self.partial:
            self._whole()
        return self._views

    def views(self, filenames: Iterable[str]) -> dict[str, Lite]:
        """The typed views of those of `filenames` that are listed and sound. A partial index
        locates and types the ones it has not yet, or, when they are many or on any doubt
        about the bytes, parses the whole document."""
        names = list(filenames)
        if self.partial:
            known, absent = self._views, self._absent
            missing = {fn for fn in names if fn not in known and fn not in absent}
            if missing and not self._locate_views(missing):
                self._whole()
        views = self._views
        return {fn: view for fn in names if (view := views.get(fn)) is not None}

    def named(self, names: AbstractSet[str]) -> dict[str, Lite]:
        """The typed views of the records whose filename starts with `<name>-`."""
        prefixes = tuple(f"{name}-" for name in names)
        if not self.partial:
            return {fn: view for fn, view in self._views.items() if fn.startswith(prefixes)}
        return self.views(
            fn for part in self.order.values() for fn in part if fn.startswith(prefixes)
        )

    def forget_views(self) -> None:
        """Free the typed views and the filename lists (a plan holds what it needs)."""
        self._views, self.order, self._absent = {}, {}, set()
        self.partial = False

    def detach_body(self) -> int:
        """Let the document's memory go (while a solver child reads it from a file), and
        keep the filename lists as one string each (half their memory); returns the
        document's size, to check the bytes given back to `attach_body`."""
        size = len(self.body)
        self.body = b""
        for key, names in self.order.items():
            packed = "\0".join(names)
            if packed.count("\0") == max(len(names) - 1, 0):  # no name holds a NUL
                self._packed[key] = (packed, len(names))
                self.order[key] = []
        return size

    def attach_body(self, body: bytes, size: int) -> None:
        if len(body) != size:
            raise ValueError("the index file changed while it was being solved against")
        self.body = body
        for key, (packed, count) in self._packed.items():
            self.order[key] = packed.split("\0") if count else []
        self._packed = {}

    def _locate_views(self, missing: set[str]) -> bool:
        if len(missing) > LOCATE_MAX or missing & _TOP_KEYS:
            return False
        spans = locate(self.body, self.order, missing)
        if spans is None:
            return False
        try:  # every record is an object and none nests one: a span is a whole record
            views = {fn: _lite_record.decode(self.body[s.value : s.end]) for fn, s in spans.items()}
        except msgspec.DecodeError:
            return False  # malformed, or not what it seemed: the whole parse says which
        self._views.update(views)
        self.spans.update(spans)
        self._absent.update(missing - spans.keys())
        return True

    def _whole(self) -> None:
        """Type every record (a partial index whose bytes were in doubt, or asked for all)."""
        whole = _parse_whole(self.body, "repodata.json")[1]
        self._views, self.rejected, self.order = whole._views, whole.rejected, whole.order
        self.unique, self._objects, self._absent = whole.unique, whole._objects, set()
        self._sections = whole._sections
        self._extra = self._extra if self._extra is not None else whole._extra
        self.partial = False

    @property
    def sections(self) -> dict[str, dict[str, msgspec.Raw]]:
        """Every record's upstream JSON per section, in upstream order (parsed on first use)."""
        if self._sections is None:
            self._sections, self._extra = _raw_pass(self.body, "repodata.json")
        return self._sections

    @property
    def extra(self) -> dict[str, msgspec.Raw]:
        """Top-level keys other than the known ones, kept for re-encoding. Found with a
        top-level pass (0.27 s on 600k records) when the records themselves are not needed
        raw (a selection of a few of them), not with the whole raw pass (0.67 s)."""
        if self._extra is None:
            if self._sections is None:
                top = msgspec.json.decode(self.body, type=dict[str, msgspec.Raw])
                self._extra = {k: v for k, v in top.items() if k not in _TOP_KEYS}
            else:
                self._sections, self._extra = _raw_pass(self.body, "repodata.json")
        return self._extra

    @cached_property
    def plain(self) -> bool:
        """Every "{" in the document opens the root, `info`, a section or a record: no object
        nested in a record or written anywhere else, no "{" in a string, no section or `info`
        written twice. Only then can a record's key in the bytes be no copy or decoy of it, so
        only then are records located in the bytes (a record nesting an object, such as
        anaconda.org's `binstar`, means the whole-document parse: about 1.2 s more on a 1%
        change of 600k records, measured). One count over the bytes (0.1 s on 340 MB), made
        by a sync that changes something."""
        return self._objects is not None and self.body.count(b"{") == self._objects

    def info_once(self) -> bool:
        """`info` is written once: the document is plain, or names "info" once and escapes
        nothing with \\u (so no second `info` hides as "\\u0069nfo"). Records that nest an
        object (anaconda.org's `binstar`, say) are common; this keeps such documents
        publishable as they are."""
        return self.plain or (self.body.count(b'"info"') == 1 and b"\\u" not in self.body)

    def raw(self, filename: str) -> msgspec.Raw | None:
        """A record's upstream JSON, from whichever section holds it."""
        for records in self.sections.values():
            found = records.get(filename)
            if found is not None:
                return found
        return None

    def records(self, filenames: AbstractSet[str]) -> dict[str, bytes | msgspec.Raw]:
        """The JSON of these listed, typed records: cut from the document when there are not
        too many and every one of them lines up there with its typed view (`spans` then says
        where), else from the parsed sections."""
        if self.partial:
            self.views(filenames)  # located with their views (or the index is now whole)
        known = self.spans
        if self.partial:
            return {
                fn: self.body[known[fn].value : known[fn].end] for fn in filenames if fn in known
            }
        if known and filenames and filenames <= known.keys():  # located (and checked) already
            return {fn: self.body[known[fn].value : known[fn].end] for fn in filenames}
        if (
            self._sections is None
            and self.unique
            and 0 < len(filenames) <= LOCATE_MAX
            and self.plain
            # a record named like a top-level key: its escaped key and the real `info`
            # object after the section would line up (found by review)
            and not filenames & _TOP_KEYS
        ):
            spans = locate(self.body, self.order, filenames)
            if spans is not None and spans.keys() == filenames:
                found = {fn: self.body[s.value : s.end] for fn, s in spans.items()}
                if all(_same_view(data, self._views.get(fn)) for fn, data in found.items()):
                    self.spans = spans
                    return dict(found)
        return {fn: raw for fn in filenames if (raw := self.raw(fn)) is not None}

    def subset_sections(
        self, filenames: AbstractSet[str]
    ) -> dict[str, dict[str, msgspec.Raw]] | None:
        """Sections holding only `filenames`, in upstream order, cut from the document when
        each was located already (see records); None otherwise. A selection of a few records
        then never needs the whole-document raw pass."""
        known = self.spans
        out: dict[str, dict[str, msgspec.Raw]] = {key: {} for key in PACKAGE_KEYS}
        if not filenames:
            return out
        if self._sections is not None or not filenames <= known.keys():
            return None
        for fn in sorted(filenames, key=lambda name: known[name].value):
            span = known[fn]
            out[span.section][fn] = msgspec.Raw(self.body[span.value : span.end])
        return out

    def __contains__(self, filename: object) -> bool:
        return any(filename in records for records in self.sections.values())

    def count(self) -> int:
        return sum(len(names) for names in self.order.values())

    def not_listed(self, filenames: AbstractSet[str]) -> set[str]:
        """The filenames upstream does not list at all (set operations, for 600k names)."""
        rest = set(filenames)
        for names in self.order.values():
            rest.difference_update(names)
        return rest


def _same_view(data: bytes, lite: Lite | None) -> bool:
    try:
        return lite is not None and _lite_record.decode(data) == lite
    except msgspec.DecodeError:
        return False


def _raw_of(data: msgspec.Raw | None, where: str) -> dict[str, msgspec.Raw]:
    if data is None or bytes(data) == b"null":
        return {}
    try:
        return _raw_section.decode(data)
    except msgspec.ValidationError:
        raise ValueError(f"{where} has a malformed package section") from None


def _raw_pass(
    data: bytes, where: str
) -> tuple[dict[str, dict[str, msgspec.Raw]], dict[str, msgspec.Raw]]:
    """(sections, extra top-level keys), every record kept as raw JSON."""
    with gc_paused():
        try:
            doc = _raw_doc.decode(data)
            return {"packages": doc.packages or {}, "packages.conda": doc.conda or {}}, {}
        except msgspec.ValidationError:
            top = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
            sections = {key: _raw_of(top.get(key), where) for key in PACKAGE_KEYS}
            return sections, {k: v for k, v in top.items() if k not in _TOP_KEYS}


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


def _part(top: Mapping[str, msgspec.Raw], key: str, kind: type[Any], where: str) -> Any:
    data = top.get(key)
    if data is None:
        return None
    try:
        return msgspec.json.decode(data, type=kind | None)
    except msgspec.ValidationError:
        raise ValueError(f"{where} has a malformed {key!r}") from None


def _decode_doc(
    data: bytes, decoders: tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]
) -> tuple[Any, dict[str, msgspec.Raw] | None] | None:
    """(document, extra) in one pass: extra is {} when the document has no other top-level
    keys, None when it has (`Index.extra` finds them if asked). None when a record does not
    decode (the general path then finds which)."""
    strict, lenient = decoders
    try:
        _decoded.count = 0
        return strict.decode(data), {}
    except msgspec.ValidationError as exc:
        if "unknown field" not in str(exc):
            return None
    try:
        _decoded.count = 0
        return lenient.decode(data), None
    except msgspec.ValidationError:
        return None


def _shape(doc: Any, listed: int) -> int:
    """The "{" a plain document with this top level and `listed` records has (Index.plain)."""
    info_object = bytes(memoryview(doc.info)[:1]) == b"{"
    return 1 + info_object + (doc.packages is not None) + (doc.conda is not None) + listed


def _parse_fast(data: bytes) -> tuple[dict[str, msgspec.Raw], Index] | None:
    """One pass into the typed views; None unless every record has one (the general path
    then finds which do not)."""
    decoded = _decode_doc(data, _LITE)
    if decoded is None:
        return None
    doc, extra = decoded
    top = {"info": doc.info, "removed": doc.removed, "repodata_version": doc.repodata_version}
    order = {"packages": list(doc.packages or ()), "packages.conda": list(doc.conda or ())}
    listed = sum(len(names) for names in order.values())
    # fill the larger (.conda) dict with the smaller; a name in both sections (a hostile
    # index) keeps its "packages" view, the record `Index.raw` returns for it
    views = doc.conda or {}
    views.update(doc.packages or {})
    index = Index(data, views, order, extra=extra)
    # a key written twice in a section, or a section written twice, decodes more records
    # than the dicts keep
    index.unique = _decoded.count == listed and len(views) == listed
    index._objects = _shape(doc, listed)
    return top, index


def _parse_keys(data: bytes) -> tuple[dict[str, msgspec.Raw], Index] | None:
    """Every filename, no typed view yet: a partial index (about half the time of
    `_parse_fast` on 600k records, and a fifth of its memory). None unless the document is
    plain, so that its records can be located in the bytes (see Index.views)."""
    decoded = _decode_doc(data, _KEYS)
    if decoded is None:
        return None
    doc, extra = decoded
    top = {"info": doc.info, "removed": doc.removed, "repodata_version": doc.repodata_version}
    packages, conda = doc.packages or {}, doc.conda or {}
    order = {"packages": list(packages), "packages.conda": list(conda)}
    index = Index(data, {}, order, extra=extra)
    index._objects = _shape(doc, len(packages) + len(conda))
    del decoded, doc, packages, conda
    # Every record is an object, so a key or section written twice adds a "{" the dicts do
    # not count: a plain document has each key once in its section (`locate` gives up on a
    # name listed in both sections).
    if not index.plain:
        return None
    index.unique = index.partial = True
    return top, index


def _parse_whole(data: bytes, where: str) -> tuple[dict[str, msgspec.Raw], Index]:
    """Every record typed: in one pass when all are sound, else section by section."""
    fast = _parse_fast(data)
    if fast is not None:
        return fast
    top = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    sections = {key: _raw_of(top.get(key), where) for key in PACKAGE_KEYS}
    # The typed views last, so the memory they take is freed in one piece later.
    lite: dict[str, Lite] = {}
    rejected: dict[str, str] = {}
    for key in reversed(PACKAGE_KEYS):  # as the one-pass parse: "packages" wins
        part_lite, part_rejected = _lite_of(top.get(key), sections[key])
        lite.update(part_lite)
        rejected.update(part_rejected)
    order = {key: list(records) for key, records in sections.items()}
    extra = {k: v for k, v in top.items() if k not in _TOP_KEYS}
    return top, Index(data, lite, order, rejected, sections, extra)


def parse_index(
    data: bytes, subdir: str, names: AbstractSet[str] | None = None, lazy: bool = False
) -> Index:
    """Parse repodata.json bytes for the engine. Raises ValueError on a malformed document.

    `lazy` types no record yet (`Index.partial`; see Index.views), and `names` only the
    records whose filename starts with `<name>-`: a run that selects by name, or a solve,
    needs no more. A document whose records cannot be located in its bytes is typed whole.
    """
    where = f"{subdir}/repodata.json"
    try:
        with gc_paused():
            keyed = _parse_keys(data) if lazy or names is not None else None
            top, index = keyed if keyed is not None else _parse_whole(data, where)
            if names:
                index.named(names)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            raise ValueError(f"{where} is not a JSON object") from None
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    index.info = _part(top, "info", dict[str, Any], where) or {}
    index.removed = _part(top, "removed", list[Any], where) or []
    index.version = _part(top, "repodata_version", int, where)
    return index


def published_sections(
    index: Index,
    published: AbstractSet[str] | None,
    skip: AbstractSet[str],
    kept_removed: Mapping[str, msgspec.Raw],
) -> dict[str, dict[str, msgspec.Raw]]:
    """The records a mirror publishes, per section: `published` (None: every record) but
    `skip`, in upstream order, then `kept_removed`. A selection located in the document is cut
    from it; upstream's own section dicts may be returned, and are never changed."""
    subset = index.subset_sections(published - skip) if published is not None else None
    if subset is not None:
        sections = subset
    else:
        sections = {}
        for key, records in index.sections.items():
            if published is not None:
                records = {fn: r for fn, r in records.items() if fn in published and fn not in skip}
            elif skip:
                records = {fn: r for fn, r in records.items() if fn not in skip}
            sections[key] = records
    by_section: dict[str, dict[str, msgspec.Raw]] = {}
    for filename, raw in kept_removed.items():
        key = "packages.conda" if filename.endswith(".conda") else "packages"
        by_section.setdefault(key, {})[filename] = raw
    for key, kept in by_section.items():  # one copy per section (never the upstream's dict)
        sections[key] = {**sections.get(key, {}), **kept}
    return sections


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
