"""Time `condasync status` on a mirror tree the shape of a 600k-record one.

The tree is built directly in the engine's own formats (no 600k-file sync needed): a
600,000-record `linux-64/repodata.json` and `.zst`, the state the engine keeps for it (the
600k-entry `linux-64.files.json`, `linux-64.meta.json`) and the run record, plus a small
`noarch`. The package files themselves are not written: status must never look at them.

Usage::

    python benchmarks/status_bench.py [--records 600000] [--repeats 5]

Target (issue 16): <= 1 s from process start to exit. Work goes under benchmarks/work/status/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import zstandard

from condasync.engine.runrecord import RUNS_FILE, encode_runs
from condasync.engine.state import SubdirMeta, save_meta
from condasync.engine.status import mirror_status
from condasync.models import FileState, SubdirRun
from condasync.storage import LocalStorage

HERE = Path(__file__).resolve().parent


def build(root: Path, records: int) -> None:
    storage = LocalStorage(root, create=True)
    files: dict[str, FileState] = {}
    packages: dict[str, dict[str, object]] = {}
    for i in range(records):
        fn = f"pkg{i % 25000}-{i // 25000}.0-h{i:07d}_0.conda"
        sha = hashlib.sha256(fn.encode()).hexdigest()
        packages[fn] = {"name": f"pkg{i % 25000}", "version": f"{i // 25000}.0",
                        "build": f"h{i:07d}_0", "build_number": 0, "depends": [],
                        "size": 1000 + i % 997, "sha256": sha, "subdir": "linux-64"}  # fmt: skip
        files[fn] = FileState(1000 + i % 997, f"sha256:{sha}", 1_700_000_000_000_000_000)
    doc = {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": packages}
    raw = json.dumps(doc, indent=2, sort_keys=True).encode()
    (root / "linux-64").mkdir(parents=True, exist_ok=True)
    (root / "linux-64" / "repodata.json").write_bytes(raw)
    (root / "linux-64" / "repodata.json.zst").write_bytes(zstandard.compress(raw, 3))
    (root / "noarch").mkdir(exist_ok=True)
    (root / "noarch" / "repodata.json").write_text('{"info":{"subdir":"noarch"},"packages":{}}')
    storage.write_if_changed(".condasync/linux-64.files.json", msgspec.json.encode(files))
    for subdir in ("linux-64", "noarch"):
        st = os.stat(root / subdir / "repodata.json")
        source = f"https://example.org/ch/{subdir}/repodata.json.zst"
        published = {"repodata.json": [st.st_size, st.st_mtime_ns]}
        save_meta(storage, subdir, SubdirMeta(source=source, published=published))
    now = time.time()
    size = sum(f.size for f in files.values())
    runs = {
        "linux-64": SubdirRun("https://example.org/ch", now, now, packages=records, bytes=size),
        "noarch": SubdirRun("https://example.org/ch", now, now, packages=0, bytes=0),
    }
    storage.write_if_changed(RUNS_FILE, encode_runs(runs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=600_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = HERE / "work" / "status" / "mirror"
    shutil.rmtree(root, ignore_errors=True)
    started = time.monotonic()
    build(root, args.records)
    print(f"built {args.records} records in {time.monotonic() - started:.1f} s", file=sys.stderr)
    exe = shutil.which("condasync")
    cmd = [exe] if exe else [sys.executable, "-m", "condasync"]
    cases = {
        "status": ["status", str(root)],
        "status --json --max-age 2h": ["status", str(root), "--json", "--max-age", "2h"],
        "--version (baseline: start-up and imports only)": ["--version"],
    }
    times: dict[str, list[float]] = {case: [] for case in cases}
    work: list[float] = []
    for _ in range(args.repeats):
        for case, extra in cases.items():
            t0 = time.monotonic()
            out = subprocess.run([*cmd, *extra], capture_output=True, text=True)
            times[case].append(time.monotonic() - t0)
            assert out.returncode == 0, out.stderr
        t0 = time.monotonic()
        mirror_status(LocalStorage(root), str(root))
        work.append(time.monotonic() - t0)
    times["in-process mirror_status() (the work itself)"] = work
    index = (root / "linux-64" / "repodata.json").stat().st_size
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "records": args.records,
        "index_MB": round(index / 1e6),
        "load": round(os.getloadavg()[0], 1),
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "median": {k: round(statistics.median(v), 4) for k, v in times.items()},
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
