"""Publishing a subdir's shards (CEP-16) incrementally: encode only the names whose records
changed, write new shard files before the shard index (staged while they are encoded, on a
local target), retire shards no longer named, and delete retired ones once their grace period
has passed. State: `.condasync/<subdir>.shards*`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Set
from concurrent.futures import Future, ThreadPoolExecutor

import msgspec

from condasync.channel.shardencode import Encoded, Shard, build_shard
from condasync.channel.shards import (
    SHARD_INDEX,
    SHARDS_DIR,
    NameRecords,
    created_at,
    encode_shard_index,
    is_shard_filename,
)
from condasync.storage import STATE_DIR, StagedFile, Storage

WRITE_BATCH = 256  # shard files per storage.publish call (one thread each)
WRITE_THREADS = 2
S3_THREADS = 16  # PUTs are round trips: more of them in flight


class ShardState(msgspec.Struct):
    """What the published shard index names: name -> (records digest hex, shard sha256 hex,
    newest record timestamp in ms)."""

    names: dict[str, tuple[str, str, int]] = msgspec.field(default_factory=dict)
    index_stat: list[int] = msgspec.field(default_factory=list)  # [size, mtime_ns] we left
    folder: list[int] = msgspec.field(default_factory=list)  # shards/ as we left it (local)


class Retired(msgspec.Struct):
    """Shards no longer named, with the time (ns) the index that named them was replaced."""

    shards: dict[str, int] = msgspec.field(default_factory=dict)


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`15m`, `90s`, `2h`, `1d`, `0`: seconds. ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 15m, 90s, 2h, 1d or 0")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _state_path(subdir: str) -> str:
    return f"{STATE_DIR}/{subdir}.shards.json"


def _retired_path(subdir: str) -> str:
    return f"{STATE_DIR}/{subdir}.shards-retired.json"


def index_path(subdir: str) -> str:
    return f"{subdir}/{SHARD_INDEX}"


def shard_path(subdir: str, hexdigest: str) -> str:
    return f"{subdir}/{SHARDS_DIR}/{hexdigest}.msgpack.zst"


def _load(storage: Storage, relpath: str, kind: type[ShardState] | type[Retired]) -> object:
    raw = storage.read(relpath)
    if raw is not None:
        try:
            return msgspec.json.decode(raw, type=kind)
        except msgspec.DecodeError:
            pass  # unreadable state costs a re-encode (or a late deletion), nothing more
    return kind()


def load_state(storage: Storage, subdir: str) -> ShardState:
    found = _load(storage, _state_path(subdir), ShardState)
    assert isinstance(found, ShardState)
    return found


def load_retired(storage: Storage, subdir: str) -> Retired:
    found = _load(storage, _retired_path(subdir), Retired)
    assert isinstance(found, Retired)
    return found


class ShardSet:
    """The shards one index names: name -> (records digest, shard sha256, newest), and the
    new files."""

    def __init__(self) -> None:
        self.names: dict[str, tuple[str, str, int]] = {}
        self.new_files: dict[str, bytes] = {}  # shard hex -> compressed bytes
        self.encoded: dict[str, Encoded] = {}  # name -> its records' encodings (`keep`)

    def hexes(self) -> set[str]:
        return {shard for _, shard, _ in self.names.values()}

    def add(self, name: str, digest: str, shard: Shard) -> None:
        hexdigest = shard.sha.hex()
        self.names[name] = (digest, hexdigest, shard.newest)
        self.new_files[hexdigest] = shard.data
        if shard.encoded is not None:
            self.encoded[name] = shard.encoded


Sink = Callable[[str, bytes], None]  # each new shard file as soon as it is encoded


def plan_shards(
    groups: Mapping[str, NameRecords],
    known: Mapping[str, tuple[str, str, int]],
    digests: dict[str, str] | None = None,
    sink: Sink | None = None,
    keep: Set[str] = frozenset(),
) -> ShardSet:
    """Encode only the names whose records' digest is not the one `known` has for them.
    `digests` (name -> digest hex) caches digests across calls for the same groups (and may
    come filled, for groups that are costly to look up); `keep`: names whose records'
    encodings the result keeps (ShardSet.encoded)."""
    out = ShardSet()
    for name in groups:  # a group is looked up only when needed (see shardruns.RunGroups)
        digest = digests.get(name) if digests is not None else None
        group = None
        if digest is None:
            group = groups[name]
            if group.empty():
                continue  # a name listed only in `removed` needs no shard
            digest = group.digest().hex()
            if digests is not None:
                digests[name] = digest
        previous = known.get(name)
        if previous is not None and previous[0] == digest:
            out.names[name] = previous
            continue
        group = groups[name] if group is None else group
        if group.empty():
            continue
        shard = build_shard(group, name in keep)
        out.add(name, digest, shard)
        if sink is not None:
            sink(shard.sha.hex(), shard.data)
    return out


class ShardStager:
    """A local target's new shard files, written to the staging folder before anything is
    published (during the downloads), each renamed into shards/ when an index about to name
    it is published. Files never committed go with the staging folder.

    Writer threads pass the GIL back and forth with the encoding thread at every system call,
    so a few files are queued and written once the encoding is done (`start`). A bulk write
    (most names new: a first write) is written while it is encoded: creating 25,000 files
    takes the kernel seconds, which the writers then overlap with the encoding."""

    def __init__(self, storage: Storage, subdir: str) -> None:
        self.storage, self.subdir = storage, subdir
        self.pending: dict[str, Future[StagedFile | None]] = {}  # None: the file was in place
        self.queued: dict[str, tuple[bytes, bool]] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.bulk = False
        self.always_bulk = False  # in a child that prepares shards (see SubdirShards.begin)
        self.closed = False

    def add(self, hexdigest: str, data: bytes, check: bool = False) -> None:
        """Stage this shard file; `check`: unless a file of its size is in place already."""
        if hexdigest in self.pending or hexdigest in self.queued or self.closed:
            return
        self.queued[hexdigest] = (data, check)
        if self.bulk or self.always_bulk:
            self.start()

    def start(self) -> None:
        """Write what is queued, in the writer threads."""
        if not self.queued or self.closed:
            return
        if self.pool is None:
            self.pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="shards")
        for hexdigest, (data, check) in self.queued.items():
            self.pending[hexdigest] = self.pool.submit(self._write, hexdigest, data, check)
        self.queued = {}

    def _write(self, hexdigest: str, data: bytes, check: bool) -> StagedFile | None:
        relpath = shard_path(self.subdir, hexdigest)
        if check:
            found = self.storage.stat(relpath)
            if found is not None and found[0] == len(data):
                return None  # in place: that very file, named by its hash
        staged = self.storage.stage(relpath)
        try:
            staged.write(data)
            staged.close()
        except BaseException:
            staged.discard()
            raise
        return staged

    def commit(self, hexdigests: Iterable[str]) -> int:
        """Move these staged files into place (not yet durable: see Storage.sync); returns
        how many were written (the others were in place)."""
        self.start()
        done = 0
        for hexdigest in sorted(hexdigests):
            future = self.pending.pop(hexdigest, None)
            staged = future.result() if future is not None else None
            if staged is not None:
                staged.commit()
                done += 1
        return done

    def settle(self) -> dict[str, StagedFile | None]:
        """Write all, wait, and hand the staged files over (None: the file was in place);
        a failed write raises."""
        self.start()
        try:
            return {hexdigest: future.result() for hexdigest, future in self.pending.items()}
        finally:
            self.pending = {}
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

    def adopt(self, staged: Mapping[str, StagedFile | None]) -> None:
        """Files another process staged (see settle), committed or discarded like ours."""
        for hexdigest, file in staged.items():
            done: Future[StagedFile | None] = Future()
            done.set_result(file)
            self.pending[hexdigest] = done

    def close(self) -> None:
        """Wait for the writes; drop what was not committed (and stage nothing more)."""
        self.closed = True
        self.queued = {}
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        for future in self.pending.values():
            staged = future.result() if future.exception() is None else None
            if staged is not None:
                staged.discard()
        self.pending = {}


def write_shard_files(storage: Storage, subdir: str, files: Mapping[str, bytes]) -> int:
    """Put new shard files in place (each a complete, immutable file under its hash), a
    batch per thread (not yet durable: see Storage.sync). Returns how many were written."""
    items = [(shard_path(subdir, hexdigest), data) for hexdigest, data in sorted(files.items())]
    if not items:
        return 0
    batches = [items[i : i + WRITE_BATCH] for i in range(0, len(items), WRITE_BATCH)]
    threads = min(WRITE_THREADS if storage.local else S3_THREADS, len(batches))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(storage.put_immutable, batches))
    return len(items)


class ShardPublisher:
    """One subdir's shard publication within a mirror or index run."""

    def __init__(self, storage: Storage, subdir: str, started_ns: int | None = None) -> None:
        self.storage = storage
        self.subdir = subdir
        self.state = load_state(storage, subdir)
        self.had_state = bool(self.state.names or self.state.index_stat)
        self.retired = load_retired(storage, subdir)
        self.had_retired = bool(self.retired.shards)
        self.published: dict[str, tuple[str, str, int]] = dict(self.state.names)
        self.started_ns = started_ns or time.time_ns()
        self.files_written = 0
        self.digests: dict[str, str] = {}
        # shard files found in place: hash -> size (None: not listed; see stage)
        self.present: dict[str, int] | None = None
        self.in_place: set[str] = set()  # shard files this run wrote
        self._named: set[str] | None = None  # the shards the state names (see stage)
        self.stager = ShardStager(storage, subdir) if storage.local else None

    def _size(self, shard: str) -> int | None:
        if self.present is not None:
            return self.present.get(shard)
        st = self.storage.stat(shard_path(self.subdir, shard))
        return None if st is None else st[0]

    def plan(
        self, groups: Mapping[str, NameRecords], final: bool = True, keep: Set[str] = frozenset()
    ) -> ShardSet:
        """Shards for these groups: the names whose records changed are encoded (and staged).
        `final`: the groups are the run's own (their digests are kept for later calls).
        `keep`: see plan_shards."""
        digests = self.digests if final else None
        if self.stager is not None:  # most names new: a bulk write (see ShardStager)
            self.stager.bulk = final and len(self.published) < len(groups) // 2
        return plan_shards(groups, self.published, digests, self.stage, keep)

    def stage(self, hexdigest: str, data: bytes) -> None:
        """A local target's new shard file, written to the staging folder now (unless it is
        in place: when shards/ was not listed, only a shard we named or retired can be)."""
        if self.stager is None:
            return
        if self.present is not None:
            if self.present.get(hexdigest) == len(data):
                self.in_place.add(hexdigest)
            else:
                self.stager.add(hexdigest, data)
            return
        if self._named is None:
            self._named = {shard for _, shard, _ in self.published.values()}
        ours = hexdigest in self.retired.shards or hexdigest in self._named
        self.stager.add(hexdigest, data, check=ours)

    def publish(self, shards: ShardSet) -> bool:
        """New shard files, then the shard index (unless it already names exactly these).
        Returns whether the index was written."""
        named = shards.hexes()  # never a file no index names (nothing would retire it)
        new = {shard: data for shard, data in shards.new_files.items() if shard in named}
        if self.stager is not None:
            self.stager.start()
        staged = self.stager.pending.keys() & new.keys() if self.stager else set()
        todo = {  # a shard already in place under its hash is that very file
            shard: data
            for shard, data in new.items()
            if shard not in staged and shard not in self.in_place and self._size(shard) != len(data)
        }
        written = write_shard_files(self.storage, self.subdir, todo)
        if staged:
            assert self.stager is not None
            written += self.stager.commit(staged)
        if written:
            self.storage.sync()  # durable before any index names them
        self.files_written += written
        self.in_place.update(todo, staged)
        shards.new_files = {}
        current = self.storage.stat(index_path(self.subdir))
        if (
            current is not None
            and list(current) == self.state.index_stat
            and shards.names == self.published
        ):
            return False
        index = encode_shard_index(
            self.subdir,
            {name: bytes.fromhex(entry[1]) for name, entry in sorted(shards.names.items())},
            created_at(max((entry[2] for entry in shards.names.values()), default=0)),
        )
        self.storage.publish([(index_path(self.subdir), index)])
        stat = self.storage.stat(index_path(self.subdir))
        self.state.index_stat = list(stat) if stat else []
        self._retire(self.published, shards.names)
        self.published = dict(shards.names)
        return True

    def remove_index(self) -> None:
        """--no-shards: the index goes at once; its shards once their grace has passed."""
        self.storage.delete(index_path(self.subdir))
        self.state.index_stat = []
        self._retire(self.published, {})
        self.published = {}

    def _retire(
        self, old: Mapping[str, tuple[str, str, int]], new: Mapping[str, tuple[str, str, int]]
    ) -> None:
        now = time.time_ns()
        named = {shard for _, shard, _ in new.values()}
        for _, shard, _ in old.values():
            if shard not in named:
                self.retired.shards.setdefault(shard, now)
        for shard in named:
            self.retired.shards.pop(shard, None)

    def save(self) -> None:
        """Record what the published index names (after the index is in place), and the
        shards folder as we leave it: unchanged next time, our state is trusted unlisted.
        Nothing to record and no state yet (--no-shards from the start): nothing written."""
        if not self.published and not self.retired.shards and not self.had_state:
            return
        self.state.names = dict(sorted(self.published.items()))
        folder = self.storage.stat(f"{self.subdir}/{SHARDS_DIR}") if self.storage.local else None
        self.state.folder = list(folder) if folder else []
        self.storage.write_if_changed(_state_path(self.subdir), msgspec.json.encode(self.state))
        self._save_retired()

    def _save_retired(self) -> None:
        if self.retired.shards or self.had_retired:
            save_retired(self.storage, self.subdir, self.retired)

    def adopt_strays(self, listed: Iterable[str]) -> None:
        """Shard files nobody named or retired (a killed run's, or deleted state): retired now,
        so they go after the grace period like any other."""
        named = {shard for _, shard, _ in self.published.values()}
        now = time.time_ns()
        for filename in listed:
            if not is_shard_filename(filename):
                continue
            shard = filename.split(".", 1)[0]
            if shard not in named and shard not in self.retired.shards:
                self.retired.shards[shard] = now


def collect_orphans(
    storage: Storage,
    subdir: str,
    grace_seconds: float,
    started_ns: int,
    retired: Retired | None = None,
    named: Iterable[str] = (),
) -> list[str]:
    """Delete shards retired at least `grace_seconds` ago by an earlier run (0: on the next
    run). Writes nothing when nothing is due. Returns the deleted shard hashes."""
    retired = retired if retired is not None else load_retired(storage, subdir)
    keep = set(named)
    doomed = sorted(
        shard
        for shard, when in retired.shards.items()
        if due(when, started_ns, grace_seconds) and shard not in keep
    )
    if not doomed:
        return []
    for shard in doomed:
        storage.delete(shard_path(subdir, shard))
        del retired.shards[shard]
    save_retired(storage, subdir, retired)
    return doomed


def save_retired(storage: Storage, subdir: str, retired: Retired) -> None:
    """The shards waiting for their grace period; no file while there are none."""
    if retired.shards:
        storage.write_if_changed(_retired_path(subdir), msgspec.json.encode(retired))
    else:
        storage.delete(_retired_path(subdir))


def due(retired_ns: int, started_ns: int, grace_seconds: float) -> bool:
    """Retired by an earlier run, at least the grace period ago."""
    return retired_ns < started_ns and time.time_ns() - retired_ns >= grace_seconds * 1e9
