"""Read records of some package names through py-rattler's Gateway, with shards on or off.

Usage: python tests/shard_client.py CHANNEL_URL CACHE SHARDED(0|1) SUBDIR NAME...
Prints {file_name: record as rattler's JSON} on stdout; exits 0 on success, 1 on failure.
It ends with os._exit() because py-rattler can abort at interpreter shutdown.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from typing import Any


async def _run(url: str, cache: str, sharded: bool, subdir: str, names: list[str]) -> Any:
    from rattler import Channel, Gateway
    from rattler.repo_data.gateway import SourceConfig

    gateway = Gateway(
        cache_dir=cache,
        default_config=SourceConfig(sharded_enabled=sharded, cache_action="no-cache"),
    )
    result = await gateway.query([Channel(url)], [subdir], names, recursive=False)
    out: dict[str, Any] = {}
    for records in result:
        for record in records:
            doc = json.loads(record.to_json())
            doc["url"] = str(record.url)
            out[str(record.file_name)] = doc
    return out


def main(argv: list[str]) -> int:
    url, cache, sharded, subdir, *names = argv
    try:
        found = asyncio.run(_run(url, cache, sharded == "1", subdir, names))
    except BaseException:
        traceback.print_exc()
        return 1
    print(json.dumps(found, sort_keys=True))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
