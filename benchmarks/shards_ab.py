"""A/B of engines on the shard cost of a 1% change that writes a fresh shard file per changed
name (5,322 of them on the `big` channel), interleaved in one sitting.

Each round, for each engine in turn: the sharded mirror first drops the other version's
shards (a run with `--shard-grace 0`, which deletes them: 5,300 inodes freed seconds before
the measured run, as back-to-back runs leave them), then upstream flips to the other version,
and the plain mirror (`--no-shards`) and the sharded one sync it. Reported per run: the wall
time of each, the difference, and the `plan` and `download` phases. The mirrors are
shards_bench.py's (`m-plain`, `m-shards`); run that once first.

    python benchmarks/shards_ab.py --engine base=/tmp/eng-base --engine new=. [--rounds 3]

An engine is a folder holding a `condasync` package (a checkout, or `git archive REV
condasync | tar -x -C DIR`); the run's working directory is that folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_channel as mc  # noqa: E402
from server import NginxServer  # noqa: E402


def mirror(engine: Path, url: str, target: Path, *extra: str) -> dict[str, Any]:
    args = ["mirror", url, str(target), "-s", "linux-64", "-j", "16", "--json", *extra]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "condasync", *args],
        capture_output=True,
        text=True,
        cwd=engine,
        check=False,
    )
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{engine}: mirror {extra} failed: {proc.stderr[-2000:]}")
    sub = json.loads(proc.stdout)["subdirs"]["linux-64"]
    timings = sub["timings"]
    return {
        "wall": round(wall, 2),
        "written": sub["shards"].get("written", 0),
        "plan": timings.get("plan", 0.0),
        "download": timings.get("download", 0.0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=HERE / "work/shards")
    args = ap.parse_args()
    engines = [(name, Path(d).resolve()) for name, d in (e.split("=", 1) for e in args.engine)]
    work = args.work.resolve()
    channel = work / "channels" / "big"
    plain, sharded = work / "m-plain", work / "m-shards"
    runs: list[dict[str, Any]] = []
    with NginxServer(channel.parent, work / "nginx") as server:
        url = f"{server.base_url}/{channel.name}/"
        for _ in range(args.rounds):
            for name, engine in engines:
                mirror(engine, url, sharded, "--shard-grace", "0")  # the other version's go
                version = "next" if mc.active_version(channel) == "current" else "current"
                mc.flip(channel, version)
                row = {
                    "engine": name,
                    "no_shards": mirror(engine, url, plain, "--no-shards"),
                    "shards": mirror(engine, url, sharded),
                }
                row["delta"] = round(row["shards"]["wall"] - row["no_shards"]["wall"], 2)
                print(f"{name}: {row['no_shards']['wall']} s without, {row['shards']['wall']} s"
                      f" with ({row['shards']['written']} shard files): {row['delta']:+.2f} s;"
                      f" plan {row['no_shards']['plan']:.2f} / {row['shards']['plan']:.2f} s,"
                      f" download {row['no_shards']['download']:.2f} /"
                      f" {row['shards']['download']:.2f} s", flush=True)  # fmt: skip
                runs.append(row)
    for name, _ in engines:
        deltas = [r["delta"] for r in runs if r["engine"] == name]
        within = sum(d <= 2 for d in deltas)
        print(f"{name}: median {statistics.median(deltas):+.2f} s, at most +2 s in {within}"
              f" of {len(deltas)}")  # fmt: skip
    path = work / f"shards-ab-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(runs, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
