"""Pure planning: compare upstream records with what the target verifiably holds."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Protocol

from condasync.models import FileState, Plan


class Planned(Protocol):
    """What planning needs of a record (repodata.Lite has it)."""

    @property
    def size(self) -> int: ...
    @property
    def digest(self) -> str: ...


def unchanged(wanted: Mapping[str, Planned], local: Mapping[str, FileState]) -> set[str]:
    """Filenames whose record matches what we hold (same size and digest)."""
    get = local.get
    return {
        fn
        for fn, record in wanted.items()
        if (state := get(fn)) is not None
        and state.digest == record.digest
        and state.size == record.size
    }


def build_plan(
    wanted: Mapping[str, Planned],
    local: Mapping[str, FileState],
    keep_removed: bool,
    removed_upstream: AbstractSet[str] = frozenset(),
    same: AbstractSet[str] | None = None,
) -> Plan:
    """Decide add/replace/delete/keep per filename. No I/O.

    `removed_upstream` are local files upstream no longer lists at all (as opposed to files
    our filters now exclude); `--keep-removed` keeps only those. `same` is `unchanged(wanted,
    local)` when the caller has it already. Set operations on key views keep this in C for
    600k records.
    """
    if same is None:
        same = unchanged(wanted, local)
    changed = wanted.keys() - same  # small: one pass over wanted, lookups in `same`
    add = {fn for fn in changed if fn not in local}
    gone = local.keys() - wanted.keys()
    kept_gone = gone & removed_upstream if keep_removed else set()
    if len(same) == len(wanted) - len(changed):
        keep = tuple(same)  # `same` lies within `wanted`: no intersection needed
    else:
        keep = tuple(fn for fn in same if fn in wanted)
    return Plan(
        add=tuple(sorted(add)),
        replace=tuple(sorted(changed - add)),
        delete=tuple(sorted(gone - kept_gone)),
        keep=keep + tuple(kept_gone),
    )
