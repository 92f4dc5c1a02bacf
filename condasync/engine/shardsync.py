"""The shard steps of one subdir's mirror run (DESIGN.md §2): shards for exactly the records
of the published repodata.json, an interim shard index around same-name replacements, the
final one before repodata.json.zst, and strays and orphans after the deletions.
"""

from __future__ import annotations

import time
import zlib
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from functools import partial
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
from condasync.engine.forked import Forked
from condasync.engine.shardpub import (
    ShardPublisher,
    ShardSet,
    collect_orphans,
    due,
    index_path,
    load_retired,
)
from condasync.models import Record
from condasync.storage import StagedFile, Storage

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
        self.groups: Mapping[str, NameRecords] | None = {}  # None: not here (see _take)
        self._source: _Source | None = None  # prepare's arguments (see begin)
        self._children: list[Forked[_Handover]] = []
        self._cancelled = False
        self._surveyed = False
        self._part = (0, 1)  # this process's share of the names: (k, parts)
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

    def begin(
        self,
        index: Index,
        published: set[str] | None,
        kept_removed: dict[str, msgspec.Raw],
        replace: Iterable[str],
        order: Mapping[str, Sequence[str]] | None,
        apart: bool,
        parts: int = 1,
    ) -> None:
        """Start `prepare` (no download failed yet). `apart`: in forked children of a local
        tree's run, where the work does not stall the downloads (engine/forked.py), `parts`
        of them each with a share of the names (more than one while nothing downloads); call
        it from the event loop's thread. `complete` ends it."""
        self._source = (index, published, kept_removed, tuple(replace), order)
        if apart and self.enabled and self.storage.local:
            self._survey()  # once, here: the children see the same shards folder
            self._children = [Forked(partial(self._in_child, k, parts)) for k in range(parts)]

    def complete(self) -> None:
        """(In a worker thread.) Take the children's prepared shards over, or prepare here
        when there is no child or one failed (a real error then surfaces here)."""
        handovers = [child.result() for child in self._children]  # left for cancel() meanwhile
        self._children = []
        if self._cancelled:
            return
        if handovers and all(h is not None for h in handovers):
            self._take([h for h in handovers if h is not None])
        elif self._source is not None:
            index, published, kept_removed, replace, order = self._source
            self.prepare(index, published, set(), kept_removed, replace, order)

    def cancel(self) -> None:
        """The run failed: children preparing shards are killed (`complete` then returns)."""
        self._cancelled = True
        for child in self._children:
            child.kill()

    def _in_child(self, part: int, parts: int) -> _Handover:
        assert self._source is not None
        index, published, kept_removed, replace, order = self._source
        self._part = (part, parts)
        pub = self.pub
        if pub.stager is not None:
            pub.stager.always_bulk = True  # no download here to stall: write as encoded
        self.prepare(index, published, set(), kept_removed, replace, order)
        staged = pub.stager.settle() if pub.stager is not None else {}
        done = staged.keys() | pub.in_place
        for shards in (self.final, self.partial):  # their bytes are in the staged files
            if shards is not None:
                shards.new_files = {h: b"" if h in done else d for h, d in shards.new_files.items()}
                shards.encoded = {}  # costly to pickle; only a failed download needs them
        return _Handover(
            self.final, self.partial, self.replaced, pub.digests, pub.in_place, staged,
            self.seconds,
        )  # fmt: skip

    def _take(self, handovers: list[_Handover]) -> None:
        """The children's shares, merged (the interim shards come from part 0)."""
        pub = self.pub
        final = ShardSet()
        for got in handovers:
            assert got.final is not None
            final.names.update(got.final.names)
            final.new_files.update(got.final.new_files)
            pub.digests.update(got.digests)
            pub.in_place |= got.in_place
            if pub.stager is not None:
                pub.stager.adopt(got.staged)
        self.final, self.partial, self.replaced = final, handovers[0].partial, handovers[0].replaced
        self.groups = None  # grouped here only if a download fails (see _grouped)
        self.seconds += max(got.seconds for got in handovers)

    def _grouped(self) -> Mapping[str, NameRecords]:
        if self.groups is None:
            assert self._source is not None
            index, published, kept_removed, _, order = self._source
            self.groups, _ = _group(index, published, set(), kept_removed, order)
        return self.groups

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
            groups, digests = _group(index, published, skip, kept_removed, order)
            self._prepare(groups, digests, replace)
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
        (`digests`: those of each name, when the groups have them ready). In a child that
        has a part of the names (see begin), only those, and the interim shards in part 0."""
        if not self._surveyed:
            self._survey()
        pub = self.pub
        self.groups = groups
        pub.digests.update(digests)
        self.replaced = frozenset(replace)
        keep = {package_name(fn) for fn in self.replaced}  # encoded again for the interim
        part, parts = self._part
        self.final = pub.plan(groups if parts == 1 else _Part(groups, part, parts), keep=keep)
        if self.replaced and part == 0:
            self.partial = self._plan_partial(self.replaced)
        if pub.stager is not None:
            pub.stager.start()  # the new files are written while the downloads finish

    def _survey(self) -> None:
        """Clear a killed run's staged shards, and list shards/ unless it is as we left it."""
        self._surveyed = True
        folder = f"{self.subdir}/{SHARDS_DIR}"
        self.storage.clear_staging(folder)
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

    def _plan_partial(self, exclude: frozenset[str]) -> ShardSet:
        """Shards of the names of `exclude` without those files: made of the final shards'
        record encodings (kept for these names), or else encoded."""
        assert self.final is not None
        out = ShardSet()
        todo = {}
        groups = self._grouped()
        for name in {package_name(fn) for fn in exclude}:
            group = groups.get(name)
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
        groups = self._grouped()
        affected = {package_name(fn) for fn in skip} & groups.keys()
        changed = {name: groups[name].without(skip) for name in affected}
        # looked up first from now on (RunGroups decodes afresh each time); a ChainMap
        # changes only its first map
        self.groups = ChainMap(changed, cast(MutableMapping[str, NameRecords], groups))
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
        self._source = None  # no failure or interim shard to group for any more
        if self.final is not None:
            self.pub.publish(self.final)
        elif not self.enabled and (
            self.pub.published or self.storage.stat(index_path(self.subdir)) is not None
        ):
            self.pub.remove_index()
        self.seconds += time.monotonic() - clock

    def discard(self) -> None:
        """Shard files staged but never published go (after a failed or interrupted run, and
        after finish), with a child still preparing them."""
        if self._children:
            self.cancel()
            self.complete()
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


# prepare's arguments: index, published, kept_removed, replace, order
_Source = tuple[
    Index,
    "set[str] | None",
    "dict[str, msgspec.Raw]",
    tuple[str, ...],
    "Mapping[str, Sequence[str]] | None",
]


@dataclass
class _Handover:
    """What a child's `prepare` leaves that the run needs (see SubdirShards._in_child)."""

    final: ShardSet | None
    partial: ShardSet | None
    replaced: frozenset[str]
    digests: dict[str, str]
    in_place: set[str]
    staged: dict[str, StagedFile | None]
    seconds: float


class _Part(Mapping[str, NameRecords]):
    """The names of `groups` whose crc32 is `part` modulo `parts` (a child's share)."""

    def __init__(self, groups: Mapping[str, NameRecords], part: int, parts: int) -> None:
        self.groups = groups
        self.names = [n for n in groups if zlib.crc32(n.encode()) % parts == part]
        self.members = set(self.names)

    def __getitem__(self, name: str) -> NameRecords:
        if name not in self.members:
            raise KeyError(name)
        return self.groups[name]

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _group(
    index: Index,
    published: set[str] | None,
    skip: set[str],
    kept_removed: dict[str, msgspec.Raw],
    order: Mapping[str, Sequence[str]] | None,
) -> tuple[Mapping[str, NameRecords], dict[str, str]]:
    """The published records by name, and their digests when grouping made them: found in
    upstream's bytes (`order`) when every upstream record is published, else typed."""
    whole = published is None and not skip and not kept_removed
    groups = index_groups(index, order) if order is not None and whole else None
    if groups is not None:
        return groups, groups.digests()
    sections = published_sections(index, published, skip, kept_removed)
    return group_by_name(sections, index.removed), {}


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
