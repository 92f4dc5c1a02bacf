"""Generate a synthetic, conda-forge-like channel for the condasync benchmarks.

The channel is laid out so that an HTTP server can switch atomically between two upstream
versions ("current" and "next") of the same subdir::

    OUT/
      meta.json                       what was generated (spec, counts, timings, the diff)
      active -> versions/current      symlink; flip() replaces it atomically
      pool/<subdir>/<filename>        package bodies of the "current" version
      versions/current/<subdir>/repodata.json, repodata.json.zst, bodies.tsv
      versions/current/noarch/repodata.json, repodata.json.zst   (empty, like a real channel)
      versions/next/<subdir>/...      same files for "next", plus the bodies that differ from
                                      the pool (added records and records with a new sha256)

A request for `<subdir>/<file>` is answered from `active/<subdir>/<file>` first and from
`pool/<subdir>/<file>` otherwise (nginx `try_files`, or benchmarks/server.py).

Records carry the fields of a conda-forge record (name, version, build, build_number,
depends, constrains, license, license_family, md5, sha256, size, subdir, timestamp) and the
JSON is written like conda-index writes it (2-space indent, sorted keys). About 25k package
names get a heavy-tailed number of versions and builds each; old builds are `.tar.bz2`, newer
ones `.conda`, a few builds exist in both formats.

Package bodies are deterministic: `shake_256(filename NUL rev)` gives the first MiB of a
body, repeated up to the declared size (`rev` is 0, and 1 for a body rebuilt in "next").
Every record's md5, sha256 and size are those of its body. To keep generation quick, the
bodies of the big index are tiny (64-512 bytes by default); the throughput channels use a
fixed size (`--fixed-size`). `bodies.tsv` lists `filename, rev, size` for every record so
that server.py can also produce bodies on the fly (`--no-bodies` skips writing them to disk).

Usage::

    python benchmarks/make_channel.py benchmarks/work/channels/big --records 600000 --next
    python benchmarks/make_channel.py benchmarks/work/channels/large --records 20 \\
        --fixed-size 100000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard

UNIT = 1 << 20  # one body repeats a unit of at most this many bytes
META_FORMAT = 2
T_START = 1483228800000  # 2017-01-01, ms
T_END = 1759276800000  # 2025-10-01, ms
PY_TAGS = ("39", "310", "311", "312", "313")
R_TAGS = ("41", "42", "43", "44")
LICENSES = (
    ("MIT", "MIT", 30),
    ("BSD-3-Clause", "BSD", 25),
    ("Apache-2.0", "APACHE", 15),
    ("GPL-3.0-or-later", "GPL3", 10),
    ("GPL-2.0-or-later", "GPL2", 6),
    ("LGPL-2.1-or-later", "LGPL", 5),
    ("MPL-2.0", "OTHER", 4),
    ("ISC", "OTHER", 3),
    ("BSD-2-Clause", "BSD", 2),
)
CONSONANTS = "bcdfghjklmnprstvwxz"
VOWELS = "aeiouy"
KIND_PREFIX = {"r": "r-", "lib": "lib", "perl": "perl-", "ros": "ros-humble-"}


@dataclass(frozen=True)
class Spec:
    """Everything that determines a generated channel (two equal specs give equal bytes)."""

    records: int = 600_000
    seed: int = 20240601
    subdir: str = "linux-64"
    size_min: int = 64
    size_max: int = 512
    fixed_size: int | None = None
    next_version: bool = False
    change_fraction: float = 0.01
    write_bodies: bool = True
    zst_level: int = 3


# ---------------------------------------------------------------------------------------------
# Package bodies


def body_unit(filename: str, rev: int, size: int) -> bytes:
    """The first min(size, UNIT) bytes of a body; the rest of the body repeats this unit."""
    return hashlib.shake_256(f"{filename}\0{rev}".encode()).digest(min(size, UNIT))


def iter_body(filename: str, rev: int, size: int, chunk: int = UNIT) -> Iterator[bytes]:
    """Yield the body of `filename` at revision `rev` in chunks (the whole body is `size`)."""
    if size <= 0:
        return
    unit = body_unit(filename, rev, size)
    if size <= len(unit):
        yield unit
        return
    reps = max(1, chunk // len(unit))
    block = unit * reps
    left = size
    while left > 0:
        piece = block if left >= len(block) else block[:left]
        left -= len(piece)
        yield piece


def write_body(path: Path | None, filename: str, rev: int, size: int) -> tuple[str, str]:
    """Write a body to `path` (when given) and return its (md5, sha256) hex digests."""
    if size <= UNIT:
        data = body_unit(filename, rev, size)
        if path is not None:
            with open(path, "wb") as fh:
                fh.write(data)
        return hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path if path is not None else os.devnull, "wb") as out:
        for piece in iter_body(filename, rev, size):
            md5.update(piece)
            sha.update(piece)
            if path is not None:
                out.write(piece)
    return md5.hexdigest(), sha.hexdigest()


# ---------------------------------------------------------------------------------------------
# Records


def _apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integer parts proportional to `weights`, each at least 1."""
    n = len(weights)
    if total <= n:
        return [1] * total + [0] * (n - total)
    rest = total - n
    s = sum(weights)
    raw = [w / s * rest for w in weights]
    counts = [int(x) for x in raw]
    short = rest - sum(counts)
    order = sorted(range(n), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[:short]:
        counts[i] += 1
    return [c + 1 for c in counts]


def _make_names(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Unique (name, kind) pairs; kinds decide build strings and dependencies."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    kinds = ("py", "plain", "r", "lib", "perl", "ros")
    weights = (30, 30, 18, 16, 3, 3)
    while len(out) < n:
        kind = rng.choices(kinds, weights)[0]
        stem = "".join(
            rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 3))
        )
        if rng.random() < 0.25:
            stem += rng.choice(("-core", "-base", "-devel", "-tools", "-python", "-static", "s"))
        if rng.random() < 0.15:
            stem += str(rng.randint(2, 9))
        name = KIND_PREFIX.get(kind, "") + stem
        if kind == "py" and rng.random() < 0.3:
            name = "py" + stem
        if name in seen:
            continue
        seen.add(name)
        out.append((name, kind))
    return out


def _versions(rng: random.Random, n: int, kind: str) -> list[str]:
    a, b, c = rng.choice((0, 0, 1, 1, 1, 2, 3, 4, 5)), rng.randint(0, 20), rng.randint(0, 9)
    out = []
    for _ in range(n):
        out.append(f"{a}.{b}_{c}" if kind == "r" else f"{a}.{b}.{c}")
        r = rng.random()
        if r < 0.65:
            c += 1
        elif r < 0.93:
            b, c = b + 1, 0
        else:
            a, b, c = a + 1, 0, 0
    return out


def _pin(rng: random.Random, dep: str) -> str:
    a, b, c = rng.randint(0, 6), rng.randint(0, 30), rng.randint(0, 12)
    form = rng.random()
    if form < 0.3:
        return dep
    if form < 0.6:
        return f"{dep} >={a}.{b}"
    return f"{dep} >={a}.{b}.{c},<{a + 1}.0a0"


class _Gen:
    """Builds the records of one subdir from a seeded RNG."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        n_names = max(1, round(spec.records / 24))
        self.names = _make_names(self.rng, n_names)
        weights = [self.rng.lognormvariate(0.0, 1.25) for _ in self.names]
        self.counts = _apportion(spec.records, weights)
        ranked = sorted(range(len(self.names)), key=lambda i: -self.counts[i])
        top = [self.names[i] for i in ranked[: max(1, min(400, len(ranked)))]]
        self.popular = {
            kind: [n for n, k in top if k == kind] or [n for n, _ in top]
            for kind in ("py", "r", "lib", "plain", "perl", "ros")
        }
        self.popular_any = [n for n, _ in top]
        self.licenses = [(lic, fam) for lic, fam, _ in LICENSES]
        self.license_weights = [w for _, _, w in LICENSES]

    def size(self) -> int:
        if self.spec.fixed_size is not None:
            return self.spec.fixed_size
        return self.rng.randint(self.spec.size_min, self.spec.size_max)

    def depends(self, kind: str, build: str) -> list[str]:
        rng = self.rng
        deps: list[str]
        if kind == "py":
            tag = build[2 : build.index("h")]
            major, minor = tag[0], tag[1:]
            deps = [
                "libgcc-ng >=12",
                f"python >={major}.{minor},<{major}.{int(minor) + 1}.0a0",
                f"python_abi {major}.{minor}.* *_cp{tag}",
            ]
        elif kind == "r":
            tag = build[1 : build.index("h")]
            deps = ["libgcc-ng >=12", f"r-base >={tag[0]}.{tag[1]},<{tag[0]}.{int(tag[1]) + 1}.0a0"]
        elif kind == "lib":
            deps = ["libgcc-ng >=12", "libstdcxx-ng >=12"]
        elif kind == "perl":
            deps = ["perl >=5.32.1,<6.0a0 *_perl5"]
        else:
            deps = ["libgcc-ng >=12"]
        pool = self.popular.get(kind) or self.popular_any
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            deps.append(_pin(rng, rng.choice(pool)))
        return deps

    def constrains(self) -> list[str]:
        if self.rng.random() < 0.9:
            return []
        return [_pin(self.rng, self.rng.choice(self.popular_any))]

    def build(self, kind: str, version_index: int, variant: int, bn: int) -> str:
        h = f"h{self.rng.getrandbits(28):07x}_{bn}"
        if kind == "py":
            tag = PY_TAGS[(version_index // 3 + variant) % len(PY_TAGS)]
            return f"py{tag}{h}"
        if kind == "r":
            return f"r{R_TAGS[(version_index // 4 + variant) % len(R_TAGS)]}{h}"
        if kind == "perl":
            return f"pl5321{h}"
        return h

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (filename, record-without-hashes-and-size) in a fixed order."""
        rng = self.rng
        seen: set[str] = set()
        span = T_END - T_START
        for (name, kind), count in zip(self.names, self.counts, strict=True):
            if count == 0:
                continue
            lic, fam = rng.choices(self.licenses, self.license_weights)[0]
            bpv = min(count, rng.choice((1, 1, 2, 3, 4, 5, 6, 8, 10, 12)))
            n_versions = math.ceil(count / bpv)
            versions = _versions(rng, n_versions, kind)
            start = T_START + int(rng.random() * (span - 30 * 86400000))
            prev: tuple[str, dict[str, Any], str] | None = None
            for j in range(count):
                vi, variant = divmod(j, bpv)
                if prev is not None and rng.random() < 0.02:
                    # the same build in the other format
                    stem, rec, ext = prev
                    other = ".tar.bz2" if ext == ".conda" else ".conda"
                    if stem + other not in seen:
                        seen.add(stem + other)
                        prev = None
                        yield stem + other, dict(rec)
                        continue
                ts = start + int((T_END - start) * (vi + 0.9 * rng.random()) / n_versions)
                bn = rng.choice((0, 0, 0, 1, 1, 2, 3))
                while True:
                    build = self.build(kind, vi, variant, bn)
                    stem = f"{name}-{versions[vi]}-{build}"
                    frac = (ts - T_START) / span
                    conda = rng.random() < (0.97 if frac > 0.62 else 0.03)
                    ext = ".conda" if conda else ".tar.bz2"
                    if stem + ext not in seen:
                        break
                seen.add(stem + ext)
                rec = {
                    "build": build,
                    "build_number": bn,
                    "constrains": self.constrains(),
                    "depends": self.depends(kind, build),
                    "license": lic,
                    "license_family": fam,
                    "name": name,
                    "subdir": self.spec.subdir,
                    "timestamp": ts,
                    "version": versions[vi],
                }
                prev = (stem, rec, ext)
                yield stem + ext, rec


# ---------------------------------------------------------------------------------------------
# Writing


def _dump_repodata(subdir: str, records: dict[str, dict[str, Any]]) -> bytes:
    doc = {
        "info": {"subdir": subdir},
        "packages": {k: v for k, v in records.items() if k.endswith(".tar.bz2")},
        "packages.conda": {k: v for k, v in records.items() if k.endswith(".conda")},
        "removed": [],
        "repodata_version": 1,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _write_index(
    folder: Path,
    subdir: str,
    records: dict[str, dict[str, Any]],
    revs: dict[str, int],
    level: int,
) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    data = _dump_repodata(subdir, records)
    zst = zstandard.ZstdCompressor(level=level, threads=-1).compress(data)
    (folder / "repodata.json").write_bytes(data)
    (folder / "repodata.json.zst").write_bytes(zst)
    with open(folder / "bodies.tsv", "w") as fh:
        fh.write("# filename\trev\tsize\n")
        for fn, rec in records.items():
            fh.write(f"{fn}\t{revs.get(fn, 0)}\t{rec['size']}\n")
    n_conda = sum(1 for k in records if k.endswith(".conda"))
    return {
        "records": len(records),
        "packages": len(records) - n_conda,
        "packages.conda": n_conda,
        "json_bytes": len(data),
        "zst_bytes": len(zst),
    }


def _write_empty_noarch(version_dir: Path, level: int) -> None:
    _write_index(version_dir / "noarch", "noarch", {}, {}, level)
    (version_dir / "noarch" / "bodies.tsv").unlink()


def _fill_body(rec: dict[str, Any], folder: Path | None, fn: str, rev: int, size: int) -> None:
    md5, sha = write_body(folder / fn if folder is not None else None, fn, rev, size)
    rec["md5"] = md5
    rec["sha256"] = sha
    rec["size"] = size


def _bump_version(version: str, k: int) -> str:
    head, _, last = version.replace("_", ".").rpartition(".")
    sep = "_" if "_" in version else "."
    base = version[: len(head)] if head else version
    return f"{base}{sep}{int(last) + 1 + k % 7}" if last.isdigit() else f"{version}.{1 + k % 7}"


def _make_next(
    spec: Spec,
    current: dict[str, dict[str, Any]],
    gen: _Gen,
    overlay: Path | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, int], dict[str, list[str]]]:
    """The "next" upstream: 1% (change_fraction) of records added, removed or changed."""
    rng = random.Random(spec.seed + 1)
    names = list(current)
    n = max(3, round(len(names) * spec.change_fraction))
    n_add, n_rm = n // 3, n // 3
    n_chg = n - n_add - n_rm
    n_sha = (n_chg + 1) // 2
    chosen = rng.sample(names, min(len(names), n_rm + n_chg))
    removed = sorted(chosen[:n_rm])
    changed_sha = sorted(chosen[n_rm : n_rm + n_sha])
    patched = sorted(chosen[n_rm + n_sha :])
    nxt = {fn: rec for fn, rec in current.items()}
    for fn in removed:
        del nxt[fn]
    revs: dict[str, int] = {}
    for fn in changed_sha:
        rec = dict(nxt[fn])
        revs[fn] = 1
        size = spec.fixed_size if spec.fixed_size is not None else gen.size()
        _fill_body(rec, overlay, fn, 1, size)
        nxt[fn] = rec
    for fn in patched:
        rec = dict(nxt[fn])
        rec["depends"] = [*rec["depends"], "__glibc >=2.17,<3.0.a0"]
        nxt[fn] = rec
    added: list[str] = []
    k = 0
    while len(added) < n_add:
        tmpl_fn = rng.choice(names)
        tmpl = current[tmpl_fn]
        version = _bump_version(tmpl["version"], k)
        k += 1
        build = tmpl["build"].rsplit("_", 1)[0][:-7] + f"{rng.getrandbits(28):07x}_0"
        fn = f"{tmpl['name']}-{version}-{build}.conda"
        if fn in nxt:
            continue
        rec = dict(tmpl)
        rec.update(version=version, build=build, build_number=0, timestamp=T_END + k * 1000)
        size = spec.fixed_size if spec.fixed_size is not None else gen.size()
        _fill_body(rec, overlay, fn, 0, size)
        nxt[fn] = rec
        added.append(fn)
    diff = {
        "added": sorted(added),
        "removed": removed,
        "changed_sha256": changed_sha,
        "patched_depends": patched,
    }
    return nxt, revs, diff


def generate(out: Path, spec: Spec, log: bool = True) -> dict[str, Any]:
    """Generate the channel described by `spec` into `out` (replacing it) and return its meta."""
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def say(msg: str) -> None:
        if log:
            print(f"[make_channel {out.name}] {msg}", flush=True)

    if out.exists() or out.is_symlink():
        shutil.rmtree(out)
    pool = out / "pool" / spec.subdir
    pool.mkdir(parents=True)
    body_dir = pool if spec.write_bodies else None

    t = time.perf_counter()
    gen = _Gen(spec)
    current: dict[str, dict[str, Any]] = {}
    for fn, rec in gen.records():
        _fill_body(rec, body_dir, fn, 0, gen.size())
        current[fn] = rec
    timings["records_and_bodies"] = time.perf_counter() - t
    say(f"{len(current)} records and bodies in {timings['records_and_bodies']:.1f}s")

    t = time.perf_counter()
    cur_dir = out / "versions" / "current"
    cur = _write_index(cur_dir / spec.subdir, spec.subdir, current, {}, spec.zst_level)
    stats = {"current": cur}
    _write_empty_noarch(cur_dir, spec.zst_level)
    timings["index_current"] = time.perf_counter() - t
    say(
        f"current index: {stats['current']['json_bytes'] / 1e6:.1f} MB json, "
        f"{stats['current']['zst_bytes'] / 1e6:.1f} MB zst in {timings['index_current']:.1f}s"
    )

    diff: dict[str, list[str]] = {}
    if spec.next_version:
        t = time.perf_counter()
        nxt_dir = out / "versions" / "next"
        overlay = nxt_dir / spec.subdir
        overlay.mkdir(parents=True)
        nxt, revs, diff = _make_next(spec, current, gen, overlay if spec.write_bodies else None)
        stats["next"] = _write_index(overlay, spec.subdir, nxt, revs, spec.zst_level)
        _write_empty_noarch(nxt_dir, spec.zst_level)
        timings["next"] = time.perf_counter() - t
        say(
            f"next version: {sum(len(v) for v in diff.values())} records differ, "
            f"{timings['next']:.1f}s"
        )

    os.symlink(Path("versions") / "current", out / "active")
    timings["total"] = time.perf_counter() - t_all
    meta = {
        "format": META_FORMAT,
        "spec": asdict(spec),
        "versions": stats,
        "diff": diff,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "complete": True,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    say(f"done in {timings['total']:.1f}s")
    return meta


def load_meta(out: Path) -> dict[str, Any] | None:
    """The meta.json of a complete channel, or None."""
    try:
        meta: dict[str, Any] = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("complete") and meta.get("format") == META_FORMAT else None


def ensure(out: Path, spec: Spec, log: bool = True) -> dict[str, Any]:
    """Reuse the channel at `out` if it was generated from `spec`; generate it otherwise."""
    meta = load_meta(out)
    if meta is not None and meta["spec"] == asdict(spec):
        flip(out, "current")
        return meta
    return generate(out, spec, log=log)


def active_version(out: Path) -> str:
    return os.readlink(out / "active").rsplit("/", 1)[-1]


def flip(out: Path, version: str) -> None:
    """Atomically make `version` the served upstream version.

    The newly served index files get an mtime past the previous one's, so that
    Last-Modified moves forward (nginx's ETag is mtime-size, so it changes too).
    """
    subdirs = [p.name for p in (out / "versions" / version).iterdir() if p.is_dir()]
    old = max(
        (
            (out / "active" / s / "repodata.json").stat().st_mtime
            for s in subdirs
            if (out / "active" / s / "repodata.json").exists()
        ),
        default=0.0,
    )
    stamp = float(max(int(time.time()), int(old) + 1))
    if active_version(out) != version:
        for s in subdirs:
            for f in ("repodata.json", "repodata.json.zst"):
                p = out / "versions" / version / s / f
                if p.exists():
                    os.utime(p, (stamp, stamp))
    tmp = out / f".active.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(Path("versions") / version, tmp)
    os.replace(tmp, out / "active")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path, help="channel folder to create (replaced if it exists)")
    ap.add_argument("--records", type=int, default=600_000)
    ap.add_argument("--seed", type=int, default=Spec.seed)
    ap.add_argument("--subdir", default="linux-64")
    ap.add_argument("--size-min", type=int, default=64, help="smallest body, bytes")
    ap.add_argument("--size-max", type=int, default=512, help="largest body, bytes")
    ap.add_argument("--fixed-size", type=int, default=None, help="every body this many bytes")
    ap.add_argument("--next", action="store_true", help="also write the 'next' upstream version")
    ap.add_argument("--change-fraction", type=float, default=0.01)
    ap.add_argument("--no-bodies", action="store_true", help="do not write bodies to disk")
    ap.add_argument("--zst-level", type=int, default=3)
    args = ap.parse_args(argv)
    spec = Spec(
        records=args.records,
        seed=args.seed,
        subdir=args.subdir,
        size_min=args.size_min,
        size_max=args.size_max,
        fixed_size=args.fixed_size,
        next_version=args.next,
        change_fraction=args.change_fraction,
        write_bodies=not args.no_bodies,
        zst_level=args.zst_level,
    )
    generate(args.out, spec)


if __name__ == "__main__":
    main()
