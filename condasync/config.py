"""TOML config file -> mirror jobs: one `[[mirror]]` table per channel to sync."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from condasync.engine.filters import Filters
from condasync.engine.job import Closure
from condasync.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

KEYS: dict[str, type | tuple[type, ...]] = {
    "url": str,
    "dir": str,
    "subdirs": list,
    "include": list,
    "exclude": list,
    "latest": int,
    "exclude_newer": str,
    "keep_removed": bool,
    "jobs": int,
    "bz2": bool,
    "retries": int,
    "zstd_level": int,
    "max_delete": (int, float),
    "shards": bool,
    "shard_grace": str,
    # issue 14: what environments need (see closure_from)
    "lock": (str, list),
    "solve": (str, list),
    "platforms": (str, list),
    "platform": (str, list),
    "virtual_packages": (str, list),
    "virtual_package": (str, list),
    "with_deps": bool,
    "keep_unselected": (str, int),
}


def load_config(path: Path) -> list[dict[str, Any]]:
    """Read and check the `[[mirror]]` tables. Relative paths resolve from the config file's
    folder."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid TOML in {path}: {exc}") from None
    tables = doc.get("mirror")
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{path} has no [[mirror]] tables")
    jobs = []
    for number, table in enumerate(tables, 1):
        where = f"{path}: [[mirror]] #{number}"
        for key, value in table.items():
            expected = KEYS.get(key)
            if expected is None:
                raise UsageError(f"{where}: unknown key {key!r}")
            bool_for_number = expected is not bool and isinstance(value, bool)
            if not isinstance(value, expected) or bool_for_number:
                kind = expected.__name__ if isinstance(expected, type) else "number"
                raise UsageError(f"{where}: {key} must be a {kind}")
        for key in ("url", "dir"):
            if key not in table:
                raise UsageError(f"{where}: missing {key!r}")
        table = dict(table)
        for key in ("url", "dir"):
            table[key] = _resolve(path, table[key])
        if "lock" in table:
            table["lock"] = [_resolve(path, lock) for lock in _strings(table["lock"])]
        jobs.append(table)
    return jobs


def _resolve(config: Path, value: str) -> str:
    """A relative local path in a config file means relative to that file, not to the
    working directory (cron and systemd start elsewhere). URLs and s3:// stay as they are."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (config.parent / path).resolve())


def filters_from(table: dict[str, Any]) -> Filters:
    return Filters(
        include=tuple(table.get("include", ())),
        exclude=tuple(table.get("exclude", ())),
        latest=table.get("latest"),
        exclude_newer=table.get("exclude_newer"),
    )


def metrics_file_of(path: Path) -> str | None:
    """The top-level `metrics_file` of a config (one file for all its mirrors), resolved
    like the tables' paths."""
    try:
        value = tomllib.loads(path.read_text()).get("metrics_file")
    except (OSError, tomllib.TOMLDecodeError):
        return None  # load_config reports those
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{path}: metrics_file must be a path")
    return _resolve(path, value)


def _strings(value: str | list[Any]) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in values):
        raise UsageError(f"expected a string or a list of strings, got {value!r}")
    return values


def closure_from(table: dict[str, Any]) -> Closure:
    """The issue-14 keys of a [[mirror]] table (`platform`/`platforms` and
    `virtual_package`/`virtual_packages` are the same key)."""

    def listed(*keys: str) -> tuple[str, ...]:
        return tuple(v for key in keys if key in table for v in _strings(table[key]))

    return Closure(
        locks=listed("lock"),
        solve=listed("solve"),
        platforms=listed("platforms", "platform"),
        virtual_packages=listed("virtual_packages", "virtual_package"),
        with_deps=bool(table.get("with_deps", False)),
        keep_unselected=str(table.get("keep_unselected", "30d")),
    )
