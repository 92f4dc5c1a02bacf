"""Write a pixi.lock with py-rattler itself: solve specs per platform against a channel's local
repodata.json files, then `LockFile.to_path`. Run as a subprocess by the closure tests.

Usage: python tests/closure_lockwriter.py CHANNEL_DIR CHANNEL_URL OUT PLATFORM=SPEC[,SPEC]...
Ends with os._exit() because py-rattler can abort at interpreter shutdown.
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback


async def _write(channel_dir: str, url: str, out: str, wanted: list[str]) -> None:
    from rattler import (
        BuildString,
        Channel,
        GenericVirtualPackage,
        LockChannel,
        LockFile,
        LockPlatform,
        PackageName,
        SparseRepoData,
        Version,
        solve_with_sparse_repodata,
    )

    channel = Channel(url)
    per_platform = [item.split("=", 1) for item in wanted]
    platforms = {name: LockPlatform(name) for name, _ in per_platform}
    lock = LockFile(list(platforms.values()))
    lock.set_channels("default", [LockChannel(url)])
    for name, specs in per_platform:
        sparse = [
            SparseRepoData(channel, s, os.path.join(channel_dir, s, "repodata.json"))
            for s in (name, "noarch")
        ]
        vps = [("__unix", "0", "0"), ("__glibc", "2.28", "0"), ("__linux", "4.18", "0")]
        if name.startswith("osx"):
            vps = [("__unix", "0", "0"), ("__osx", "13.0", "0")]
        records = await solve_with_sparse_repodata(
            specs.split(","),
            sparse,
            virtual_packages=[
                GenericVirtualPackage(PackageName(n), Version(v), BuildString(b)) for n, v, b in vps
            ],
        )
        for record in records:
            lock.add_conda_package("default", platforms[name], record)
    lock.add_pypi_package(
        "default",
        platforms[per_platform[0][0]],
        "requests",
        "2.32.3",
        "https://files.pythonhosted.org/packages/f9/9b/requests-2.32.3-py3-none-any.whl",
    )
    lock.to_path(out)


def main() -> None:
    code = 0
    try:
        channel_dir, url, out, *wanted = sys.argv[1:]
        asyncio.run(_write(channel_dir, url, out, wanted))
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
