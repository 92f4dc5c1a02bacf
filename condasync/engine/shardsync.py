"""The shard steps of one subdir's mirror run (DESIGN.md §2): shards for exactly the records
of the published repodata.json, an interim shard index around same-name replacements, the
final one before repodata.json.zst, and strays and orphans after the deletions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import orjson

from condasync.channel.bigindex import Index, published_sections
from condasync.channel.shards import (
    SHARDS_DIR,
    NameRecords,
    group_by_name,
    is_shard_filename,
    package_name,
)
from condasync.engine.shardpub import (
    ShardPublisher,
    ShardSet,
    collect_orphans,
    due,
    index_path,
    load_retired,
    plan_shards,
)
from condasync.models import Record
from condasync.storage import Storage

DEFAULT_GRACE = 15 * 60.0


class SubdirShards:
    """One subdir's shards through a mirror run: prepare, interim, final, finish."""

    def __init__(self, storage: Storage, subdir: str, enabled: bool, grace: float) -> None:
        self.storage, self.subdir = storage, subdir
        self.enabled, self.grace = enabled, grace
        self.started_ns = time.time_ns()
        self.pub = ShardPublisher(storage, subdir, self.started_ns)
        self.groups: dict[str, NameRecords] = {}
        self.final: ShardSet | None = None
        self.listed: dict[str, tuple[int, int]] | None = None  # shards/ when listed
        self.seconds = 0.0

    def prepare(
        self,
        index: Index,
        published: set[str] | None,
        skip: set[str],
        kept_removed: dict[str, msgspec.Raw],
    ) -> None:
        """Group the published records and encode the names that changed (no writes)."""
        if self.enabled:
            sections = published_sections(index, published, skip, kept_removed)
            self.prepare_sections(sections, index.removed)

    def prepare_sections(
        self, sections: Mapping[str, Mapping[str, bytes | msgspec.Raw]], removed: list[Any]
    ) -> None:
        clock = time.monotonic()
        folder = f"{self.subdir}/{SHARDS_DIR}"
        seen = self.storage.stat(folder) if self.storage.local else None
        if seen is None or list(seen) != self.pub.state.folder or not self.pub.published:
            # Someone else touched the shards (or an object store, with no folder mtime):
            # a shard our state names but that is gone (or truncated) is encoded again.
            self.listed = self.storage.listing(folder)
            present = {
                fn.split(".", 1)[0]: st[0]
                for fn, st in self.listed.items()
                if is_shard_filename(fn)
            }
            self.pub.present = present
            self.pub.published = {
                name: entry for name, entry in self.pub.published.items() if entry[1] in present
            }
        self.groups = group_by_name(sections, removed)
        self.final = self.pub.plan(self.groups)
        self.seconds += time.monotonic() - clock

    def drop(self, skip: set[str]) -> None:
        """Leave out records whose download failed (prepare ran assuming none would)."""
        if self.final is None or not skip:
            return
        clock = time.monotonic()
        affected = {package_name(fn) for fn in skip} & self.groups.keys()
        for name in affected:
            group = self.groups[name]
            group.packages = {fn: r for fn, r in group.packages.items() if fn not in skip}
            group.conda = {fn: r for fn, r in group.conda.items() if fn not in skip}
            group.hasher = None  # its records changed: hashed again from them
        redone = plan_shards({n: self.groups[n] for n in affected}, self.pub.published)
        stale = {self.final.names[n][1] for n in affected if n in self.final.names}
        for name in affected:
            self.final.names.pop(name, None)
        self.final.names.update(redone.names)
        still = {shard for _, shard, _ in self.final.names.values()}
        for shard in stale - still:
            self.final.new_files.pop(shard, None)
        self.final.new_files.update(redone.new_files)
        self.seconds += time.monotonic() - clock

    def publish_interim(self, exclude: set[str]) -> None:
        """Before same-name replacements move in: an index whose shards leave out `exclude`
        (the replaced files; added ones are already in place)."""
        if self.final is None or not exclude:
            return
        clock = time.monotonic()
        affected = {package_name(fn) for fn in exclude}
        interim_groups = {}
        for name in affected:
            group = self.groups.get(name)
            if group is None:
                continue
            interim_groups[name] = NameRecords(
                {fn: r for fn, r in group.packages.items() if fn not in exclude},
                {fn: r for fn, r in group.conda.items() if fn not in exclude},
                list(group.removed),
            )
        partial = plan_shards(interim_groups, self.pub.published)
        interim = ShardSet()
        interim.names = {n: e for n, e in self.final.names.items() if n not in affected}
        interim.names.update(partial.names)
        interim.new_files = {**self.final.new_files, **partial.new_files}
        self.final.new_files = {}
        self.pub.publish(interim)
        self.seconds += time.monotonic() - clock

    def publish_final(self) -> None:
        """New shard files, then the shard index: right before repodata.json.zst. With
        shards off, the index goes now and its shards after the grace period."""
        clock = time.monotonic()
        if self.final is not None:
            self.pub.publish(self.final)
        elif not self.enabled and (
            self.pub.published or self.storage.stat(index_path(self.subdir)) is not None
        ):
            self.pub.remove_index()
        self.seconds += time.monotonic() - clock

    def finish(self) -> list[str]:
        """After the deletions: record state, retire strays, delete orphans that are due."""
        clock = time.monotonic()
        if self.listed is not None:
            self.pub.adopt_strays(fn for fn in self.listed if is_shard_filename(fn))
        named = {shard for _, shard, _ in self.pub.published.values()}
        deleted = collect_orphans(
            self.storage, self.subdir, self.grace, self.started_ns, self.pub.retired, named
        )
        self.pub.save()  # last: it records the shards folder as this run leaves it
        self.seconds += time.monotonic() - clock
        return deleted

    @property
    def files_written(self) -> int:
        return self.pub.files_written


def publish_index_shards(
    storage: Storage, subdir: str, records: Mapping[str, Record], grace: float = DEFAULT_GRACE
) -> int:
    """`index`: shards for the records of the repodata.json about to be published (before
    it), incrementally. Returns the shard files written."""
    sections: dict[str, dict[str, bytes]] = {"packages": {}, "packages.conda": {}}
    for filename, record in records.items():
        key = "packages.conda" if filename.endswith(".conda") else "packages"
        sections[key][filename] = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    shards = SubdirShards(storage, subdir, True, grace)
    shards.prepare_sections(sections, [])
    shards.publish_final()
    shards.finish()
    return shards.files_written


def collect_unchanged(
    storage: Storage, subdir: str, grace: float, before_write: Callable[[], None]
) -> list[str]:
    """A run with nothing to publish may still delete orphan shards that are due (and
    writes nothing when none are)."""
    retired = load_retired(storage, subdir)
    started = time.time_ns()
    if not any(due(when, started, grace) for when in retired.shards.values()):
        return []
    before_write()
    return collect_orphans(storage, subdir, grace, started, retired)
