"""PURE: an index document with some records cut out of its own bytes, without re-encoding.

The interim index of a sync (upstream's index minus the records whose files are not in place
yet) is upstream's document with a few thousand entries removed. Encoding 600k records again
to drop them costs a second of CPU while the packages download; cutting them out of the bytes
is a memory copy. Every cut is checked against the parsed records (the key is a key, its
value is byte for byte the record msgspec parsed), and anything unexpected (an escaped key,
a key listed twice with different records, odd layout) returns None: the caller then encodes
as before. One case passes unseen: a key listed twice with byte-identical records keeps its
second copy (checking for it costs a scan of the whole document per cut record).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet

import msgspec

_WS = b" \t\r\n"


def _skip_ws(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] in _WS:
        pos += 1
    return pos


def _skip_ws_back(data: bytes, pos: int) -> int:
    """The index of the last non-whitespace byte before `pos` (-1 if none)."""
    pos -= 1
    while pos >= 0 and data[pos] in _WS:
        pos -= 1
    return pos


def _entry(data: bytes, filename: str, raw: msgspec.Raw, start: int) -> tuple[int, int] | None:
    """(key start, value end) of `filename`'s entry at or after `start`, checked."""
    needle = b'"' + filename.encode() + b'"'
    pos = data.find(needle, start)
    while pos >= 0:
        colon = _skip_ws(data, pos + len(needle))
        if colon < len(data) and data[colon] == 0x3A:  # a key, not a string value
            value = _skip_ws(data, colon + 1)
            end = value + len(raw)
            return (pos, end) if memoryview(data)[value:end] == memoryview(raw) else None
        pos = data.find(needle, pos + 1)
    return None


def _section_cuts(
    data: bytes, records: Mapping[str, msgspec.Raw], skip: AbstractSet[str]
) -> list[tuple[int, int]] | None:
    """Byte ranges that remove `skip`'s entries (and one separator each) from one section."""
    cuts: list[tuple[int, int]] = []
    start = 0
    prefix_end = 0  # entries 0..prefix_end-1 are all skipped so far
    prefix_from = prefix_last = -1  # where the leading run starts, and its last value ends
    for i, (filename, raw) in enumerate(records.items()):
        if filename not in skip:
            continue
        found = _entry(data, filename, raw, start)
        if found is None:
            return None
        key, end = found
        before = _skip_ws_back(data, key)
        if i == prefix_end:  # a leading run: cut up to the next kept key, with its comma
            if i == 0:
                if before < 0 or data[before] != 0x7B:  # "{"
                    return None
                prefix_from = key
            prefix_end, prefix_last = i + 1, end
        elif before < 0 or data[before] != 0x2C:  # ","
            return None
        else:
            cuts.append((before, end))
        start = end
    if prefix_end:
        # the leading run ends at the next kept entry's key (its separator goes too), or
        # at the end of the run when nothing is kept
        if prefix_end < len(records):
            after = _skip_ws(data, prefix_last)
            if after >= len(data) or data[after] != 0x2C:
                return None
            nxt = _skip_ws(data, after + 1)
            cuts.insert(0, (prefix_from, nxt))
        else:
            cuts.insert(0, (prefix_from, prefix_last))
    return cuts


def cut_records(
    data: bytes, sections: Mapping[str, Mapping[str, msgspec.Raw]], skip: AbstractSet[str]
) -> list[memoryview] | None:
    """`data` (an index whose records msgspec parsed into `sections`, values pointing into
    it) as parts that, joined, are the same document without the `skip` records.

    None when the bytes do not line up with the records as expected.
    """
    cuts: list[tuple[int, int]] = []
    for records in sections.values():
        if not records.keys() & skip:
            continue
        found = _section_cuts(data, records, skip)
        if found is None:
            return None
        cuts.extend(found)
    cuts.sort()
    parts: list[memoryview] = []
    view = memoryview(data)
    pos = 0
    for begin, end in cuts:
        if begin < pos:  # overlapping cuts: the sections are not where they seem
            return None
        parts.append(view[pos:begin])
        pos = end
    parts.append(view[pos:])
    return parts
