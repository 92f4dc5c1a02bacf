"""Write a conda-forge-like channel whose dependencies resolve, for the `--solve` benchmark.

make_channel.py's big index names dependencies (python, libgcc-ng, r-base...) that it never
defines, so nothing in it solves. This one builds a topologically ordered set of names, each
depending only on names before it with pins its targets satisfy: base packages (python 3.8-3.13
with python_abi, libgcc-ng, libstdcxx-ng, openssl, r-base, perl), then python, R, C library and
noarch packages with heavy-tailed version counts, one build per python or R version. Record
hashes are derived from the filename (the benchmark solves and plans; it downloads nothing).

    python benchmarks/make_solvable.py OUT --records 600000 [--env-records 1000]

writes OUT/{linux-64,noarch}/repodata.json and OUT/specs.txt (top-level specs whose solve
gives about --env-records records).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
RS = ("4.1", "4.2", "4.3", "4.4")
T0 = 1_500_000_000_000
SYL = ("ba", "ko", "ri", "mu", "te", "sa", "lo", "ne", "pi", "du", "ga", "vo", "xe", "zu", "fi")


def _h(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


class Gen:
    def __init__(self, records: int, seed: int = 14) -> None:
        self.rng = random.Random(seed)
        self.target = records
        self.out: dict[str, dict[str, dict[str, Any]]] = {"linux-64": {}, "noarch": {}}
        self.versions: dict[str, list[str]] = {}
        self.kind: dict[str, str] = {}
        self.deps_of: dict[str, set[str]] = {}
        self.order: list[str] = []

    def add(self, subdir: str, name: str, version: str, build: str, bn: int, depends: list[str],
            ts: int, extra: dict[str, Any] | None = None) -> None:  # fmt: skip
        ext = ".conda" if ts > T0 + 2 * 10**11 else ".tar.bz2"
        fn = f"{name}-{version}-{build}{ext}"
        rec: dict[str, Any] = {
            "build": build, "build_number": bn, "constrains": [], "depends": depends,
            "license": "BSD-3-Clause", "license_family": "BSD",
            "md5": _h("md5" + fn, 32), "name": name, "sha256": _h(fn, 64),
            "size": 1000 + int(_h("s" + fn, 5), 16), "subdir": subdir, "timestamp": ts,
            "version": version,
        }  # fmt: skip
        if extra:
            rec.update(extra)
        self.out[subdir][fn] = rec

    def count(self) -> int:
        return sum(len(v) for v in self.out.values())

    def base(self) -> None:
        ts = T0
        for i, py in enumerate(PYTHONS):
            for patch in range(6):
                tag = py.replace(".", "")
                v = f"{py}.{patch}"
                self.add("linux-64", "python", v, f"h{_h(v, 7)}_0_cpython", 0,
                         ["libgcc-ng >=12", "openssl >=3.0,<4.0a0", "__glibc >=2.17"],
                         ts + i * 10**10 + patch * 10**9)  # fmt: skip
                self.add("linux-64", "python_abi", py, f"{patch}_cp{tag}", patch, [],
                         ts + i * 10**10 + patch * 10**9)  # fmt: skip
        for lib, vs in (("libgcc-ng", range(9, 15)), ("libstdcxx-ng", range(9, 15))):
            for major in vs:
                for minor in range(3):
                    self.add("linux-64", lib, f"{major}.{minor}.0", f"h{_h(lib, 7)}_{minor}",
                             minor, ["__glibc >=2.17"] if lib == "libgcc-ng" else
                             [f"libgcc-ng >={major}"], ts + major * 10**9)  # fmt: skip
        for v in ("3.0.13", "3.1.5", "3.2.1", "3.3.0"):
            self.add("linux-64", "openssl", v, "hd590300_0", 0, ["libgcc-ng >=12"], ts + 10**9)
        for r in RS:
            for patch in range(3):
                self.add("linux-64", "r-base", f"{r}.{patch}", f"h{_h(r, 7)}_0", 0,
                         ["libgcc-ng >=12", "libstdcxx-ng >=12"], ts + 10**10)  # fmt: skip
        self.add("linux-64", "perl", "5.32.1", "7_hd590300_perl5", 7, ["libgcc-ng >=12"], ts)

    def name(self) -> str:
        while True:
            n = "".join(self.rng.choice(SYL) for _ in range(self.rng.randint(2, 4)))
            n += self.rng.choice(("", "", "-core", "-tools", "lib", "2"))
            kind = self.rng.choices(("py", "lib", "r", "plain", "noarch"), (35, 25, 12, 13, 15))[0]
            full = {"py": "py" + n, "r": "r-" + n, "lib": "lib" + n}.get(kind, n)
            if full not in self.kind:
                self.kind[full] = kind
                return full

    def pick_deps(self, kind: str) -> list[tuple[str, str]]:
        """(name, spec) of earlier names, pinned to something they have."""
        pool = [n for n in self.order[-4000:] if self._compatible(kind, self.kind[n])]
        out: list[tuple[str, str]] = []
        for _ in range(self.rng.choice((0, 1, 1, 2, 2, 3, 4))):
            if not pool:
                break
            dep = self.rng.choice(pool)
            if any(d == dep for d, _ in out):
                continue
            vs = self.versions[dep]
            v = self.rng.choice(vs[len(vs) // 2 :])
            major = v.split(".")[0]
            form = self.rng.random()
            # every pin admits the newest version of its target, so the whole index solves
            upper = major == vs[-1].split(".")[0]
            spec = dep if form < 0.3 else (f"{dep} >={v},<{int(major) + 1}.0a0"
                                           if upper and form > 0.6 else f"{dep} >={v}")  # fmt: skip
            out.append((dep, spec))
        return out

    @staticmethod
    def _compatible(kind: str, dep_kind: str) -> bool:
        if kind == "lib" or kind == "plain":
            return dep_kind in ("lib", "plain")
        if kind == "noarch":
            return dep_kind in ("noarch", "py")
        if kind == "r":
            return dep_kind in ("r", "lib")
        return dep_kind in ("py", "lib", "noarch", "plain")

    def package(self) -> None:
        name = self.name()
        kind = self.kind[name]
        n_versions = max(1, min(60, int(self.rng.lognormvariate(1.3, 0.9))))
        a, b, c = self.rng.randint(0, 5), self.rng.randint(0, 20), 0
        start = T0 + self.rng.randint(0, 3 * 10**11)
        versions = []
        for _ in range(n_versions):
            versions.append(f"{a}.{b}.{c}")
            r = self.rng.random()
            a, b, c = (a, b, c + 1) if r < 0.6 else ((a, b + 1, 0) if r < 0.92 else (a + 1, 0, 0))
        self.versions[name] = versions
        deps = self.pick_deps(kind)
        self.deps_of[name] = {d for d, _ in deps}
        for i, v in enumerate(versions):
            ts = start + i * self.rng.randint(10**8, 10**9)
            specs = [s for _, s in deps]
            if kind == "py":
                for py in PYTHONS[max(0, i * len(PYTHONS) // n_versions - 2) :]:
                    tag = py.replace(".", "")
                    nxt = f"3.{int(py.split('.')[1]) + 1}"
                    dep = [f"python >={py},<{nxt}.0a0", f"python_abi {py}.* *_cp{tag}", *specs]
                    self.add("linux-64", name, v, f"py{tag}h{_h(name + v, 7)}_0", 0, dep, ts)
            elif kind == "r":
                for r in RS:
                    nxt = f"4.{int(r.split('.')[1]) + 1}"
                    dep = [f"r-base >={r},<{nxt}.0a0", "libgcc-ng >=12", *specs]
                    self.add("linux-64", name, v, f"r{r.replace('.', '')}h{_h(v, 7)}_0", 0, dep, ts)
            elif kind == "noarch":
                self.add("noarch", name, v, "pyhd8ed1ab_0", 0, ["python >=3.8", *specs], ts,
                         {"noarch": "python"})  # fmt: skip
            else:
                for bn in range(self.rng.choice((1, 1, 2))):
                    dep = ["libgcc-ng >=12", "libstdcxx-ng >=12", *specs]
                    self.add("linux-64", name, v, f"h{_h(name + v, 7)}_{bn}", bn, dep, ts)
        self.order.append(name)

    def run(self) -> None:
        self.base()
        for base in ("python", "libgcc-ng", "libstdcxx-ng", "openssl", "r-base", "perl"):
            self.kind[base] = "base"
        while self.count() < self.target:
            self.package()

    def closure(self, names: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self.deps_of.get(n, ()))
        return seen

    def env_specs(self, records: int) -> list[str]:
        """Top-level python-3.12 environment specs whose closure is about `records` names."""
        chosen: list[str] = []
        candidates = [n for n in reversed(self.order) if self.kind[n] in ("py", "noarch", "lib")]
        for name in candidates:
            if len(self.closure(chosen)) >= records - 40:  # base packages and python's deps
                break
            if len(self.closure([*chosen, name])) <= records:
                chosen.append(name)
        return ["python 3.12.*", *chosen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--records", type=int, default=600_000)
    ap.add_argument("--env-records", type=int, default=1000)
    args = ap.parse_args()
    gen = Gen(args.records)
    gen.run()
    for subdir, recs in gen.out.items():
        folder = args.out / subdir
        folder.mkdir(parents=True, exist_ok=True)
        doc = {
            "info": {"subdir": subdir},
            "packages": {k: v for k, v in recs.items() if k.endswith(".tar.bz2")},
            "packages.conda": {k: v for k, v in recs.items() if k.endswith(".conda")},
            "removed": [],
            "repodata_version": 1,
        }
        (folder / "repodata.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    specs = gen.env_specs(args.env_records)
    (args.out / "specs.txt").write_text("\n".join(specs) + "\n")
    print(
        f"{gen.count()} records ({len(gen.out['linux-64'])} linux-64,"
        f" {len(gen.out['noarch'])} noarch), {len(gen.order)} names, {len(specs)} specs"
    )


if __name__ == "__main__":
    main()
