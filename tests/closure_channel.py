"""A multi-platform channel of tiny real packages for the closure tests (issue 14): linux-64,
osx-arm64 and noarch, dependency chains, `__glibc` and `__osx` dependencies, CPU and CUDA builds
of one package. Built with conda-package-handling at test time (about a second)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conda_package_handling import api as cph_api

SUBDIRS = ("linux-64", "osx-arm64", "noarch")
TS = 1717243200000  # 2024-06-01T12:00Z


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    build: str
    subdir: str
    depends: tuple[str, ...] = ()
    timestamp: int = TS
    build_number: int = 0

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.conda"

    def index_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": self.build_number,
            "depends": list(self.depends),
            "license": "MIT",
            "subdir": self.subdir,
            "timestamp": self.timestamp,
        }
        if self.subdir == "noarch":
            doc["noarch"] = "generic"
        else:
            platform, _, arch = self.subdir.partition("-")
            doc["platform"] = platform
            doc["arch"] = "x86_64" if arch == "64" else arch
        return doc


PACKAGES: tuple[Pkg, ...] = (
    # noarch
    Pkg("tzdata", "2024a", "h0", "noarch"),
    Pkg("pyhelper", "1.0", "pyh0", "noarch", ("tzdata",)),
    Pkg("unused-noarch", "1.0", "0", "noarch"),
    # linux-64: a chain app -> libz -> libc-shim -> __glibc
    Pkg("libc-shim", "1.0", "h0", "linux-64", ("__glibc >=2.17",)),
    Pkg("libz", "1.2", "h0", "linux-64", ("libc-shim",)),
    Pkg("libz", "1.3", "h0", "linux-64", ("libc-shim",), TS + 86400000),
    Pkg("app", "0.9", "h0", "linux-64", ("libz 1.2.*", "pyhelper")),
    Pkg("app", "1.0", "h0", "linux-64", ("libz >=1.3", "pyhelper"), TS + 86400000),
    Pkg("torchy", "1.0", "cpu_0", "linux-64", ("libz",)),
    Pkg("torchy", "1.0", "cuda_1", "linux-64", ("libz", "__cuda >=12"), build_number=1),
    Pkg("other-big", "1.0", "h0", "linux-64"),
    # osx-arm64
    Pkg("libc-shim", "1.0", "h0", "osx-arm64", ("__osx >=11.0",)),
    Pkg("libz", "1.3", "h0", "osx-arm64", ("libc-shim",)),
    Pkg("app", "1.0", "h0", "osx-arm64", ("libz >=1.3", "pyhelper")),
    Pkg("other-big", "1.0", "h0", "osx-arm64"),
)


def _build(pkg: Pkg, out_dir: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="closure-pkg-") as tmp:
        prefix = Path(tmp)
        payload = f"{pkg.name} {pkg.version} {pkg.build} {pkg.subdir}\n".encode()
        rel = f"share/{pkg.name}/{pkg.build}.txt"
        (prefix / rel).parent.mkdir(parents=True)
        (prefix / rel).write_bytes(payload)
        info = prefix / "info"
        info.mkdir()
        (info / "index.json").write_text(json.dumps(pkg.index_json(), indent=2, sort_keys=True))
        paths = {
            "paths": [{"_path": rel, "path_type": "hardlink",
                       "sha256": hashlib.sha256(payload).hexdigest(),
                       "size_in_bytes": len(payload)}],
            "paths_version": 1,
        }  # fmt: skip
        (info / "paths.json").write_text(json.dumps(paths, indent=2, sort_keys=True))
        (info / "files").write_text(rel + "\n")
        files = sorted(["info/files", "info/index.json", "info/paths.json", rel])
        cph_api.create(str(prefix), files, pkg.filename, out_folder=str(out_dir))
    return out_dir / pkg.filename


def make_closure_channel(out: Path) -> Path:
    """Write the channel (packages and repodata.json per subdir) under `out`."""
    for subdir in SUBDIRS:
        folder = out / subdir
        folder.mkdir(parents=True)
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
            data = _build(pkg, folder).read_bytes()
            record = pkg.index_json()
            record.update(
                md5=hashlib.md5(data).hexdigest(),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
            repodata["packages.conda"][pkg.filename] = record
        (folder / "repodata.json").write_text(json.dumps(repodata, indent=1, sort_keys=True))
    return out
