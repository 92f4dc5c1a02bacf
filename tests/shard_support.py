"""Helpers for the shard (CEP-16) tests: the tree invariant, reading shards directly, and
reading them through py-rattler's Gateway in a subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import zstandard

from tests.conftest import REPO_ROOT, cli_env

SHARD_CLIENT = REPO_ROOT / "tests" / "shard_client.py"
SHARD_INDEX = "repodata_shards.msgpack.zst"


def unpack(data: bytes) -> Any:
    # zstandard.decompress() needs the content size in the frame: that is part of the check
    return msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(data))


def read_index(root: Path, subdir: str) -> dict[str, Any] | None:
    path = root / subdir / SHARD_INDEX
    return unpack(path.read_bytes()) if path.exists() else None


def shard_records(root: Path, subdir: str) -> dict[str, dict[str, Any]]:
    """{filename: record with hex hashes} of every shard the index names."""
    index = read_index(root, subdir)
    assert index is not None
    out: dict[str, dict[str, Any]] = {}
    for name, digest in index["shards"].items():
        shard = unpack((root / subdir / "shards" / f"{digest.hex()}.msgpack.zst").read_bytes())
        for key in ("packages", "packages.conda"):
            for fn, record in shard.get(key, {}).items():
                assert fn.rsplit("-", 2)[0] == name
                out[fn] = {k: v.hex() if isinstance(v, bytes) else v for k, v in record.items()}
    return out


def shard_problems(root: Path) -> list[str]:
    """The invariant: every shard the published index names exists and hashes to its name,
    and every record in those shards has its file in place with that size and sha256."""
    problems: list[str] = []
    for index_path in sorted(root.glob(f"*/{SHARD_INDEX}")):
        subdir = index_path.parent.name
        try:
            index = unpack(index_path.read_bytes())
        except Exception as exc:  # a torn index is itself a problem
            problems.append(f"{subdir}: shard index unreadable: {exc}")
            continue
        for name, digest in index["shards"].items():
            path = root / subdir / "shards" / f"{digest.hex()}.msgpack.zst"
            if not path.exists():
                problems.append(f"{subdir}: shard of {name} missing")
                continue
            data = path.read_bytes()
            if hashlib.sha256(data).digest() != digest:
                problems.append(f"{subdir}: shard of {name} does not hash to its name")
                continue
            shard = unpack(data)
            for key in ("packages", "packages.conda"):
                for fn, record in shard.get(key, {}).items():
                    pkg = root / subdir / fn
                    if not pkg.is_file():
                        problems.append(f"{subdir}/{fn}: in a shard, missing on disk")
                        continue
                    body = pkg.read_bytes()
                    if len(body) != record["size"]:
                        problems.append(f"{subdir}/{fn}: size differs from its shard record")
                    sha = record.get("sha256")
                    if sha is not None and hashlib.sha256(body).digest() != sha:
                        problems.append(f"{subdir}/{fn}: sha256 differs from its shard record")
    return problems


def client_records(
    url: str, tmp_path: Path, sharded: bool, subdir: str, names: list[str]
) -> dict[str, Any]:
    """What py-rattler's Gateway reads for these names (shards on or off)."""
    cache = Path(tmp_path) / f"gateway-{time.monotonic_ns()}"
    cache.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, str(SHARD_CLIENT), url, str(cache), "1" if sharded else "0", subdir,
         *names],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env({"HOME": str(cache)}),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found
