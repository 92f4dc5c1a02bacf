"""Benchmark `condasync serve` against nginx serving the same files, with the same load
generator (wrk) on loopback: a cached 10 MiB package (MB/s) and 304 revalidation of
`repodata.json.zst` with If-None-Match (requests/s).

Usage::

    apt-get install -y --no-install-recommends wrk nginx-light
    python benchmarks/serve_bench.py [--duration 10] [--runs 3]

Targets (issue 4): package MB/s >= 0.5 x nginx; 304 req/s >= 0.25 x nginx.

`--observe` (issue 16) instead compares condasync serve with its metrics and JSON access log
(and /metrics scraped every second) against `serve --no-metrics` without an access log, in the
same run, runs alternating: the target is a cost of at most 5% of cached-package throughput.

Everything goes under benchmarks/work/serve/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import NginxServer, free_port, wait_until_up

HERE = Path(__file__).resolve().parent
PACKAGE = "big-1.0-0.conda"
SIZE = 10 * 1024 * 1024


def make_tree(root: Path) -> None:
    noarch = root / "bench" / "noarch"
    noarch.mkdir(parents=True, exist_ok=True)
    data = os.urandom(SIZE)
    (noarch / PACKAGE).write_bytes(data)
    import hashlib

    records = {
        f"pkg{i}-1.0-0.conda": {
            "name": f"pkg{i}", "version": "1.0", "build": "0", "build_number": 0,
            "depends": [], "size": 1000 + i, "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
            "subdir": "noarch",
        }
        for i in range(2000)
    }  # fmt: skip
    records[PACKAGE] = {
        "name": "big", "version": "1.0", "build": "0", "build_number": 0, "depends": [],
        "size": SIZE, "sha256": hashlib.sha256(data).hexdigest(), "subdir": "noarch",
    }  # fmt: skip
    doc = {"info": {"subdir": "noarch"}, "packages": {}, "packages.conda": records}
    raw = json.dumps(doc, sort_keys=True, indent=2).encode()
    (noarch / "repodata.json").write_bytes(raw)
    (noarch / "repodata.json.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))


def etag_of(url: str) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        etag: str = r.headers["ETag"]
        return etag


def check_304(url: str, etag: str) -> None:
    req = urllib.request.Request(url, headers={"If-None-Match": etag})
    try:
        urllib.request.urlopen(req)
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return
        raise
    raise RuntimeError(f"{url} did not answer 304")


def wrk(url: str, seconds: int, connections: int, headers: list[str]) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}")
    return {"rps": rps}


def start_condasync(root: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("condasync")
    cmd = [exe] if exe else [sys.executable, "-m", "condasync"]
    proc = subprocess.Popen(
        [*cmd, "serve", str(root), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    wait_until_up(f"http://127.0.0.1:{port}/api/channels")
    return proc


def _scrape_every_second(url: str, stop: threading.Event, count: list[int]) -> None:
    while not stop.wait(1.0):
        with urllib.request.urlopen(url) as r:
            r.read()
        count[0] += 1


def observe_main(args: argparse.Namespace) -> int:
    """Metrics + access log on, against both off: cached-package MB/s and 304 req/s."""
    work = HERE / "work" / "serve"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "channels"
    make_tree(root)
    log = work / "access.log"
    ports = {"plain": free_port(), "observed": free_port()}
    servers = {
        "plain": start_condasync(root, ports["plain"], "--no-metrics"),
        "observed": start_condasync(root, ports["observed"], "--access-log", str(log)),
    }
    bases = {n: f"http://127.0.0.1:{p}/channels/bench/noarch" for n, p in ports.items()}
    big: dict[str, list[float]] = {name: [] for name in bases}
    small: dict[str, list[float]] = {name: [] for name in bases}
    stop, scrapes = threading.Event(), [0]
    scraper = threading.Thread(
        target=_scrape_every_second,
        args=(f"http://127.0.0.1:{ports['observed']}/metrics", stop, scrapes),
        daemon=True,
    )
    try:
        etags = {n: etag_of(f"{b}/repodata.json.zst") for n, b in bases.items()}
        for base in bases.values():
            wrk(f"{base}/{PACKAGE}", 2, args.big_connections, [])  # warm the page cache
        scraper.start()
        for i in range(args.runs):
            order = list(bases) if i % 2 == 0 else list(reversed(bases))
            for name in order:
                url = f"{bases[name]}/{PACKAGE}"
                big[name].append(wrk(url, args.duration, args.big_connections, [])["rps"])
            for name in order:
                url, inm = f"{bases[name]}/repodata.json.zst", f"If-None-Match: {etags[name]}"
                small[name].append(wrk(url, args.duration, args.small_connections, [inm])["rps"])
    finally:
        stop.set()
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)
    lines = sum(1 for _ in log.open())
    mbps = {n: [r * SIZE / 1e6 for r in runs] for n, runs in big.items()}
    med = {n: statistics.median(v) for n, v in mbps.items()}
    rps = {n: statistics.median(v) for n, v in small.items()}
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}",
        "command": " ".join(["python", "benchmarks/serve_bench.py", *sys.argv[1:]]),
        "package_MBps_runs": {n: [round(x) for x in v] for n, v in mbps.items()},
        "revalidate_rps_runs": {n: [round(x) for x in v] for n, v in small.items()},
        "package_ratio": round(med["observed"] / med["plain"], 3),
        "revalidate_ratio": round(rps["observed"] / rps["plain"], 3),
        "access_log_lines": lines,
        "metrics_scrapes": scrapes[0],
    }
    print(json.dumps(summary, indent=2))
    print(
        f"\n| case | --no-metrics, no log | metrics + access log | ratio | target |\n"
        f"|---|---:|---:|---:|---:|\n"
        f"| 10 MiB cached package (MB/s, median) | {med['plain']:.0f} | {med['observed']:.0f} "
        f"| {summary['package_ratio']:.3f} | >= 0.95 |\n"
        f"| 304 revalidation (req/s, median) | {rps['plain']:.0f} | {rps['observed']:.0f} "
        f"| {summary['revalidate_ratio']:.3f} | (not a target) |"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--runs", type=int, default=3, help="wrk runs per case (median is reported)")
    ap.add_argument("--big-connections", type=int, default=4)
    ap.add_argument("--small-connections", type=int, default=32)
    ap.add_argument("--nginx-workers", type=int, default=2)
    ap.add_argument("--observe", action="store_true", help="metrics + access log vs neither")
    args = ap.parse_args()
    if args.observe:
        if shutil.which("wrk") is None:
            print("needs wrk: apt-get install -y wrk", file=sys.stderr)
            return 2
        return observe_main(args)
    if shutil.which("wrk") is None or not NginxServer.available():
        print("needs wrk and nginx: apt-get install -y wrk nginx-light", file=sys.stderr)
        return 2
    work = HERE / "work" / "serve"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "channels"
    make_tree(root)
    nginx = NginxServer(root, work / "nginx", workers=args.nginx_workers).start()
    port = free_port()
    serve = start_condasync(root, port)
    targets = {
        "nginx": f"http://127.0.0.1:{nginx.port}/bench/noarch",
        "condasync": f"http://127.0.0.1:{port}/channels/bench/noarch",
    }
    results: dict[str, dict[str, float]] = {}
    big: dict[str, list[float]] = {name: [] for name in targets}
    small: dict[str, list[float]] = {name: [] for name in targets}
    try:
        etags = {}
        for name, base in targets.items():
            etags[name] = etag_of(f"{base}/repodata.json.zst")
            check_304(f"{base}/repodata.json.zst", etags[name])
            wrk(f"{base}/{PACKAGE}", 2, args.big_connections, [])  # warm the page cache
        # Runs alternate between the servers, so load from elsewhere hits both alike.
        for _ in range(args.runs):
            for name, base in targets.items():
                big[name].append(
                    wrk(f"{base}/{PACKAGE}", args.duration, args.big_connections, [])["rps"]
                )
                small[name].append(
                    wrk(
                        f"{base}/repodata.json.zst",
                        args.duration,
                        args.small_connections,
                        [f"If-None-Match: {etags[name]}"],
                    )["rps"]
                )
    finally:
        serve.terminate()
        serve.wait(10)
        nginx.stop()
    for name in targets:
        results[name] = {
            "package_MBps": statistics.median(big[name]) * SIZE / 1e6,
            "package_MBps_runs": [round(r * SIZE / 1e6) for r in big[name]],  # type: ignore[dict-item]
            "revalidate_rps": statistics.median(small[name]),
            "revalidate_rps_runs": [round(r) for r in small[name]],  # type: ignore[dict-item]
        }
    c, n = results["condasync"], results["nginx"]
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "command": " ".join(["python", "benchmarks/serve_bench.py", *sys.argv[1:]]),
        "results": results,
        "package_ratio": round(c["package_MBps"] / n["package_MBps"], 3),
        "revalidate_ratio": round(c["revalidate_rps"] / n["revalidate_rps"], 3),
    }
    print(json.dumps(summary, indent=2))
    print(
        f"\n| case | nginx | condasync | ratio | target |\n|---|---:|---:|---:|---:|\n"
        f"| 10 MiB cached package (MB/s) | {n['package_MBps']:.0f} | {c['package_MBps']:.0f} "
        f"| {summary['package_ratio']:.2f} | >= 0.5 |\n"
        f"| 304 revalidation of repodata.json.zst (req/s) | {n['revalidate_rps']:.0f} "
        f"| {c['revalidate_rps']:.0f} | {summary['revalidate_ratio']:.2f} | >= 0.25 |"
    )
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main())
