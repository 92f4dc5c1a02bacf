"""What creating shard files costs the file system itself, without condasync: 25,000 3-KB
files created in a fresh folder, by the ways a mirror could publish them, after deleting as
many (the state a mirror run leaves), printing each round's CPU time (user + system).

    python benchmarks/fs_create.py DIR [--rounds 2] [--files 25000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from collections.abc import Callable

DATA = b"x" * 3000


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime + r.ru_utime


def churn(base: str, n: int) -> None:
    """Create and delete n files: what a mirror run's deletions leave behind."""
    folder = os.path.join(base, "churn")
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        with open(os.path.join(folder, f"{i:08d}.bin"), "wb") as fh:
            fh.write(DATA)
    shutil.rmtree(folder)


def staged(n: int, final: str) -> None:
    """As condasync: write in a staging folder, rename into place."""
    staging = os.path.join(final, ".tmp")
    os.makedirs(staging)
    for i in range(n):
        path = os.path.join(staging, f"{i:064d}.msgpack.zst")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, DATA)
        os.close(fd)
        os.rename(path, os.path.join(final, f"{i:064d}.msgpack.zst"))


def direct(n: int, final: str) -> None:
    """Write under the final name (not safe against kill -9: a reader may see half a file)."""
    for i in range(n):
        fd = os.open(os.path.join(final, f"{i:064d}.msgpack.zst"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, DATA)
        os.close(fd)


def empty(n: int, final: str) -> None:
    """Create empty files: the cost of the inodes and names alone."""
    for i in range(n):
        os.close(os.open(os.path.join(final, f"{i:064d}.msgpack.zst"), os.O_CREAT, 0o644))


def tmpfile(n: int, final: str) -> None:
    """An unnamed file (O_TMPFILE) linked into place once written."""
    dfd = os.open(final, os.O_DIRECTORY)
    try:
        for i in range(n):
            fd = os.open(final, os.O_TMPFILE | os.O_WRONLY, 0o644)
            os.write(fd, DATA)
            name = f"{i:064d}.msgpack.zst"
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
            os.close(fd)
    finally:
        os.close(dfd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--files", type=int, default=25000)
    args = ap.parse_args()
    methods: dict[str, Callable[[int, str], None]] = {
        "staged+rename": staged,
        "direct": direct,
        "empty": empty,
        "O_TMPFILE+linkat": tmpfile,
    }
    for rnd in range(args.rounds):
        for name, method in methods.items():
            churn(args.dir, args.files)
            final = os.path.join(args.dir, "final")
            shutil.rmtree(final, ignore_errors=True)
            os.makedirs(final)
            c0, w0 = cpu(), time.monotonic()
            method(args.files, final)
            took = f"cpu {cpu() - c0:.2f} s, wall {time.monotonic() - w0:.2f} s"
            print(f"round {rnd}: {name}: {took}", flush=True)
            shutil.rmtree(final)


if __name__ == "__main__":
    main()
