"""PURE: which package names' records changed, told from an index document's bytes without
parsing its 600k records. A name's entries sit in runs of adjacent entries of its package
sections; each run is found in the bytes by its first key and hashed as it is written, so a
name whose runs hash as last time publishes the same records. Only the names that changed
are decoded, from their runs (`RunGroups`).

Only for a plain document whose keys are each listed once (`bigindex.Index.plain`,
`unique`): every "{" then opens the root, `info`, a section or a record, so a filename
followed by `:` and `{` is that entry's key and nothing else (a record holds no object, and
`"` inside a string is escaped, which the `,` or `{` required before the key rules out).
Anything else, or any doubt about the bytes, returns None: the caller groups parsed records.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from condasync.channel.bigindex import Index
from condasync.channel.cut import last_non_ws, last_value_end, opens_section, skip_ws
from condasync.channel.shards import NameRecords, package_name

_COMMA, _OPEN = 0x2C, 0x7B
_VALUE_OBJECT = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*\{")  # after a key: `:` and an object
DIGEST_PREFIX = "runs:"  # never equal to a digest of the parsed records (NameRecords.digest)


@dataclass(frozen=True, slots=True)
class Run:
    """Adjacent entries of one name in a package section: `order[section][first:first +
    count]`, written in `body[start:end]` (from the first key to the end of the last value,
    and any whitespace after it)."""

    section: str
    first: int
    count: int
    start: int
    end: int


def _entry_key(body: bytes, filename: str, start: int) -> tuple[int, int]:
    """(the key of `filename`'s entry, the `,` or `{` before it): the first `"filename"` at
    or after `start` followed by `:` and `{` and preceded by `,` or `{`; (-1, -1) if none."""
    if '"' in filename or "\\" in filename:
        return -1, -1  # JSON would escape it: not written as it is
    needle = b'"' + filename.encode() + b'"'
    follows = _VALUE_OBJECT.match
    pos = body.find(needle, start)
    while pos >= 0:
        if follows(body, pos + len(needle)):
            before = last_non_ws(body, pos)
            if before >= 0 and body[before] in (_COMMA, _OPEN):
                return pos, before
        pos = body.find(needle, pos + 1)
    return -1, -1


def _boundaries(names: Sequence[str]) -> list[tuple[str, int]]:
    """(name, index of its first filename) for each run of filenames with the same
    `package_name`, in order. `name-` followed by text with exactly one "-" is that name."""
    out: list[tuple[str, int]] = []
    prefix, skip = None, 0
    for i, filename in enumerate(names):
        if prefix is not None and filename.startswith(prefix) and filename.count("-", skip) == 1:
            continue
        name = package_name(filename)
        out.append((name, i))
        prefix, skip = name + "-", len(name) + 1
    return out


def _section_runs(body: bytes, section: str, names: Sequence[str]) -> list[tuple[str, Run]] | None:
    """The runs of one section, in order; None on any doubt."""
    first, brace = _entry_key(body, names[0], 0)
    while first >= 0 and not opens_section(body, first, section):
        first, brace = _entry_key(body, names[0], first + 1)
    if first < 0 or body[brace] != _OPEN:
        return None
    bounds = _boundaries(names)
    starts, commas = [first], []
    for _, index in bounds[1:]:
        key, comma = _entry_key(body, names[index], starts[-1] + 1)
        if key < 0 or body[comma] != _COMMA:
            return None
        starts.append(key)
        commas.append(comma)
    # The section's end: past its last entry's value (an object, nesting none)
    last = starts[-1]
    if bounds[-1][1] != len(names) - 1:
        last = _entry_key(body, names[-1], last + 1)[0]
        if last < 0:
            return None
    value = skip_ws(body, skip_ws(body, last + len(names[-1].encode()) + 2) + 1)
    end = last_value_end(body, value)
    if end < 0:
        return None
    ends = [*commas, end]  # a run ends before the comma after it (whitespace and all)
    firsts = [index for _, index in bounds]
    counts = [b - a for a, b in itertools.pairwise([*firsts, len(names)])]
    return [
        (name, Run(section, index, count, start, stop))
        for (name, index), count, start, stop in zip(bounds, counts, starts, ends, strict=True)
    ]


def find_runs(body: bytes, order: Mapping[str, Sequence[str]]) -> dict[str, list[Run]] | None:
    """Each package name's runs, in section order ("packages", then "packages.conda") and
    document order, for a plain document whose sections list `order`'s filenames (as msgspec
    parsed them, each once, and none in both). None on any doubt."""
    runs: dict[str, list[Run]] = {}
    spans = []
    for section in ("packages", "packages.conda"):
        names = order.get(section, ())
        if not names:
            continue
        found = _section_runs(body, section, names)
        if found is None:
            return None
        spans.append((found[0][1].start, found[-1][1].end))
        for name, run in found:
            runs.setdefault(name, []).append(run)
    if len(spans) == 2 and spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]:
        return None  # the sections overlap: some key was found in the other one
    return runs


def index_groups(index: Index, order: Mapping[str, Sequence[str]]) -> RunGroups | None:
    """The records of `index` (whose sections list `order`'s filenames) grouped by name as
    runs of its bytes; None unless it is plain with every key once, or on any doubt."""
    if not (index.unique and index.plain):
        return None
    if not set(order.get("packages", ())).isdisjoint(order.get("packages.conda", ())):
        return None  # a filename in both sections (a lazily parsed index may have one)
    runs = find_runs(index.body, order)
    return None if runs is None else RunGroups(index.body, order, runs, index.removed)


class RunGroups(Mapping[str, NameRecords]):
    """The published records grouped by name, as runs of `body`: a name's digest comes from
    its runs' bytes, and its records are copied out of them only when asked for (afresh
    each time: kept, 600k records would double the document's memory on a first write)."""

    def __init__(
        self,
        body: bytes,
        order: Mapping[str, Sequence[str]],
        runs: dict[str, list[Run]],
        removed: Iterable[object] = (),
    ) -> None:
        self.body, self.order, self.runs = body, order, runs
        self.removed: dict[str, list[str]] = {}
        for gone in removed:  # as group_by_name: only names that have records
            if isinstance(gone, str) and gone.endswith((".conda", ".tar.bz2")):
                name = package_name(gone)
                if name in runs:
                    self.removed.setdefault(name, []).append(gone)

    def __getitem__(self, name: str) -> NameRecords:
        return self._decode(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __contains__(self, name: object) -> bool:
        return name in self.runs

    def digests(self) -> dict[str, str]:
        """name -> hex digest of its runs' bytes (and its removed filenames), for every name."""
        view = memoryview(self.body)
        sha256 = hashlib.sha256
        out: dict[str, str] = {}
        for name, runs in self.runs.items():
            h = sha256()
            for run in runs:
                h.update(b"%s\x00%d\x00" % (run.section.encode(), run.end - run.start))
                h.update(view[run.start : run.end])
            for filename in sorted(self.removed.get(name, ())):
                h.update(b"\x01" + filename.encode())
            out[name] = DIGEST_PREFIX + h.hexdigest()
        return out

    def _decode(self, name: str) -> NameRecords:
        """The name's records `written` (see NameRecords): its runs of each section joined
        into one JSON object, and the filenames that object must hold."""
        parts: dict[str, tuple[list[bytes | memoryview], list[str]]] = {}
        view = memoryview(self.body)
        for run in self.runs[name]:
            chunks, keys = parts.setdefault(run.section, ([b"{"], []))
            if len(chunks) > 1:
                chunks.append(b",")
            chunks.append(view[run.start : run.end])
            keys.extend(self.order[run.section][run.first : run.first + run.count])
        written = {  # one copy of the bytes
            section: (b"".join([*chunks, b"}"]), keys) for section, (chunks, keys) in parts.items()
        }
        return NameRecords(removed=list(self.removed.get(name, ())), written=written)
