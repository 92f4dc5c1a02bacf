"""Pure planning: validate and select upstream records, and compare them with what the target
verifiably holds."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime, timezone
from typing import Any, Protocol

import msgspec

from condasync.channel.bigindex import Index, Lite
from condasync.channel.repodata import check_filename, check_record, split_filename
from condasync.engine.filters import Filters, include_names, select
from condasync.errors import MassDeleteError
from condasync.models import FileState, Plan


class Planned(Protocol):
    """What planning needs of a record (repodata.Lite has it)."""

    @property
    def size(self) -> int: ...
    @property
    def digest(self) -> str: ...


def changed(wanted: Mapping[str, Planned], local: Mapping[str, FileState]) -> set[str]:
    """Filenames whose record we do not hold: new, or a different size or digest.

    The result is small (what changed upstream), so nothing downstream builds or probes a set
    of all 600k names.
    """
    get = local.get
    return {
        fn
        for fn, record in wanted.items()
        if (state := get(fn)) is None or state.digest != record.digest or state.size != record.size
    }


def build_plan(
    wanted: Mapping[str, Planned],
    local: Mapping[str, FileState],
    keep_removed: bool,
    removed_upstream: AbstractSet[str] = frozenset(),
    differ: AbstractSet[str] | None = None,
    present: AbstractSet[str] = frozenset(),
) -> Plan:
    """Decide add/replace/delete per filename. No I/O.

    `removed_upstream` are local files upstream no longer lists at all (as opposed to files
    our filters now exclude); `--keep-removed` keeps only those. `differ` is `changed(...)`
    over a superset of `wanted` when the caller has it already. `present` is what a listing
    of the folder found, when one was made: a package file there that neither our state nor
    `wanted` knows (a killed run put it in place, then upstream dropped it) is a stray, to
    delete as well.
    """
    if differ is None:
        differ = changed(wanted, local)
    todo = {fn for fn in differ if fn in wanted}
    add = {fn for fn in todo if fn not in local}
    gone = local.keys() - wanted.keys()
    kept_gone = gone & removed_upstream if keep_removed else set()
    strays = {fn for fn in present - local.keys() - wanted.keys() if check_filename(fn) is None}
    return Plan(
        add=tuple(sorted(add)),
        replace=tuple(sorted(todo - add)),
        delete=tuple(sorted(gone - kept_gone)),
        kept_removed=tuple(sorted(kept_gone)),
        unchanged=len(wanted) - len(todo),
        strays=tuple(sorted(strays)),
    )


def validate_records(
    index: Index, local: dict[str, FileState], candidates: dict[str, Lite] | None = None
) -> tuple[dict[str, Lite], dict[str, str], set[str]]:
    """Records safe to mirror, why the others are not, and which differ from our files.

    Only `candidates` (default: every record) are checked: a filtered run validates what it
    selected, not 600k records. A record that matches a file we already verified (same name,
    size and digest) passed these checks on an earlier run; only new and changed records are
    checked again.
    """
    pool = index.lite if candidates is None else candidates
    differ = changed(pool, local)
    rejected = dict(index.rejected)
    found = index.records(differ)
    for filename in differ:
        reason = check_filename(filename) or check_record(msgspec.json.decode(found[filename]))
        if reason is not None:
            rejected[filename] = reason
    if len(rejected) == len(index.rejected):
        return pool, rejected, differ
    valid = {fn: lite for fn, lite in pool.items() if fn not in rejected}
    return valid, rejected, {fn for fn in differ if fn not in rejected}


def select_and_validate(
    index: Index,
    local: dict[str, FileState],
    filters: Filters,
    subdir: str,
    chosen: AbstractSet[str] | None = None,
) -> tuple[dict[str, Lite], dict[str, str], set[str]]:
    """Select first (the closure step's `chosen` filenames, else the filters), then validate
    only the selected records: (selected and valid, rejected, differ)."""
    if chosen is not None:
        candidates = index.views(chosen)
    elif filters.active:
        candidates = select_records(index, filters, subdir)
    else:
        candidates = index.lite
    return validate_records(index, local, candidates)


def _raw(index: Index, filename: str) -> msgspec.Raw:
    """The upstream JSON of a record known to be listed (it has a typed view)."""
    found = index.raw(filename)
    assert found is not None
    return found


class _Brief(msgspec.Struct, gc=False):
    """What --latest and --exclude-newer look at."""

    name: str
    version: str
    timestamp: int | float | None = None


_brief = msgspec.json.Decoder(_Brief)


def select_records(index: Index, filters: Filters, subdir: str) -> dict[str, Lite]:
    """Apply the filters, decoding as little of 600k records as each filter needs."""
    if not filters.active:
        return index.lite
    names = include_names(filters)  # `--include numpy`: only numpy-* files are candidates
    if names is None:
        valid = index.lite
        candidates = list(valid)
    else:  # one C-level prefix test per key, then a full split of the few that pass
        valid = index.named(names)
        candidates = [
            fn for fn in valid if (parts := split_filename(fn)) is not None and parts[0] in names
        ]
    # a few records are cut from upstream's bytes; many mean one raw pass over the document
    found = index.records(set(candidates)) if candidates else {}
    records: dict[str, dict[str, Any]] = {}
    for fn in candidates:
        raw = found.get(fn) or _raw(index, fn)
        if filters.include or filters.exclude:  # MatchSpecs see whole records
            records[fn] = msgspec.json.decode(raw)
        else:
            try:
                brief = _brief.decode(raw)
                records[fn] = {"name": brief.name, "version": brief.version}
                records[fn]["timestamp"] = brief.timestamp
            except msgspec.ValidationError:
                records[fn] = msgspec.json.decode(raw)
    chosen = select(records, filters, subdir, datetime.now(timezone.utc))
    return {fn: lite for fn, lite in valid.items() if fn in chosen}


def without_proxied(selected: dict[str, Lite], proxied: tuple[str, ...]) -> dict[str, Lite]:
    """The records whose files are copied: all but those of proxied package names (their
    records are published, their files fetched from upstream by the server on request)."""
    if not proxied:
        return selected
    names = frozenset(proxied)
    return {
        fn: lite
        for fn, lite in selected.items()
        if (parts := split_filename(fn)) is None or parts[0] not in names
    }


def check_max_delete(
    max_delete: float, subdir: str, deletes: int, held: int, raise_error: bool = True
) -> bool:
    """The mass-deletion guard: an empty or truncated upstream index, or a filter changed by
    mistake, must not empty a mirror. True when the run may go on."""
    if held == 0 or deletes * 100 <= max_delete * held:
        return True
    if not raise_error:
        return False
    raise MassDeleteError(
        f"{subdir}: this run would delete {deletes} of {held} packages"
        f" ({deletes * 100 / held:.0f}%, more than --max-delete {max_delete:g}%);"
        " nothing was published or deleted there. If the shrink is intended, run again"
        " with --max-delete 100"
    )
