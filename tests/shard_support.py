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
_HOP_HEADERS = ("content-length", "transfer-encoding", "connection", "content-encoding")


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


def named_tree(root: Path, tree: dict[str, bytes]) -> dict[str, bytes]:
    """`tree` without the orphan shards a run keeps for the grace period (not named by any
    published shard index): what a clean mirror of the same upstream also has."""
    named = set()
    for subdir in {key.split("/", 1)[0] for key in tree}:
        index = read_index(root, subdir)
        if index is not None:
            named |= {f"{subdir}/shards/{d.hex()}.msgpack.zst" for d in index["shards"].values()}
    return {k: v for k, v in tree.items() if "/shards/" not in k or k in named}


class LoggingRelay:
    """A plain HTTP relay in front of a server under test: forwards GET/HEAD as they are and
    logs (method, path, status), so a test sees every request a client made."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading

        import httpx

        relay = self
        self.target = target.rstrip("/")
        self.log: list[tuple[str, str, int]] = []
        self._client = httpx.Client(timeout=30, trust_env=False)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                r = relay._client.request(self.command, relay.target + self.path, headers=headers)
                relay.log.append((self.command, self.path, r.status_code))
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(k, v)
                body = b"" if self.command == "HEAD" else r.content
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = _relay

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.log]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._client.close()
