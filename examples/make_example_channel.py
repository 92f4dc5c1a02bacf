"""Regenerate ``examples/channel/``: a tiny but valid conda channel for demos and manual tests.

Run from the repository root::

    python examples/make_example_channel.py            # rewrites examples/channel/
    python examples/make_example_channel.py --out DIR  # writes the channel somewhere else

The channel has two subdirs, ``noarch`` and ``linux-64``, eight package files in both formats
(``.conda`` and ``.tar.bz2``), dependencies between packages, several licenses (for license
filters such as ``*[license=MIT]``) and several versions of the same package (for ``--latest``).
No package needs ``python``; every package installs with any conda client (conda, mamba, pixi,
rattler).

Packages are built with ``conda_package_handling.api.create`` from a staged prefix holding
``info/index.json``, ``info/paths.json``, ``info/files`` and one small payload file. Output is
deterministic: fixed timestamps, fixed file modes and mtimes, and the ``.conda`` zip container is
rewritten with fixed entry dates (zipfile stamps entries with the current time). Each package has
exactly one payload file because the ``.tar.bz2`` writer orders payload files by ``hash()``, which
changes from one interpreter to the next. ``repodata.json`` records carry the ``md5``, ``sha256``
and ``size`` of the bytes actually written, so the channel stays valid even if a future
conda-package-handling release makes the archives differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conda_package_handling import api as cph_api

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "channel"
SUBDIRS = ("linux-64", "noarch")

# Every staged file gets this mtime (2024-01-01T00:00:00Z); every zip entry gets this date.
FILE_MTIME = 1704067200
ZIP_DATE_TIME = (2024, 1, 1, 0, 0, 0)
# Zstandard settings for the .conda inner tarballs; a fixed thread count keeps output stable.
ZSTD_LEVEL = 19
ZSTD_THREADS = 1


@dataclass(frozen=True)
class Package:
    """One package build, written in one or both archive formats."""

    name: str
    version: str
    build_number: int
    subdir: str
    license: str
    timestamp: int  # epoch milliseconds, as conda-build writes it
    payload_path: str
    payload_text: str
    depends: tuple[str, ...] = ()
    formats: tuple[str, ...] = (".conda",)
    executable: bool = False
    extra_index: dict[str, Any] = field(default_factory=dict)
    build_string: str = ""  # given, instead of the one made from the name and version

    @property
    def build(self) -> str:
        if self.build_string:
            return self.build_string
        if self.subdir == "noarch":
            return str(self.build_number)
        digest = hashlib.sha1(f"{self.name}-{self.version}".encode()).hexdigest()[:8]
        return f"h{digest}_{self.build_number}"

    @property
    def dist(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    def index_json(self) -> dict[str, Any]:
        index: dict[str, Any] = {
            "build": self.build,
            "build_number": self.build_number,
            "depends": list(self.depends),
            "license": self.license,
            "name": self.name,
            "subdir": self.subdir,
            "timestamp": self.timestamp,
            "version": self.version,
        }
        if self.subdir == "noarch":
            index["noarch"] = "generic"
        else:
            platform, _, bits = self.subdir.partition("-")
            index["platform"] = platform
            index["arch"] = "x86_64" if bits == "64" else bits
        index.update(self.extra_index)
        return index


def _ms(day: str) -> int:
    """``2024-03-01`` -> epoch milliseconds at 12:00 UTC that day."""
    when = datetime.fromisoformat(day).replace(hour=12, tzinfo=timezone.utc)
    return int(when.timestamp()) * 1000


PACKAGES: tuple[Package, ...] = (
    Package(
        name="hello-data",
        version="1.0",
        build_number=0,
        subdir="noarch",
        license="MIT",
        timestamp=_ms("2024-01-15"),
        payload_path="share/hello-data/README",
        payload_text="hello-data 1.0: a greeting table.\nen=Hello\n",
    ),
    Package(
        name="hello-data",
        version="1.1",
        build_number=0,
        subdir="noarch",
        license="MIT",
        timestamp=_ms("2024-03-01"),
        payload_path="share/hello-data/README",
        payload_text="hello-data 1.1: a greeting table.\nen=Hello\nfr=Bonjour\n",
    ),
    Package(
        name="greeting",
        version="2.0",
        build_number=0,
        subdir="noarch",
        license="BSD-3-Clause",
        timestamp=_ms("2024-03-10"),
        payload_path="etc/greeting.txt",
        payload_text="greeting 2.0 reads share/hello-data/README.\n",
        depends=("hello-data >=1.0",),
        formats=(".tar.bz2",),
    ),
    Package(
        name="tiny-docs",
        version="0.5",
        build_number=1,
        subdir="noarch",
        license="Apache-2.0",
        timestamp=_ms("2024-02-20"),
        payload_path="share/doc/tiny-docs/index.txt",
        payload_text="tiny-docs 0.5: documentation for libtiny and tinytool.\n",
        formats=(".tar.bz2",),
    ),
    Package(
        name="libtiny",
        version="0.1",
        build_number=0,
        subdir="linux-64",
        license="MIT",
        timestamp=_ms("2024-01-20"),
        payload_path="share/libtiny/README",
        payload_text="libtiny 0.1 (stands in for a shared library).\n",
    ),
    Package(
        name="libtiny",
        version="0.2",
        build_number=0,
        subdir="linux-64",
        license="MIT",
        timestamp=_ms("2024-02-25"),
        payload_path="share/libtiny/README",
        payload_text="libtiny 0.2 (stands in for a shared library).\n",
        formats=(".conda", ".tar.bz2"),
    ),
    Package(
        name="tinytool",
        version="1.0",
        build_number=0,
        subdir="linux-64",
        license="BSD-3-Clause",
        timestamp=_ms("2024-03-05"),
        payload_path="bin/tinytool",
        payload_text='#!/bin/sh\necho "tinytool 1.0 (libtiny >=0.2)"\n',
        depends=("libtiny >=0.2",),
        executable=True,
    ),
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_staged(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, (FILE_MTIME, FILE_MTIME))


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def stage(pkg: Package, prefix: Path) -> list[str]:
    """Write the package's files under ``prefix``; return the archive file list (sorted)."""
    payload = pkg.payload_text.encode()
    _write_staged(prefix / pkg.payload_path, payload, 0o755 if pkg.executable else 0o644)
    paths_json = {
        "paths": [
            {
                "_path": pkg.payload_path,
                "path_type": "hardlink",
                "sha256": _sha256(payload),
                "size_in_bytes": len(payload),
            }
        ],
        "paths_version": 1,
    }
    _write_staged(prefix / "info" / "index.json", _json_bytes(pkg.index_json()))
    _write_staged(prefix / "info" / "paths.json", _json_bytes(paths_json))
    _write_staged(prefix / "info" / "files", f"{pkg.payload_path}\n".encode())
    return sorted(["info/files", "info/index.json", "info/paths.json", pkg.payload_path])


def normalize_conda_zip(path: Path) -> None:
    """Rewrite a ``.conda`` zip with fixed entry dates; entry order and bytes stay the same."""
    with zipfile.ZipFile(path) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zout:
        for old, data in entries:
            info = zipfile.ZipInfo(old.filename, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever machine runs this script
            zout.writestr(info, data)
    tmp.replace(path)


def build(pkg: Package, ext: str, out_dir: Path) -> Path:
    """Build ``<dist><ext>`` into ``out_dir`` and return its path."""
    filename = pkg.dist + ext
    with tempfile.TemporaryDirectory(prefix="condasync-example-") as tmp:
        prefix = Path(tmp)
        files = stage(pkg, prefix)
        kwargs: dict[str, Any] = {}
        if ext == ".conda":
            kwargs = {"compression_level": ZSTD_LEVEL, "compression_threads": ZSTD_THREADS}
        cph_api.create(str(prefix), files, filename, out_folder=str(out_dir), **kwargs)
    path = out_dir / filename
    if not path.is_file():
        raise RuntimeError(f"conda-package-handling did not write {path}")
    if ext == ".conda":
        normalize_conda_zip(path)
    return path


def record_for(pkg: Package, path: Path) -> dict[str, Any]:
    """The repodata record: index.json fields plus checksums of the written bytes."""
    data = path.read_bytes()
    record = pkg.index_json()
    record["md5"] = hashlib.md5(data).hexdigest()
    record["sha256"] = _sha256(data)
    record["size"] = len(data)
    return record


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def channeldata(packages: Sequence[Package]) -> dict[str, Any]:
    entries: dict[str, dict[str, Any]] = {}
    for pkg in sorted(packages, key=lambda p: (p.name, _version_key(p.version))):
        entry = entries.setdefault(pkg.name, {"subdirs": []})
        entry["version"] = pkg.version  # sorted ascending, so the last one wins
        entry["license"] = pkg.license
        if pkg.subdir not in entry["subdirs"]:
            entry["subdirs"].append(pkg.subdir)
    for entry in entries.values():
        entry["subdirs"].sort()
    return {"channeldata_version": 1, "packages": entries, "subdirs": sorted(SUBDIRS)}


def make_channel(out: Path) -> list[Path]:
    """(Re)create the channel at ``out``; return every file written."""
    if out.exists():
        shutil.rmtree(out)
    written: list[Path] = []
    for subdir in SUBDIRS:
        subdir_dir = out / subdir
        subdir_dir.mkdir(parents=True)
        repodata: dict[str, Any] = {
            "info": {"subdir": subdir},
            "packages": {},
            "packages.conda": {},
            "removed": [],
            "repodata_version": 1,
        }
        for pkg in PACKAGES:
            if pkg.subdir != subdir:
                continue
            for ext in pkg.formats:
                path = build(pkg, ext, subdir_dir)
                key = "packages.conda" if ext == ".conda" else "packages"
                repodata[key][path.name] = record_for(pkg, path)
                written.append(path)
        repodata_path = subdir_dir / "repodata.json"
        repodata_path.write_bytes(_json_bytes(repodata))
        written.append(repodata_path)
    channeldata_path = out / "channeldata.json"
    channeldata_path.write_bytes(_json_bytes(channeldata(PACKAGES)))
    written.append(channeldata_path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"channel directory to (re)create (default: {DEFAULT_OUT})",
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    written = make_channel(out)
    cwd = Path.cwd()
    total = 0
    for path in written:
        size = path.stat().st_size
        total += size
        shown = path.relative_to(cwd) if path.is_relative_to(cwd) else path
        print(f"wrote {shown} ({size} bytes)")
    print(f"{len(written)} files, {total} bytes in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
