"""Solves for the closure step: the virtual packages a platform is assumed to have (pixi's
defaults, never this host's), and one child process that runs every solve of a run with
py-rattler and reports JSON (py-rattler can crash at interpreter exit after an async solve)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from condasync.errors import CondasyncError, UsageError

EXIT_SELECTION = 6

# rattler_virtual_packages Archspec::from_platform
_ARCHSPEC = {
    "linux-64": "x86_64",
    "osx-64": "x86_64",
    "win-64": "x86_64",
    "linux-32": "x86",
    "win-32": "x86",
    "linux-aarch64": "aarch64",
    "linux-armv6l": "aarch64",
    "linux-armv7l": "aarch64",
    "win-arm64": "aarch64",
    "linux-ppc64le": "ppc64le",
    "linux-ppc64": "ppc64",
    "linux-s390x": "s390x",
    "linux-riscv32": "riscv32",
    "linux-riscv64": "riscv64",
    "osx-arm64": "m1",
}

VirtualPackage = tuple[str, str, str]  # name, version, build


class SelectionError(CondasyncError):
    """The selection cannot be computed (an unsolvable --solve, a solver that died)."""

    exit_code = EXIT_SELECTION


def default_virtual_packages(platform: str) -> list[VirtualPackage]:
    """pixi's documented minimal system requirements for a platform family: linux `__linux`
    4.18 and `__glibc` 2.28 (2.39 on riscv64), macOS `__osx` 13.0, Windows `__win` 10.0,
    `__unix` on unix, `__archspec` of the platform; `__cuda` never by default."""
    family = platform.split("-", 1)[0]
    out: list[VirtualPackage] = []
    if family in ("linux", "osx", "freebsd", "emscripten", "wasi", "zos"):
        out.append(("__unix", "0", "0"))
    if family == "linux":
        out.append(("__linux", "4.18", "0"))
        out.append(("__glibc", "2.39" if platform == "linux-riscv64" else "2.28", "0"))
    elif family == "osx":
        out.append(("__osx", "13.0", "0"))
    elif family == "win":
        out.append(("__win", "10.0", "0"))
    arch = _ARCHSPEC.get(platform)
    if arch:
        out.append(("__archspec", "1", arch))
    return out


def parse_virtual_package(text: str) -> VirtualPackage:
    """`__glibc=2.17`, `__cuda=12.4`, `__archspec=1=x86_64` -> (name, version, build)."""
    parts = text.strip().split("=")
    if len(parts) not in (2, 3) or not parts[0].startswith("__") or not parts[1]:
        raise UsageError(
            f"invalid --virtual-package {text!r}: use NAME=VERSION[=BUILD], e.g. __glibc=2.17"
        )
    return parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else "0"


def virtual_packages(platform: str, overrides: tuple[str, ...]) -> list[VirtualPackage]:
    """The defaults, with each given name replacing that name's default (or added)."""
    given = [parse_virtual_package(text) for text in overrides]
    names = {name for name, _, _ in given}
    return [vp for vp in default_virtual_packages(platform) if vp[0] not in names] + given


@dataclass
class Solve:
    """One solve: specs on one platform, against upstream indexes saved as files."""

    key: str
    platform: str
    specs: list[str]
    indexes: dict[str, str]  # subdir -> path of a repodata.json
    virtual_packages: list[VirtualPackage]
    constraints: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)  # filenames to prefer (last selection)
    exclude_newer_ms: int | None = None


@dataclass
class Solved:
    """A solve's outcome: the (subdir, filename) of each record, or rattler's explanation."""

    key: str
    files: list[tuple[str, str]] | None
    error: str | None
    seconds: float


class SolverProcess:
    """The solver child (`python -m condasync.engine.solve_child`), started before the
    solves are known so that its start-up (the interpreter, py-rattler) overlaps the
    parent's work; it waits for one request on stdin."""

    def __init__(self, command: list[str] | None = None) -> None:
        self._proc = subprocess.Popen(
            command or [sys.executable, "-m", "condasync.engine.solve_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def communicate(self, request: bytes, timeout: float) -> tuple[bytes, bytes, int]:
        try:
            out, err = self._proc.communicate(request, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise
        return out, err, self._proc.returncode

    def close(self) -> None:
        """Stop the child if it still runs (a run that solved nothing, or an error)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()

    def __enter__(self) -> SolverProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_solves(
    solves: list[Solve], timeout: float, process: SolverProcess | None = None
) -> list[Solved]:
    """Run every solve in one child process (`process`, else one started now)."""
    if not solves:
        return []
    request = {
        "solves": [
            {
                "key": s.key,
                "platform": s.platform,
                "specs": s.specs,
                "constraints": s.constraints,
                "indexes": s.indexes,
                "virtual_packages": s.virtual_packages,
                "locked": s.locked,
                "exclude_newer_ms": s.exclude_newer_ms,
                "timeout": timeout,
            }
            for s in solves
        ]
    }
    with process or SolverProcess() as child:
        try:
            stdout, stderr, returncode = child.communicate(json.dumps(request).encode(), timeout)
        except subprocess.TimeoutExpired:
            raise SelectionError(
                f"the solver did not finish within {timeout:g} s ({len(solves)} solves);"
                " nothing was written"
            ) from None
    try:
        answer: dict[str, Any] = json.loads(stdout)
    except ValueError:
        tail = stderr.decode(errors="replace")[-2000:].strip()
        raise SelectionError(
            f"the solver process died (exit code {returncode}): {tail or 'no output'};"
            " nothing was written"
        ) from None
    if not answer.get("ok"):
        raise SelectionError(f"the solver failed: {answer.get('message')}; nothing was written")
    return [
        Solved(
            key=r["key"],
            files=[(f[0], f[1]) for f in r["files"]] if r.get("files") is not None else None,
            error=r.get("error"),
            seconds=float(r.get("seconds", 0.0)),
        )
        for r in answer["results"]
    ]
