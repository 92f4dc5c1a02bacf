"""Solve and install specs from one channel with py-rattler, run as a subprocess by the tests.

Usage: python tests/rattler_client.py CHANNEL_URL PREFIX CACHE SPEC...
Prints the installed records as one JSON list on stdout; exits 0 on success, 1 on failure.
It ends with os._exit() because py-rattler can abort at interpreter shutdown.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any


async def _run(url: str, prefix: str, cache: str, specs: list[str]) -> list[dict[str, str]]:
    from rattler import Channel, Gateway, Platform, VirtualPackage, install, solve

    gateway = Gateway(cache_dir=os.path.join(cache, "repodata"))
    records = await solve(
        sources=[Channel(url)],
        specs=specs,
        gateway=gateway,
        platforms=["linux-64", "noarch"],
        virtual_packages=[v.into_generic() for v in VirtualPackage.detect()],
    )
    await install(
        records=records,
        target_prefix=prefix,
        cache_dir=os.path.join(cache, "pkgs"),
        platform=Platform("linux-64"),
        show_progress=False,
    )
    return [
        {
            "name": r.name.normalized,
            "version": str(r.version),
            "build": str(r.build),
            "url": str(r.url),
            "file_name": str(r.file_name),
            "sha256": r.sha256.hex() if r.sha256 else None,
        }
        for r in records
    ]


def run_main(run: Callable[..., Awaitable[Any]], argv: list[str], needed: int) -> None:
    """Run `run(*argv)` and print its JSON result: exit 0, or 1 with the traceback on stderr
    (2 with the usage when fewer than `needed` arguments are given). Ends with os._exit()."""
    code = 2
    if len(argv) < needed:
        print(sys.modules["__main__"].__doc__, file=sys.stderr)
    else:
        try:
            found = asyncio.run(run(*argv))
            print(json.dumps(found, sort_keys=True))
            code = 0
        except BaseException:  # report anything, including rattler's own exception types
            traceback.print_exc()
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _install(url: str, prefix: str, cache: str, *specs: str) -> list[dict[str, str]]:
    return await _run(url, prefix, cache, list(specs))


if __name__ == "__main__":
    run_main(_install, sys.argv[1:], 4)
