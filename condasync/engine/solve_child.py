"""The solver child process: reads solve requests as JSON on stdin, solves each with py-rattler
against local repodata files, prints one JSON answer on stdout and ends with `os._exit`."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
import time
from typing import Any

_CHANNEL = "https://condasync.invalid/upstream"  # only builds record URLs; nothing is fetched


def _name_of(filename: str) -> str:
    stem = filename.removesuffix(".conda").removesuffix(".tar.bz2")
    return stem.rsplit("-", 2)[0]


class _Solver:
    def __init__(self) -> None:
        from rattler import Channel, SparseRepoData

        self._channel = Channel(_CHANNEL)
        self._sparse_type = SparseRepoData
        self._sparse: dict[tuple[str, str], Any] = {}

    def sparse(self, subdir: str, path: str) -> Any:
        key = (subdir, path)
        if key not in self._sparse:
            self._sparse[key] = self._sparse_type(self._channel, subdir, path)
        return self._sparse[key]

    def locked(self, sources: list[Any], filenames: list[str]) -> list[Any]:
        from rattler import PackageName

        wanted = set(filenames)
        out: list[Any] = []
        for name in sorted({_name_of(fn) for fn in filenames}):
            for source in sources:
                try:
                    records = source.load_records(PackageName(name))
                except Exception:
                    continue
                out.extend(r for r in records if r.file_name in wanted)
        return out

    async def solve(self, req: dict[str, Any]) -> dict[str, Any]:
        from rattler import (
            BuildString,
            GenericVirtualPackage,
            PackageName,
            Version,
            solve_with_sparse_repodata,
        )

        started = time.monotonic()
        sources = [self.sparse(subdir, path) for subdir, path in req["indexes"].items()]
        vps = [
            GenericVirtualPackage(PackageName(n), Version(v), BuildString(b))
            for n, v, b in req["virtual_packages"]
        ]
        cutoff = req.get("exclude_newer_ms")
        exclude_newer = (
            datetime.datetime.fromtimestamp(cutoff / 1000, datetime.timezone.utc)
            if cutoff is not None
            else None
        )
        try:
            records = await solve_with_sparse_repodata(
                req["specs"],
                sources,
                locked_packages=self.locked(sources, req.get("locked") or []),
                virtual_packages=vps,
                timeout=datetime.timedelta(seconds=float(req.get("timeout") or 900)),
                exclude_newer=exclude_newer,
                constraints=req.get("constraints") or None,
                timestamp_policy="allow-missing",
            )
        except Exception as exc:  # rattler's SolverError and friends
            return {
                "key": req["key"],
                "files": None,
                "error": str(exc).strip(),
                "seconds": round(time.monotonic() - started, 3),
            }
        return {
            "key": req["key"],
            "files": sorted((str(r.url).rsplit("/", 2)[-2], str(r.file_name)) for r in records),
            "error": None,
            "seconds": round(time.monotonic() - started, 3),
        }


async def _main(request: dict[str, Any]) -> dict[str, Any]:
    solver = _Solver()
    results = [await solver.solve(req) for req in request["solves"]]
    return {"ok": True, "results": results}


def main() -> None:
    try:
        import rattler  # noqa: F401  # before the request arrives (see solver.SolverProcess)

        answer = asyncio.run(_main(json.load(sys.stdin)))
    except BaseException as exc:  # report anything, including rattler's own exception types
        answer = {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter finalization: py-rattler's runtime can crash there


if __name__ == "__main__":
    main()
