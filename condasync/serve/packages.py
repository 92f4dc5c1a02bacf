"""PURE: the package listing of a channel: each name with its latest version (ordered by
rattler's conda version rules), summary, description, home URL, subdirs and the time of its
latest version (quetz's latest_change), optionally filtered by a substring."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rattler import Version

from condasync.models import Record
from condasync.serve.quetzshapes import from_ms


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except Exception:  # rattler raises its own InvalidVersionError
        return None


def list_packages(
    indexes: Mapping[str, Mapping[str, Record]],
    channeldata: Mapping[str, Any] | None = None,
    query: str | None = None,
) -> list[dict[str, Any]]:
    """indexes: subdir -> {filename: record}. Sorted by name."""
    latest: dict[str, tuple[Version | None, str]] = {}
    changed: dict[str, dict[str, int]] = {}  # name -> version -> newest timestamp
    subdirs: dict[str, set[str]] = {}
    summaries: dict[str, str] = {}
    needle = (query or "").strip().lower()
    for subdir, records in indexes.items():
        for record in records.values():
            name, version = record.get("name"), record.get("version")
            if not isinstance(name, str) or not isinstance(version, str):
                continue
            if needle and needle not in name.lower():
                continue
            subdirs.setdefault(name, set()).add(subdir)
            parsed = _version(version)
            best = latest.get(name)
            if best is None or _newer(parsed, version, best):
                latest[name] = (parsed, version)
            stamp = record.get("timestamp")
            if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
                seen = changed.setdefault(name, {})
                seen[version] = max(seen.get(version, 0), int(stamp))
            summary = record.get("summary")
            if isinstance(summary, str) and name not in summaries:
                summaries[name] = summary
    described = (channeldata or {}).get("packages") or {}
    out = []
    for name in sorted(latest):
        info = described.get(name) if isinstance(described, dict) else None
        info = info if isinstance(info, dict) else {}
        summary = summaries.get(name)
        if isinstance(info.get("summary"), str):
            summary = info["summary"]
        version = latest[name][1]
        description, home = info.get("description"), info.get("home")
        out.append(
            {
                "name": name,
                "latest_version": version,
                "current_version": version,  # quetz's name for it
                "summary": summary,
                "subdirs": sorted(subdirs[name]),
                "platforms": sorted(subdirs[name]),  # quetz's name for it
                "description": description if isinstance(description, str) else None,
                "url": home if isinstance(home, str) else None,
                "latest_change": from_ms(changed.get(name, {}).get(version)),
            }
        )
    return out


def _newer(parsed: Version | None, text: str, best: tuple[Version | None, str]) -> bool:
    if parsed is not None and best[0] is not None:
        return bool(parsed > best[0])
    if parsed is not None:
        return True  # a parseable version beats one rattler cannot read
    return best[0] is None and text > best[1]
