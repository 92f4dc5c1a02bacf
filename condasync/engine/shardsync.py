"""The shard steps of one subdir's mirror run (DESIGN.md §2): shards for exactly the records
of the published repodata.json, an interim shard index around same-name replacements, the
final one before repodata.json.zst, and strays and orphans after the deletions.
"""

from __future__ import annotations

import time
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, cast

import msgspec
import orjson

from condasync.channel.bigindex import Index, published_sections
from condasync.channel.repodata import gc_paused
from condasync.channel.shardencode import Encoded, assemble_shard
from condasync.channel.shardruns import index_groups
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
)
from condasync.models import Record
from condasync.storage import Storage

DEFAULT_GRACE = 15 * 60.0
# The digest of an interim shard's entry: never a records digest (so never taken for one), and
# never saved (the final index replaces the interim one before the state is written).
INTERIM = "interim"


class SubdirShards:
    """One subdir's shards through a mirror run: prepare, interim, final, finish."""

    def __init__(self, storage: Storage, subdir: str, enabled: bool, grace: float) -> None:
        self.storage, self.subdir = storage, subdir
        self.enabled, self.grace = enabled, grace
        self.started_ns = time.time_ns()
        self._pub: ShardPublisher | None = None  # its state is read in a worker thread
        self.groups: Mapping[str, NameRecords] = {}
        self.final: ShardSet | None = None
        # the replaced names' interim shards, made ahead for `replaced` (see publish_interim)
        self.partial: ShardSet | None = None
        self.replaced: frozenset[str] = frozenset()
        self.listed: dict[str, tuple[int, int]] | None = None  # shards/ when listed
        self.seconds = 0.0

    @property
    def pub(self) -> ShardPublisher:
        if self._pub is None:
            self._pub = ShardPublisher(self.storage, self.subdir, self.started_ns)
        return self._pub

    def prepare(
        self,
        index: Index,
        published: set[str] | None,
        skip: set[str],
        kept_removed: dict[str, msgspec.Raw],
        replace: Iterable[str] = (),
        order: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Group the published records and encode the names that changed, and the interim
        shards for `replace` (the files about to change under their name). Nothing is
        published; new shard files go to the staging folder. With `order` (the index's
        filenames per section, which the plan freed from it), a mirror that publishes every
        upstream record finds the changed names in upstream's bytes."""
        if not self.enabled:
            return
        clock = time.monotonic()
        with gc_paused():  # a million new objects, none of them cyclic
            whole = published is None and not skip and not kept_removed
            groups = index_groups(index, order) if order is not None and whole else None
            if groups is not None:
                self._prepare(groups, groups.digests(), replace)
            else:
                sections = published_sections(index, published, skip, kept_removed)
                self._prepare(group_by_name(sections, index.removed), {}, replace)
        self.seconds += time.monotonic() - clock

    def prepare_sections(
        self,
        sections: Mapping[str, Mapping[str, bytes | msgspec.Raw]],
        removed: list[Any],
        replace: Iterable[str] = (),
    ) -> None:
        clock = time.monotonic()
        self._prepare(group_by_name(sections, removed), {}, replace)
        self.seconds += time.monotonic() - clock

    def _prepare(
        self, groups: Mapping[str, NameRecords], digests: dict[str, str], replace: Iterable[str]
    ) -> None:
        """Plan the final and interim shards of the published records grouped by name
        (`digests`: those of each name, when the groups have them ready)."""
        folder = f"{self.subdir}/{SHARDS_DIR}"
        self.storage.clear_staging(folder)  # a killed run's staged shards
        seen = self.storage.stat(folder) if self.storage.local else None
        pub = self.pub
        if seen is None or list(seen) != pub.state.folder or not pub.published:
            # Someone else touched the shards (or an object store, with no folder mtime):
            # a shard our state names but that is gone (or truncated) is encoded again.
            self.listed = self.storage.listing(folder)
            present = {
                fn.split(".", 1)[0]: st[0]
                for fn, st in self.listed.items()
                if is_shard_filename(fn)
            }
            pub.present = present
            pub.published = {
                name: entry for name, entry in pub.published.items() if entry[1] in present
            }
        self.groups = groups
        pub.digests.update(digests)
        self.replaced = frozenset(replace)
        keep = {package_name(fn) for fn in self.replaced}  # encoded again for the interim
        self.final = pub.plan(self.groups, keep=keep)
        if self.replaced:
            self.partial = self._plan_partial(self.replaced)
        if pub.stager is not None:
            pub.stager.start()  # the new files are written while the downloads finish

    def _plan_partial(self, exclude: frozenset[str]) -> ShardSet:
        """Shards of the names of `exclude` without those files: made of the final shards'
        record encodings (kept for these names), or else encoded."""
        assert self.final is not None
        out = ShardSet()
        todo = {}
        for name in {package_name(fn) for fn in exclude}:
            group = self.groups.get(name)
            if group is None:
                continue
            packages, conda = (
                [fn for fn in filenames if fn not in exclude] for filenames in group.filenames()
            )
            wanted = {*packages, *conda}
            if not wanted:
                continue  # no record left: no shard (as plan_shards)
            encoded = self.final.encoded.get(name)
            if encoded is not None and _holds(encoded, packages, conda):
                shard = assemble_shard(encoded, group.removed, _filenames(encoded) - wanted)
                out.add(name, INTERIM, shard)
                self.pub.stage(shard.sha.hex(), shard.data)
            else:
                todo[name] = group.without(exclude)
        if todo:
            more = self.pub.plan(todo, final=False)
            out.names.update(more.names)
            out.new_files.update(more.new_files)
        return out

    def drop(self, skip: set[str]) -> None:
        """Leave out records whose download failed (prepare ran assuming none would)."""
        if self.final is None or not skip:
            return
        clock = time.monotonic()
        affected = {package_name(fn) for fn in skip} & self.groups.keys()
        changed = {name: self.groups[name].without(skip) for name in affected}
        # looked up first from now on (RunGroups decodes afresh each time); a ChainMap
        # changes only its first map
        self.groups = ChainMap(changed, cast(MutableMapping[str, NameRecords], self.groups))
        keep = affected & self.final.encoded.keys()
        redone = self.pub.plan(changed, False, keep)
        for name in affected:
            self.final.names.pop(name, None)
            self.final.encoded.pop(name, None)
        self.final.names.update(redone.names)
        self.final.new_files.update(redone.new_files)
        self.final.encoded.update(redone.encoded)
        if self.partial is not None and affected & self.partial.names.keys():
            self.partial = None  # made for groups that changed since
        self.seconds += time.monotonic() - clock

    def publish_interim(self, exclude: set[str]) -> None:
        """Before same-name replacements move in: an index whose shards leave out `exclude`
        (the replaced files; added ones are already in place)."""
        if self.final is None or not exclude:
            return
        clock = time.monotonic()
        if self.partial is None or exclude != self.replaced:
            self.replaced = frozenset(exclude)
            self.partial = self._plan_partial(self.replaced)
        partial = self.partial
        affected = {package_name(fn) for fn in exclude}
        interim = ShardSet()
        interim.names = {n: e for n, e in self.final.names.items() if n not in affected}
        interim.names.update(partial.names)
        interim.new_files = {**self.final.new_files, **partial.new_files}
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

    def discard(self) -> None:
        """Shard files staged but never published go (after a failed or interrupted run, and
        after finish)."""
        if self._pub is not None and self._pub.stager is not None:
            self._pub.stager.close()
            self.storage.clear_staging(f"{self.subdir}/{SHARDS_DIR}")

    def finish(self) -> list[str]:
        """After the deletions: record state, retire strays, delete orphans that are due."""
        clock = time.monotonic()
        pub = self.pub
        self.discard()  # before the shards folder is recorded
        if self.listed is not None:
            pub.adopt_strays(fn for fn in self.listed if is_shard_filename(fn))
        named = {shard for _, shard, _ in pub.published.values()}
        deleted = collect_orphans(
            self.storage, self.subdir, self.grace, self.started_ns, pub.retired, named
        )
        pub.save()  # last: it records the shards folder as this run leaves it
        self.seconds += time.monotonic() - clock
        return deleted

    @property
    def files_written(self) -> int:
        return self._pub.files_written if self._pub is not None else 0


def _filenames(encoded: Encoded) -> set[str]:
    return {fn for records in encoded.sections.values() for fn in records}


def _holds(encoded: Encoded, packages: Iterable[str], conda: Iterable[str]) -> bool:
    """Whether `encoded` has a record for each of these filenames (in its section)."""
    sections = encoded.sections
    return sections.get("packages", {}).keys() >= set(packages) and (
        sections.get("packages.conda", {}).keys() >= set(conda)
    )


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
