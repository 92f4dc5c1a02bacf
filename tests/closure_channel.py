"""A multi-platform channel of tiny real packages for the closure tests (issue 14): linux-64,
osx-arm64 and noarch, dependency chains, `__glibc` and `__osx` dependencies, CPU and CUDA builds
of one package. Built at test time by the example channel's builder (about a second)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from examples.make_example_channel import Package, build, record_for

SUBDIRS = ("linux-64", "osx-arm64", "noarch")
TS = 1717243200000  # 2024-06-01T12:00Z


def pkg(
    name: str,
    version: str,
    build_string: str,
    subdir: str,
    depends: tuple[str, ...] = (),
    timestamp: int = TS,
    build_number: int = 0,
) -> Package:
    """One package of this channel, built by the example channel's builder."""
    return Package(
        name=name,
        version=version,
        build_number=build_number,
        subdir=subdir,
        license="MIT",
        timestamp=timestamp,
        payload_path=f"share/{name}/{build_string}.txt",
        payload_text=f"{name} {version} {build_string} {subdir}\n",
        depends=depends,
        build_string=build_string,
    )


PACKAGES: tuple[Package, ...] = (
    # noarch
    pkg("tzdata", "2024a", "h0", "noarch"),
    pkg("pyhelper", "1.0", "pyh0", "noarch", ("tzdata",)),
    pkg("unused-noarch", "1.0", "0", "noarch"),
    # linux-64: a chain app -> libz -> libc-shim -> __glibc
    pkg("libc-shim", "1.0", "h0", "linux-64", ("__glibc >=2.17",)),
    pkg("libz", "1.2", "h0", "linux-64", ("libc-shim",)),
    pkg("libz", "1.3", "h0", "linux-64", ("libc-shim",), TS + 86400000),
    pkg("app", "0.9", "h0", "linux-64", ("libz 1.2.*", "pyhelper")),
    pkg("app", "1.0", "h0", "linux-64", ("libz >=1.3", "pyhelper"), TS + 86400000),
    pkg("torchy", "1.0", "cpu_0", "linux-64", ("libz",)),
    pkg("torchy", "1.0", "cuda_1", "linux-64", ("libz", "__cuda >=12"), build_number=1),
    pkg("other-big", "1.0", "h0", "linux-64"),
    # osx-arm64
    pkg("libc-shim", "1.0", "h0", "osx-arm64", ("__osx >=11.0",)),
    pkg("libz", "1.3", "h0", "osx-arm64", ("libc-shim",)),
    pkg("app", "1.0", "h0", "osx-arm64", ("libz >=1.3", "pyhelper")),
    pkg("other-big", "1.0", "h0", "osx-arm64"),
)


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
        for package in PACKAGES:
            if package.subdir == subdir:
                path = build(package, ".conda", folder)
                repodata["packages.conda"][path.name] = record_for(package, path)
        (folder / "repodata.json").write_text(json.dumps(repodata, indent=1, sort_keys=True))
    return out
