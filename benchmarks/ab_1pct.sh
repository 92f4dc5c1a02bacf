#!/usr/bin/env bash
# Interleaved A/B of engine versions on the 1% change (scenario 2), same host, same hour.
#
#   benchmarks/ab_1pct.sh N URL SRC_A:MIRROR_A SRC_B:MIRROR_B ...
#
# SRC is a checkout of condasync (its package is imported via PYTHONPATH), MIRROR a mirror
# of benchmarks/work/full/channels/big (a hard-linked copy of one: `cp -al`), one per engine
# so that neither reads the other's state. Before each run the upstream is flipped to the
# version that mirror does not have (tracked in MIRROR.ver), so every run is a 1% change.
# URL is where `benchmarks/server.py benchmarks/work/full/channels` serves the big channel,
# e.g. http://127.0.0.1:18765/big. Prints the median wall, peak RSS and phase timings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=$1; url=$2; shift 2
out=$(mktemp)
for _ in $(seq "$n"); do
  for pair in "$@"; do
    src=${pair%%:*}; target=${pair##*:}
    (cd "$here" && python - "$target" <<'PY'
import sys
from pathlib import Path
import make_channel as mc
channel, mark = Path("work/full/channels/big"), Path(sys.argv[1] + ".ver")
have = mark.read_text() if mark.exists() else mc.active_version(channel)
to = "next" if have == "current" else "current"
mc.flip(channel, to)
mark.write_text(to)
PY
    )
    (cd /tmp && PYTHONPATH=$src /usr/bin/time -f "%e %M" -o "$out.time" \
      python -m condasync mirror "$url" "$target" -s linux-64 -j 16 --json -q >"$out.json")
    python - "$src" "$out" >>"$out.rows" <<'PY'
import json, sys
src, out = sys.argv[1], sys.argv[2]
report = json.load(open(out + ".json"))
wall, rss = open(out + ".time").read().split()
timings = report["subdirs"]["linux-64"].get("timings", {})
n = len(report["added"]) + len(report["replaced"])
print(json.dumps({"src": src, "wall": float(wall), "rss_kib": int(rss), "downloads": n, **timings}))
PY
  done
done
python - "$out.rows" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    row = json.loads(line)
    runs[row.pop("src")].append(row)
for src, rows in runs.items():
    keys = sorted({k for r in rows for k in r})
    med = {k: statistics.median(r.get(k, 0) for r in rows) for k in keys}
    print(src, " ".join(f"{k}={v:.2f}" for k, v in med.items()))
    print("   walls", sorted(r["wall"] for r in rows))
PY
rm -f "$out" "$out".*
