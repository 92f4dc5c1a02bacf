"""The index files a solve reads: one repodata.json per subdir, written for the solver child
(or the kept copy used as is), and the parent's upstream documents, let go while the child
maps the same bytes and read back afterwards."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condasync.channel.bigindex import Index, encode_index
from condasync.engine.closure_state import local_cache_path, local_index
from condasync.engine.filters import Filters
from condasync.engine.job import MirrorJob
from condasync.engine.plan import select_records
from condasync.engine.solver import SelectionError
from condasync.engine.upstream import Upstream


@dataclass
class SolverFiles:
    """Where the solver's index files go: a temp folder, or (new upstream indexes of a local
    target) beside the kept copy as `.new`, renamed over it once the selection is known."""

    tmp: Path
    staged: dict[str, Path]


@dataclass
class HeldIndexes:
    """This run's upstream documents (600k records: 355 MB each). The parent lets them go
    while the solver child maps the same bytes from their files, so the two never hold
    them at once, and reads them back afterwards."""

    bodies: dict[str, bytes]
    new_bodies: dict[str, bytes]  # fetched this run: to keep for the next run's solves
    upstreams: dict[str, Upstream]
    away: dict[str, tuple[str, tuple[int, int, int], bool]] = field(default_factory=dict)

    def release(self, indexes: dict[str, Index], paths: dict[str, str]) -> None:
        """Let go of the documents whose solver file holds exactly their bytes."""
        for subdir, path in paths.items():
            st = os.stat(path)
            if st.st_size != len(self.bodies[subdir]):
                continue
            upstream = self.upstreams[subdir]
            fetched = upstream.fetched.body is not None
            self.away[subdir] = (path, (st.st_ino, st.st_size, st.st_mtime_ns), fetched)
            indexes[subdir].detach_body()
            self.bodies[subdir] = b""
            if subdir in self.new_bodies:
                self.new_bodies[subdir] = b""
            upstream.fetched.body = None
        gc.collect()  # what the fetch and the parse left in cycles goes before the child peaks

    def restore(self, indexes: dict[str, Index]) -> None:
        """Read the documents back from their files, which must be as the solver read them."""
        for subdir, (path, seen, fetched) in self.away.items():
            body = Path(path).read_bytes()
            st = os.stat(path)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != seen or len(body) != seen[1]:
                raise SelectionError(
                    f"{subdir}: the index file {path} changed during the solve; nothing was written"
                )
            indexes[subdir].attach_body(body, seen[1])
            self.bodies[subdir] = body
            if subdir in self.new_bodies:
                self.new_bodies[subdir] = body
            if fetched:
                self.upstreams[subdir].fetched.body = body
        self.away.clear()


def write_index_files(
    job: MirrorJob,
    storage: Any,
    indexes: dict[str, Index],
    held: HeldIndexes,
    files: SolverFiles,
) -> tuple[dict[str, str], dict[str, str]]:
    """A repodata.json file per subdir for the solver: the kept copy when upstream did not
    change, else a temp file. `--exclude` takes its records out of the solver's input.
    Returns (every path, the paths holding upstream's bytes exactly)."""
    exclude = Filters(include=job.filters.exclude)
    paths: dict[str, str] = {}
    exact: dict[str, str] = {}
    for subdir, index in indexes.items():
        excluded = set(select_records(index, exclude, subdir)) if exclude.include else set()
        if excluded:
            sections = {
                key: {fn: raw for fn, raw in records.items() if fn not in excluded}
                for key, records in index.sections.items()
            }
            data = encode_index(index, subdir, sections)
        else:
            new = subdir in held.new_bodies
            kept = None if new or job.dry_run else local_index(storage, subdir)
            if kept is not None:
                paths[subdir] = exact[subdir] = kept
                continue
            data = held.bodies[subdir]
            cache = None if job.dry_run else local_cache_path(storage, subdir)
            if cache is not None:  # written once: this file becomes the kept copy
                staged = files.staged[subdir] = cache.with_name(cache.name + ".new")
                staged.write_bytes(data)
                paths[subdir] = exact[subdir] = str(staged)
                continue
        path = files.tmp / f"{subdir}.repodata.json"
        path.write_bytes(data)
        paths[subdir] = str(path)
        if not excluded:
            exact[subdir] = str(path)
    return paths, exact
