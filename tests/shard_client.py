"""Read records of some package names through py-rattler's Gateway, with shards on or off.

Usage: python tests/shard_client.py CHANNEL_URL CACHE SHARDED(0|1) SUBDIR NAME...
Prints {file_name: record as rattler's JSON} on stdout; exits 0 on success, 1 on failure.
It ends with os._exit() because py-rattler can abort at interpreter shutdown.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rattler_client import run_main  # beside this file, on sys.path when run as a script


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


async def _query(url: str, cache: str, sharded: str, subdir: str, *names: str) -> Any:
    return await _run(url, cache, sharded == "1", subdir, list(names))


if __name__ == "__main__":
    run_main(_query, sys.argv[1:], 5)
