"""PURE: where records sit in an index document's bytes, and that document with some cut out.

A 1% change touches a few thousand of 600k records. The engine parses only the typed view of
each record (size and hashes); the few records it must read in full, and the interim index
(upstream's document minus the records whose files are not in place yet), come from the
document's own bytes: `locate` finds those records' entries, `cut` drops entries from the
bytes without encoding anything again.

`locate` walks each section in upstream order from the section's first key (found right
after `"<section>": {`), and finds an entry's end at the next entry's key, so an entry holds
exactly one JSON value or the caller's check of it fails (an escaped key, a key hidden in a
value: the bytes do not line up). On any doubt it returns None, and the caller parses the
whole document instead. The caller locates only in a document whose every "{" opens the
root, `info`, a section or a record, and whose keys are each listed once (`bigindex` checks
both): a copy of a record, which is an object, cannot then hide anywhere else in the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

_WS = b" \t\r\n"
_COMMA, _COLON, _OPEN, _CLOSE = 0x2C, 0x3A, 0x7B, 0x7D


@dataclass(frozen=True, slots=True)
class Span:
    """One `"filename": {record}` entry of a package section, as byte offsets."""

    section: str
    position: int  # the entry's place in its section (0: the first)
    before: int  # the "," (or, first in its section, the "{") before the key
    key: int
    value: int
    end: int  # just past the value
    next_key: int  # the next entry's key; -1 for the section's last entry


def skip_ws(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] in _WS:
        pos += 1
    return pos


def last_non_ws(data: bytes, pos: int) -> int:
    """The last non-whitespace byte before `pos` (-1 if none)."""
    low = max(0, pos - 64)  # whitespace between tokens is short: one slice, almost always
    kept = data[low:pos].rstrip(_WS)
    if kept:
        return low + len(kept) - 1
    pos = low - 1
    while pos >= 0 and data[pos] in _WS:
        pos -= 1
    return pos


def _find_key(data: bytes, filename: str, start: int) -> int:
    """The first `"filename"` at or after `start` that is followed by a colon; -1 if none
    (and for a name JSON would escape, which is then not written as it is here)."""
    if '"' in filename or "\\" in filename:
        return -1
    needle = b'"' + filename.encode() + b'"'
    pos = data.find(needle, start)
    while pos >= 0:
        colon = skip_ws(data, pos + len(needle))
        if colon < len(data) and data[colon] == _COLON:
            return pos
        pos = data.find(needle, pos + 1)
    return -1


def object_end(data: bytes, pos: int) -> int:
    """Just past the JSON object starting at `pos` ("{"); -1 if it is not one."""
    if pos >= len(data) or data[pos] != _OPEN:
        return -1
    depth, i, n = 0, pos, len(data)
    while i < n:
        c = data[i]
        if c == 0x22:  # a string: skip it, escapes included
            i += 1
            while i < n and data[i] != 0x22:
                i += 2 if data[i] == 0x5C else 1
        elif c in b"{[":
            depth += 1
        elif c in b"}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def last_value_end(data: bytes, value: int) -> int:
    """Just past a section's last value (the object at `value`), when the section closes
    right after it; -1 otherwise."""
    end = object_end(data, value)
    after = skip_ws(data, end) if end >= 0 else len(data)
    return end if after < len(data) and data[after] == _CLOSE else -1


def opens_section(data: bytes, key: int, section: str) -> bool:
    """Whether the key at `key` directly follows `"<section>": {`."""
    brace = last_non_ws(data, key)
    colon = last_non_ws(data, brace) if brace >= 0 and data[brace] == _OPEN else -1
    quote = last_non_ws(data, colon) if colon >= 0 and data[colon] == _COLON else -1
    name = b'"' + section.encode() + b'"'
    return quote >= 0 and data[quote + 1 - len(name) : quote + 1] == name


def _section_spans(
    data: bytes, section: str, names: Sequence[str], wanted: AbstractSet[str]
) -> list[tuple[str, Span]] | None:
    found: list[tuple[str, Span]] = []
    located = [i for i, name in enumerate(names) if name in wanted]
    if not located:
        return found
    # The walk starts at the section's first key, right after `"<section>": {`: a copy of a
    # record elsewhere before it (in `info`, say) is never taken for the record.
    start = _find_key(data, names[0], 0)
    while start >= 0 and not opens_section(data, start, section):
        start = _find_key(data, names[0], start + 1)
    if start < 0:
        return None
    known, known_at = start, 0  # the key position found for the entry after the last located
    for i in located:
        key = known if known_at == i else _find_key(data, names[i], start)
        if key < 0:
            return None
        before = last_non_ws(data, key)
        if before < 0 or data[before] != (_OPEN if i == 0 else _COMMA):
            return None
        value = skip_ws(data, skip_ws(data, key + len(names[i].encode()) + 2) + 1)
        if i + 1 < len(names):
            next_key = _find_key(data, names[i + 1], value)
            comma = last_non_ws(data, next_key) if next_key >= 0 else -1
            if comma < 0 or data[comma] != _COMMA:
                return None
            end = last_non_ws(data, comma) + 1
            known, known_at, start = next_key, i + 1, next_key
        else:
            next_key, end = -1, last_value_end(data, value)
            if end < 0:
                return None
        if end <= value:
            return None
        found.append((names[i], Span(section, i, before, key, value, end, next_key)))
    return found


def locate(
    data: bytes, order: Mapping[str, Sequence[str]], wanted: AbstractSet[str]
) -> dict[str, Span] | None:
    """The spans of the `wanted` entries of `data`, an index whose package sections list
    `order`'s filenames in that order (as msgspec parsed them). None on any doubt; the caller
    checks each span's value against the record it parsed."""
    spans: dict[str, Span] = {}
    for section, names in order.items():
        located = _section_spans(data, section, names, wanted)
        if located is None:
            return None
        for name, span in located:
            if name in spans:  # listed in both sections: which one counts is not ours to say
                return None
            spans[name] = span
    return spans


def cut(
    data: bytes, spans: Mapping[str, Span], skip: AbstractSet[str]
) -> list[bytes | memoryview] | None:
    """`data` as parts that, joined, are the same document without the `skip` entries (each
    located in `spans`). A leading run of a section goes with the comma after it, any other
    entry with the comma before it."""
    if not skip <= spans.keys():
        return None
    by_section: dict[str, list[Span]] = {}
    for name in skip:
        span = spans[name]
        by_section.setdefault(span.section, []).append(span)
    cuts: list[tuple[int, int]] = []
    for entries in by_section.values():
        entries.sort(key=lambda s: s.position)
        run = 0  # entries 0..run-1 of the section are all cut
        while run < len(entries) and entries[run].position == run:
            run += 1
        if run:
            last = entries[run - 1]
            cuts.append((entries[0].key, last.next_key if last.next_key >= 0 else last.end))
        cuts.extend((span.before, span.end) for span in entries[run:])
    cuts.sort()
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    pos = 0
    for begin, end in cuts:
        if begin < pos:
            return None
        parts.append(view[pos:begin])
        pos = end
    parts.append(view[pos:])
    return parts
