"""Benchmark the pages on a 600k-record channel: `condasync serve` on a tree holding the
synthetic linux-64 index of make_channel.py (no package bodies needed), the first channel page
(which builds the package summary) and then warm renders of the channel page, a search, a
package page and the front page, timed from a client on loopback.

Usage::

    python benchmarks/pages_bench.py [--records 600000] [--requests 30]

Target (issue 16): a channel page renders in <= 300 ms from a warm server.
Everything goes under benchmarks/work/pages/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tree(work: Path, records: int) -> Path:
    source = work / f"channel-{records}"
    if not (source / "versions" / "current" / "linux-64" / "repodata.json").is_file():
        subprocess.run(
            [sys.executable, str(HERE / "make_channel.py"), str(source), "--records",
             str(records), "--no-bodies"],
            check=True,
        )  # fmt: skip
    root = work / "serve"
    shutil.rmtree(root, ignore_errors=True)
    (root / "big").mkdir(parents=True)
    for subdir in ("linux-64", "noarch"):
        src = source / "versions" / "current" / subdir
        (root / "big" / subdir).mkdir()
        for name in ("repodata.json", "repodata.json.zst"):
            os.link(src / name, root / "big" / subdir / name)
    return root


def timed(client: httpx.Client, url: str) -> tuple[float, int, int]:
    start = time.perf_counter()
    r = client.get(url)
    return time.perf_counter() - start, r.status_code, len(r.content)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=600_000)
    ap.add_argument("--requests", type=int, default=30)
    args = ap.parse_args()
    work = HERE / "work" / "pages"
    work.mkdir(parents=True, exist_ok=True)
    root = make_tree(work, args.records)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "condasync", "serve", str(root), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base, timeout=3600, trust_env=False)
        for _ in range(200):
            try:
                client.get("/openapi.json")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        first, status, size = timed(client, "/channels/big/")
        assert status == 200, status
        names = client.get("/channels/big/?q=a").text
        package = names.split("/channels/big/packages/", 1)[1].split('"', 1)[0]
        results = {"records": args.records, "first_page_s": round(first, 3), "bytes": size}
        for label, url in (
            ("channel_page", "/channels/big/"),
            ("search", "/channels/big/?q=py"),
            ("package_page", f"/channels/big/packages/{package}"),
            ("front_page", "/"),
        ):
            times = []
            for _ in range(args.requests):
                elapsed, status, _size = timed(client, url)
                assert status == 200, (url, status)
                times.append(elapsed * 1000)
            times.sort()
            results[label] = {
                "median_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
                "max_ms": round(times[-1], 1),
            }
        rss = Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0]
        results["server_rss_mib"] = round(int(rss) / 1024)
        results["load_avg"] = os.getloadavg()
        print(json.dumps(results, indent=2))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
