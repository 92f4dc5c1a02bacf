"""Pure planning: compare upstream records with what the target verifiably holds."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Protocol

from condasync.models import FileState, Plan
from condasync.repodata import check_filename


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
