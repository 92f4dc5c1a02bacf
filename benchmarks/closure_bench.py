"""Issue 14 benchmarks: a filtered run on the 600k-record index (first run, after an upstream
change, no-op), this tree against a base commit; and `--solve` of a ~1,000-record environment
against a 600k-record solvable index, against py-rattler's own solve of the same files.

    python benchmarks/make_channel.py benchmarks/work/closure/channels/big --records 600000 \\
        --next --no-bodies
    python benchmarks/make_solvable.py benchmarks/work/closure/channels/solvable --records 600000
    python benchmarks/closure_bench.py [--repeats 3] [--base 8847436] [--only filtered,solve]

Wall time is measured around each process; peak RSS is the largest sum of VmRSS over the
process and its children, sampled every 10 ms from /proc (condasync solves in a child while
the parent holds the index, so the sum is what the machine must have). Results go to
benchmarks/work/closure/results-<time>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work" / "closure"
sys.path.insert(0, str(HERE))

from make_channel import flip  # noqa: E402
from server import PythonServer  # noqa: E402

RATTLER_SOLVE = """
import asyncio, json, os, sys, time
from rattler import (BuildString, Channel, GenericVirtualPackage, PackageName, SparseRepoData,
                     Version, solve_with_sparse_repodata)
root, specs = sys.argv[1], sys.argv[2:]
async def main():
    t = time.monotonic()
    ch = Channel("https://bench.invalid/solvable")
    sparse = [SparseRepoData(ch, s, os.path.join(root, s, "repodata.json"))
              for s in ("linux-64", "noarch")]
    vps = [GenericVirtualPackage(PackageName(n), Version(v), BuildString(b)) for n, v, b in
           (("__unix", "0", "0"), ("__linux", "4.18", "0"), ("__glibc", "2.28", "0"),
            ("__archspec", "1", "x86_64"))]
    recs = await solve_with_sparse_repodata(specs, sparse, virtual_packages=vps,
                                            timestamp_policy="allow-missing")
    print(json.dumps({"records": len(recs), "seconds": round(time.monotonic() - t, 3)}))
asyncio.run(main()); sys.stdout.flush(); os._exit(0)
"""


RATTLER_GATEWAY = """
import asyncio, json, os, sys, tempfile, time
from rattler import (BuildString, Channel, Gateway, GenericVirtualPackage, PackageName, Version,
                     solve)
url, specs = sys.argv[1], sys.argv[2:]
async def main():
    t = time.monotonic()
    vps = [GenericVirtualPackage(PackageName(n), Version(v), BuildString(b)) for n, v, b in
           (("__unix", "0", "0"), ("__linux", "4.18", "0"), ("__glibc", "2.28", "0"),
            ("__archspec", "1", "x86_64"))]
    with tempfile.TemporaryDirectory() as cache:
        recs = await solve([Channel(url)], specs, gateway=Gateway(cache_dir=cache),
                           platforms=["linux-64", "noarch"], virtual_packages=vps,
                           timestamp_policy="allow-missing")
    print(json.dumps({"records": len(recs), "seconds": round(time.monotonic() - t, 3)}))
asyncio.run(main()); sys.stdout.flush(); os._exit(0)
"""


def _tree_rss_kib(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            match = re.search(r"VmRSS:\s+(\d+)", status)
            total += int(match.group(1)) if match else 0
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run cmd; wall seconds, peak tree RSS (MiB), exit code, stdout."""
    subprocess.run(["sync"], check=False)
    started = time.monotonic()
    # `-m condasync` puts the working directory first on sys.path: run from the engine's tree
    cwd = env.get("PYTHONPATH") if env else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    return {
        "wall": round(wall, 3),
        "rss_mib": round(peak / 1024, 1),
        "rc": proc.returncode,
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace")[-3000:],
    }


def engine_env(src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(src)
    return env


def base_tree(rev: str) -> Path:
    dest = WORK / f"base-{rev}"
    if not dest.exists():
        dest.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def include_names(index: Path, n: int = 3) -> list[str]:
    with index.open("rb") as fh:
        head = fh.read(4_000_000).decode(errors="replace")
    names = list(dict.fromkeys(re.findall(r'"name": "([^"]+)"', head)))
    return names[10 : 10 + n]


def condasync(src: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-m", "condasync", "mirror", *args, "--json", "-q"], engine_env(src)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall"] for r in runs]
    rss = [r["rss_mib"] for r in runs]
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "median_rss_mib": statistics.median(rss),
        "max_rss_mib": max(rss),
    }


def warm(url: str, big: Path) -> None:
    """The Python upstream reads a version's bodies.tsv (600k lines) on its first package
    request: make that request now, for each version, so no engine's run pays for it."""
    for version in ("current", "next"):
        flip(big, version)
        manifest = big / "versions" / version / "linux-64" / "bodies.tsv"
        with manifest.open() as fh:
            filename = next(line for line in fh if not line.startswith("#")).split("\t")[0]
        with urllib.request.urlopen(f"{url}/big/linux-64/{filename}") as answer:
            answer.read()


def filtered(url: str, big: Path, engines: dict[str, Path], repeats: int) -> dict[str, Any]:
    names = include_names(big / "versions" / "current" / "linux-64" / "repodata.json")
    args = [a for name in names for a in ("--include", name)]
    results: dict[str, Any] = {"include": names}
    warm(url, big)
    for label, src in engines.items():
        first, change, noop = [], [], []
        for i in range(repeats):
            flip(big, "current")
            target = WORK / f"mirror-{label}"
            shutil.rmtree(target, ignore_errors=True)
            cmd, env = condasync(
                src, f"{url}/big", str(target), "-s", "linux-64", "-j", "16", *args
            )
            first.append(measure(cmd, env))
            flip(big, "next")
            change.append(measure(cmd, env))
            noop.append(measure(cmd, env))
            for kind, run in (("first", first[-1]), ("change", change[-1]), ("noop", noop[-1])):
                report = json.loads(run["stdout"]) if run["stdout"].strip() else {}
                run["report"] = {k: report.get(k) for k in ("seconds", "unchanged", "exit_code")}
                run["timings"] = report.get("subdirs", {}).get("linux-64", {}).get("timings")
                run["packages"] = report.get("subdirs", {}).get("linux-64", {}).get("packages")
                run.pop("stdout")
                print(
                    f"  filtered {label} {kind} #{i + 1}: {run['wall']} s, {run['rss_mib']} MiB,"
                    f" rc {run['rc']}, {run['packages']} packages",
                    file=sys.stderr,
                )
        results[label] = {
            "first": first,
            "change": change,
            "noop": noop,
            "summary": {
                k: summary(v) for k, v in (("first", first), ("change", change), ("noop", noop))
            },
        }
    flip(big, "current")
    return results


def solve(url: str, root: Path, src: Path, repeats: int) -> dict[str, Any]:
    specs = [s for s in (root / "specs.txt").read_text().splitlines() if s]
    solve_args = [a for spec in specs for a in ("--solve", spec)]
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    gateway: list[dict[str, Any]] = []
    for i in range(repeats):
        target = WORK / "mirror-solve"
        shutil.rmtree(target, ignore_errors=True)
        cmd, env = condasync(
            src,
            f"{url}/solvable",
            str(target),
            "-s",
            "linux-64",
            "-s",
            "noarch",
            "--platform",
            "linux-64",
            "--dry-run",
            *solve_args,
        )
        run = measure(cmd, env)
        report = json.loads(run.pop("stdout") or "{}")
        closure = report.get("closure") or {}
        run["records"] = [s["records"] for s in closure.get("solves", [])]
        run["solve_seconds"] = [s["seconds"] for s in closure.get("solves", [])]
        run["seconds"] = report.get("seconds")
        # the solver child's wall time (started early; the request sent once its index files
        # are written): what compares with a py-rattler process solving the same files
        run["solver_process"] = (closure.get("timings") or {}).get("solver_process")
        run["closure_timings"] = closure.get("timings")
        run["subdir_timings"] = {k: v.get("timings") for k, v in report.get("subdirs", {}).items()}
        ours.append(run)
        ref = measure([sys.executable, "-c", RATTLER_SOLVE, str(root), *specs], engine_env(src))
        ref.update(json.loads(ref.pop("stdout") or "{}"))
        theirs.append(ref)
        # py-rattler fetching the same channel from the same server (fresh cache), as a client
        gw = measure(
            [sys.executable, "-c", RATTLER_GATEWAY, f"{url}/solvable", *specs], engine_env(src)
        )
        gw.update(json.loads(gw.pop("stdout") or "{}"))
        gateway.append(gw)
        print(
            f"  solve #{i + 1}: condasync {run['wall']} s {run['rss_mib']} MiB"
            f" {run['records']} records (solver process {run['solver_process']} s, solve"
            f" {run['solve_seconds']} s, rc {run['rc']});"
            f" py-rattler {ref['wall']} s {ref['rss_mib']} MiB {ref.get('records')} records"
            f" (solve {ref.get('seconds')} s); py-rattler via HTTP {gw['wall']} s"
            f" {gw['rss_mib']} MiB {gw.get('records')} records",
            file=sys.stderr,
        )
    return {
        "specs": len(specs),
        "condasync": ours,
        "py-rattler": theirs,
        "py-rattler-http": gateway,
        "summary": {
            "condasync": summary(ours),
            "condasync solver process": {
                "median_s": statistics.median(r["solver_process"] or 0.0 for r in ours)
            },
            "py-rattler": summary(theirs),
            "py-rattler-http": summary(gateway),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base", default="8847436", help="commit to compare the filtered run with")
    ap.add_argument("--only", default="filtered,solve")
    args = ap.parse_args()
    channels = WORK / "channels"
    big = channels / "big"
    if (big / "versions").is_dir() and not (big / "active").exists():
        os.symlink(Path("versions") / "current", big / "active")
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with PythonServer(channels) as server:
        only = args.only.split(",")
        if "filtered" in only:
            engines = {"base": base_tree(args.base), "this": REPO}
            results["filtered"] = filtered(server.base_url, big, engines, args.repeats)
        if "solve" in only:
            results["solve"] = solve(server.base_url, channels / "solvable", REPO, args.repeats)
    out = WORK / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(
        json.dumps(
            {
                k: (
                    v["summary"]
                    if isinstance(v, dict) and "summary" in v
                    else {e: r["summary"] for e, r in v.items() if isinstance(r, dict)}
                    if isinstance(v, dict)
                    else v
                )
                for k, v in results.items()
            },
            indent=1,
        )
    )
    print(f"raw results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
