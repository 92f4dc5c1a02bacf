"""Pure planning: compare upstream records with what the target verifiably holds."""

from __future__ import annotations

from condasync.models import FileState, Plan, Record
from condasync.repodata import digest_of


def build_plan(
    wanted: dict[str, Record],
    local: dict[str, FileState],
    keep_removed: bool,
    removed_upstream: set[str] | frozenset[str] = frozenset(),
) -> Plan:
    """Decide add/replace/delete/keep per filename. No I/O.

    `removed_upstream` are local files upstream no longer lists at all (as opposed to files
    our filters now exclude); `--keep-removed` keeps only those.
    """
    add, replace, keep = [], [], []
    for filename, record in wanted.items():
        state = local.get(filename)
        if state is None:
            add.append(filename)
        elif state.digest != digest_of(record) or state.size != record["size"]:
            replace.append(filename)
        else:
            keep.append(filename)
    delete = []
    for filename in local:
        if filename in wanted:
            continue
        if keep_removed and filename in removed_upstream:
            keep.append(filename)
        else:
            delete.append(filename)
    return Plan(
        add=tuple(sorted(add)),
        replace=tuple(sorted(replace)),
        delete=tuple(sorted(delete)),
        keep=tuple(keep),
    )
