"""Read the packages a lockfile pins: pixi.lock (v1-v7) and conda-lock.yml through py-rattler's
`LockFile`, explicit (`@EXPLICIT`) files with `#md5`, `#sha256` or `#sha256:` hashes by hand."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from condasync.errors import UsageError

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Locked:
    """One conda package a lockfile pins: where upstream lists it, and the hashes it gives."""

    subdir: str
    filename: str
    sha256: str | None = None
    md5: str | None = None


@dataclass
class LockInput:
    """What one lockfile pins (every environment and platform), and what it holds besides."""

    path: str
    kind: str  # "pixi.lock", "conda-lock.yml" or "explicit"
    packages: list[Locked] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # PyPI and source packages


def subdir_and_filename(url: str) -> tuple[str, str] | None:
    """`https://host/chan/linux-64/x-1-0.conda` -> ("linux-64", "x-1-0.conda")."""
    path = unquote(urlsplit(url).path)
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2:
        return None
    return parts[-2], parts[-1]


def parse_fragment(fragment: str) -> tuple[str | None, str | None]:
    """An explicit URL's `#...`: (sha256, md5). 64 hex digits or `sha256:`/`sha256=` is a
    sha256; 32 hex digits or `md5:`/`md5=` an md5; anything else is no hash."""
    text = fragment.strip()
    for prefix, kind in (
        ("sha256:", "sha256"),
        ("sha256=", "sha256"),
        ("md5:", "md5"),
        ("md5=", "md5"),
    ):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
            if kind == "sha256" and _HEX64.match(text):
                return text.lower(), None
            if kind == "md5" and _HEX32.match(text):
                return None, text.lower()
            return None, None
    if _HEX64.match(text):
        return text.lower(), None
    if _HEX32.match(text):
        return None, text.lower()
    return None, None


def parse_explicit(text: str, path: str) -> LockInput:
    """An `@EXPLICIT` file: one package URL per line after the marker."""
    lines = [line.strip() for line in text.splitlines()]
    try:
        start = lines.index("@EXPLICIT") + 1
    except ValueError:
        raise UsageError(f"{path}: no @EXPLICIT line") from None
    found = LockInput(path, "explicit")
    for line in lines[start:]:
        if not line or line.startswith("#"):
            continue
        url, _, fragment = line.partition("#")
        where = subdir_and_filename(url.strip())
        if where is None or not where[1].endswith((".conda", ".tar.bz2")):
            found.skipped.append(line)
            continue
        sha256, md5 = parse_fragment(fragment)
        found.packages.append(Locked(where[0], where[1], sha256, md5))
    return found


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value else None


def parse_lockfile(path: str) -> LockInput:
    """A pixi.lock or conda-lock.yml, read by py-rattler: every conda package of every
    environment and platform."""
    from rattler import CondaLockedBinaryPackage, LockFile

    try:
        lock = LockFile.from_path(Path(path))
    except Exception as exc:  # rattler's own ParseCondaLockError
        raise UsageError(f"{path}: not a lockfile py-rattler can read: {exc}") from None
    text = Path(path).read_text(errors="replace")
    pixi = re.search(r'^\s*"?environments"?\s*:', text, re.MULTILINE) is not None
    kind = "pixi.lock" if pixi else "conda-lock.yml"
    found = LockInput(path, kind)
    seen: set[tuple[str, str]] = set()
    for env_name, env in sorted(lock.environments(), key=lambda e: e[0]):
        for platform, packages in env.packages_by_platform().items():
            for package in packages:
                if not isinstance(package, CondaLockedBinaryPackage):
                    found.skipped.append(f"{env_name}/{platform.name}/{package.name}")
                    continue
                record = package.repo_data_record()
                where = subdir_and_filename(str(record.url)) or (record.subdir, record.file_name)
                if where in seen:
                    continue
                seen.add(where)
                found.packages.append(
                    Locked(where[0], where[1], _hex(record.sha256), _hex(record.md5))
                )
    return found


def read_lock(path: str) -> LockInput:
    """Any of the three formats, told apart by their content."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read lockfile {path}: {exc.strerror}") from None
    if any(line.strip() == "@EXPLICIT" for line in text.splitlines()):
        return parse_explicit(text, path)
    return parse_lockfile(path)
