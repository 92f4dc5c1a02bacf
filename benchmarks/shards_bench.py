"""Shard (CEP-16) benchmark: what shards cost a mirror run, and what they save a client.

Part "write" (condasync mirror of the 600k-record `big` channel made by make_channel.py,
served by nginx through benchmarks/server.py):
  1. a first full sync with --no-shards (M_plain; timed, reused with --reuse);
  2. a hard-linked copy of it synced with shards on: the first full shard write (the options
     changed, so the run re-plans; no package is downloaded again); the previous copy is
     moved aside and deleted at the end (see part_write);
  3. a no-op run of each;
  4. REPEATS 1% changes (upstream flips between its "current" and "next" versions), each
     synced on both mirrors, alternating which goes first.
Reported: wall time, CPU time (user + system), the engine's `shards` phase, shard files
written, peak RSS.

Part "client" (py-rattler 0.28 in a child process, a fresh cache each run): solve
`dependent _r-mutex` (the test channel's noarch, mirrored with shards) for linux-64 against a
channel whose linux-64 is the 600k-record mirror, with shards on and off. Reported: bytes and
requests the server saw, solve time, client peak RSS, client cache size.

Usage::

    python benchmarks/shards_bench.py [--repeats 3] [--reuse] [--only write|client]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_channel as mc  # noqa: E402
from server import NginxServer  # noqa: E402

REPO = HERE.parent
REAL = REPO / "tests" / "data" / "real-channel"


def condasync(*args: str) -> tuple[float, dict[str, Any], int, float]:
    """(wall seconds, JSON report, peak RSS MiB, CPU seconds (user + system)) of one CLI run:
    CPU time is less at the mercy of other load on a shared host than wall time."""
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "condasync", *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0, 1):
            err.seek(0)
            raise RuntimeError(
                f"condasync {args} failed ({proc.returncode}): {err.read()[-2000:]!r}"
            )
    return wall, json.loads(stdout), usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime


def sync(url: str, target: Path, shards: bool) -> dict[str, Any]:
    args = ["mirror", url, str(target), "-s", "linux-64", "-j", "16"]
    if not shards:
        args.append("--no-shards")
    wall, report, rss, cpu = condasync(*args)
    sub = report["subdirs"]["linux-64"]
    return {
        "wall": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "shards_s": sub["timings"].get("shards", 0.0),
        "written": sub["shards"].get("written", 0),
        "deleted": sub["shards"].get("deleted", 0),
        "unchanged": report["unchanged"],
        "rss_mib": rss,
        "timings": sub["timings"],
    }


def part_write(args: argparse.Namespace, work: Path, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    plain, sharded = work / "m-plain", work / "m-shards"
    mc.flip(args.channel, "current")
    if not (args.reuse and (plain / "linux-64" / "repodata.json").exists()):
        shutil.rmtree(plain, ignore_errors=True)
        print("first full sync (no shards) ...", flush=True)
        out["first_sync_no_shards"] = sync(url, plain, False)
    else:
        out["first_sync_no_shards"] = sync(url, plain, False)  # brings it to "current"
    # The previous copy is deleted at the end, not here: on this host's ext4 (no journal),
    # for minutes after 25,000 files are deleted, each file created near them costs up to
    # 1 ms of kernel time (perf: `recently_deleted` under `find_inode_bit`, which skips
    # recently freed inodes one lookup at a time). No mirror run deletes a whole tree first.
    trash = work / "trash"
    if sharded.exists():
        trash.mkdir(exist_ok=True)
        sharded.rename(trash / f"m-shards-{time.time_ns()}")
    subprocess.run(["cp", "-al", str(plain), str(sharded)], check=True)
    print("first shard write ...", flush=True)
    out["first_shard_write"] = sync(url, sharded, True)
    out["noop"] = {"shards": sync(url, sharded, True), "no_shards": sync(url, plain, False)}
    changes = []
    for i in range(args.repeats):
        mc.flip(args.channel, "next" if i % 2 == 0 else "current")
        order = [(True, sharded), (False, plain)] if i % 2 else [(False, plain), (True, sharded)]
        row: dict[str, Any] = {}
        for shards, target in order:
            row["shards" if shards else "no_shards"] = sync(url, target, shards)
        row["delta"] = round(row["shards"]["wall"] - row["no_shards"]["wall"], 2)
        row["cpu_delta"] = round(row["shards"]["cpu_s"] - row["no_shards"]["cpu_s"], 2)
        with_, without = row["shards"], row["no_shards"]
        print(f"1% change {i + 1}: {without['wall']} s without, {with_['wall']} s with"
              f" ({with_['written']} shards); CPU {without['cpu_s']} s without,"
              f" {with_['cpu_s']} s with", flush=True)  # fmt: skip
        changes.append(row)
    shutil.rmtree(trash, ignore_errors=True)
    out["change_1pct"] = changes
    out["change_1pct_median_delta"] = statistics.median(r["delta"] for r in changes)
    out["change_1pct_median_cpu_delta"] = statistics.median(r["cpu_delta"] for r in changes)
    return out


class _Counting(SimpleHTTPRequestHandler):
    log: ClassVar[list[tuple[str, str, int, int]]] = []

    def log_message(self, format: str, *a: Any) -> None:
        pass

    def send_head(self) -> Any:
        f = super().send_head()
        size = 0
        if f is not None and self.command == "GET":
            size = os.fstat(f.fileno()).st_size
        self.log.append((self.command, self.path, 0, size))
        return f


CLIENT = r"""
import asyncio, json, os, resource, sys, time
async def main(url, cache, sharded):
    from rattler import Channel, Gateway, GenericVirtualPackage, PackageName, Version, solve
    from rattler.repo_data.gateway import SourceConfig
    gw = Gateway(cache_dir=cache, default_config=SourceConfig(sharded_enabled=sharded))
    t = time.monotonic()
    recs = await solve([Channel(url)], ["dependent", "_r-mutex"], gateway=gw,
                       platforms=["linux-64", "noarch"])
    return time.monotonic() - t, sorted(r.file_name for r in recs)
try:
    took, names = asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "1"))
    out = {"ok": True, "solve_s": took, "records": names}
except BaseException as e:
    out = {"ok": False, "error": repr(e)}
out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out)); sys.stdout.flush(); os._exit(0)
"""


def part_client(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tree = work / "client-channel"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    subprocess.run(
        [sys.executable, "-m", "condasync", "mirror", str(REAL), str(tree / "real"), "-q",
         "-s", "noarch"], check=True,
    )  # fmt: skip
    (tree / "noarch").symlink_to(tree / "real" / "noarch")
    (tree / "linux-64").symlink_to(work / "m-shards" / "linux-64")
    handler = partial(_Counting, directory=str(tree))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    script = work / "client.py"
    script.write_text(CLIENT)
    rows: dict[str, list[dict[str, Any]]] = {"shards": [], "no_shards": []}
    for i in range(args.repeats):
        for sharded in (True, False) if i % 2 == 0 else (False, True):
            cache = Path(tempfile.mkdtemp(dir=work))
            _Counting.log.clear()
            proc = subprocess.run(
                [sys.executable, str(script), url, str(cache), "1" if sharded else "0"],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["requests"] = len(_Counting.log)
            result["bytes"] = sum(entry[3] for entry in _Counting.log)
            result["paths"] = sorted({e[1] for e in _Counting.log})[:12]
            result["cache_bytes"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
            shutil.rmtree(cache, ignore_errors=True)
            rows["shards" if sharded else "no_shards"].append(result)
            print(f"client sharded={sharded}: {result['bytes']} B in {result['requests']}"
                  f" requests, solve {result.get('solve_s', 0):.3f} s,"
                  f" RSS {result['rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    httpd.shutdown()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--channel", type=Path, default=HERE / "work/shards/channels/big")
    ap.add_argument("--work", type=Path, default=HERE / "work/shards")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="reuse an existing m-plain mirror")
    ap.add_argument("--only", choices=("write", "client"))
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.only in (None, "write"):
        with NginxServer(args.channel.parent, work / "nginx") as server:
            url = f"{server.base_url}/{args.channel.name}/"
            results["write"] = part_write(args, work, url)
    if args.only in (None, "client"):
        results["client"] = part_client(args, work)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = work / f"shards-results-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
