"""Pure package selection: MatchSpec include/exclude, --latest N and --exclude-newer."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rattler (12 MB, 35 ms) is imported only when a filter is used
    from rattler import MatchSpec, PackageRecord, Version

from condasync.models import Record

DURATION_RE = re.compile(r"^(\d+)\s*([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Filters:
    """What to mirror. Empty filters select every record."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    latest: int | None = None
    exclude_newer: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude or self.latest or self.exclude_newer)


def compile_spec(text: str) -> MatchSpec:
    """Parse a conda MatchSpec; glob names such as `*[license=MIT]` are allowed."""
    from rattler import MatchSpec

    try:
        return MatchSpec(text, exact_names_only=False)
    except Exception as exc:  # rattler raises its own exception types
        raise ValueError(f"invalid MatchSpec {text!r}: {exc}") from None


def parse_cutoff(text: str, now: datetime) -> int:
    """`7d`, `12h`, `2026-01-01` or an ISO datetime -> cutoff in epoch milliseconds."""
    text = text.strip()
    match = DURATION_RE.match(text)
    if match:
        delta = timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
        return int((now - delta).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid --exclude-newer {text!r}: use a duration (7d, 12h) or a date (2026-01-01)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def timestamp_ms(record: Record) -> int | None:
    ts = record.get("timestamp")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return None
    # conda switched from seconds to milliseconds; anything this small is seconds.
    return int(ts * 1000) if ts < 1e11 else int(ts)


def _hex(value: Any) -> bytes | None:
    try:
        return bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        return None


def to_package_record(record: Record, subdir: str) -> PackageRecord | None:
    """Build rattler's view of a record for MatchSpec matching; None when it is not parseable."""
    from rattler import BuildString, PackageRecord

    try:
        return PackageRecord(
            name=record["name"],
            version=record["version"],
            build=BuildString(record["build"]),
            build_number=int(record.get("build_number") or 0),
            subdir=record.get("subdir") or subdir,
            depends=list(record.get("depends") or []),
            constrains=list(record.get("constrains") or []),
            license=record.get("license"),
            license_family=record.get("license_family"),
            md5=_hex(record.get("md5")),
            sha256=_hex(record.get("sha256")),
            size=record.get("size"),
            features=None,
        )
    except Exception:
        return None


def _exact_name(spec: MatchSpec) -> str | None:
    name = spec.name.as_package_name()
    return None if name is None else str(name.normalized)


@functools.cache
def include_names(filters: Filters) -> frozenset[str] | None:
    """The package names the includes can match, when every include names one; else None.

    Lets the engine look only at those records (by filename) before decoding any: asked once
    when each subdir's index is parsed and again when it is planned, so it is kept.
    """
    if not filters.include:
        return None
    names = [_exact_name(compile_spec(text)) for text in filters.include]
    return None if any(n is None for n in names) else frozenset(n for n in names if n is not None)


class _Matcher:
    """Matches records against specs, building rattler records only when a spec needs them."""

    def __init__(self, specs: tuple[str, ...], subdir: str) -> None:
        self.specs = [compile_spec(s) for s in specs]
        self.names = [_exact_name(s) for s in self.specs]
        self.subdir = subdir
        self._cache: dict[str, PackageRecord | None] = {}

    def matches(self, filename: str, record: Record) -> bool:
        for spec, name in zip(self.specs, self.names, strict=True):
            if name is not None and name != record.get("name"):
                continue
            if filename not in self._cache:
                self._cache[filename] = to_package_record(record, self.subdir)
            rattler_record = self._cache[filename]
            if rattler_record is not None and spec.matches(rattler_record):
                return True
        return False


def _sort_key(version: str) -> tuple[int, Version | str]:
    from rattler import Version

    try:
        return (1, Version(version))
    except Exception:
        return (0, version)


def _newest_versions(records: dict[str, Record], n: int) -> set[str]:
    by_name: dict[str, set[str]] = {}
    for record in records.values():
        by_name.setdefault(record["name"], set()).add(record["version"])
    keep: set[str] = set()
    for name, versions in by_name.items():
        ordered = sorted(versions, key=_sort_key, reverse=True)
        keep.update(f"{name}\x00{v}" for v in ordered[:n])
    return {fn for fn, r in records.items() if f"{r['name']}\x00{r['version']}" in keep}


def select(records: dict[str, Record], filters: Filters, subdir: str, now: datetime) -> set[str]:
    """Filenames to mirror: (no includes, or one matches) and no exclude matches; then time, N."""
    if not filters.active:
        return set(records)
    includes = _Matcher(filters.include, subdir)
    excludes = _Matcher(filters.exclude, subdir)
    cutoff = parse_cutoff(filters.exclude_newer, now) if filters.exclude_newer else None
    chosen: dict[str, Record] = {}
    for filename, record in records.items():
        if includes.specs and not includes.matches(filename, record):
            continue
        if excludes.specs and excludes.matches(filename, record):
            continue
        if cutoff is not None:
            ts = timestamp_ms(record)
            if ts is not None and ts > cutoff:
                continue
        chosen[filename] = record
    if filters.latest:
        return _newest_versions(chosen, filters.latest)
    return set(chosen)
