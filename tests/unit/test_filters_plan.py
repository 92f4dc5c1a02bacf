"""Table-driven tests of the pure filter and plan modules."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from condasync.channel.bigindex import Lite
from condasync.engine.filters import Filters, parse_cutoff, select
from condasync.engine.plan import build_plan
from condasync.models import FileState

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
DAY_MS = 86_400_000
NOW_MS = int(NOW.timestamp() * 1000)


def rec(
    name: str, version: str, build: str = "0", **extra: object
) -> tuple[str, dict[str, object]]:
    record = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "size": 1,
        "sha256": "a" * 64,
        **extra,
    }
    return f"{name}-{version}-{build}.conda", record


RECORDS = dict(
    [
        rec("numpy", "1.25.0", license="BSD-3-Clause", timestamp=NOW_MS - 30 * DAY_MS),
        rec("numpy", "1.26.4", license="BSD-3-Clause", timestamp=NOW_MS - 10 * DAY_MS),
        rec("numpy", "2.0.0", license="BSD-3-Clause", timestamp=NOW_MS - 1 * DAY_MS),
        rec("numpy", "2.0.0", "1", license="BSD-3-Clause", timestamp=NOW_MS - 1 * DAY_MS),
        rec("python", "3.12.1", license="PSF", timestamp=(NOW_MS - 40 * DAY_MS) // 1000),
        rec("python", "3.11.9", license="PSF"),
        rec("requests", "2.31.0", license="MIT", timestamp=NOW_MS - 2 * DAY_MS),
    ]
)


def names(selected: set[str]) -> set[str]:
    return {f"{RECORDS[f]['name']}={RECORDS[f]['version']}" for f in selected}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (
            Filters(),
            {
                "numpy=1.25.0",
                "numpy=1.26.4",
                "numpy=2.0.0",
                "python=3.12.1",
                "python=3.11.9",
                "requests=2.31.0",
            },
        ),
        (Filters(include=("numpy >=1.26",)), {"numpy=1.26.4", "numpy=2.0.0"}),
        (Filters(include=("python 3.12.*",)), {"python=3.12.1"}),
        (Filters(include=("*[license=MIT]",)), {"requests=2.31.0"}),
        (Filters(exclude=("numpy", "python")), {"requests=2.31.0"}),
        # both flags: (an include matches) and (no exclude matches)
        (
            Filters(include=("numpy", "requests"), exclude=("numpy >=2",)),
            {"numpy=1.25.0", "numpy=1.26.4", "requests=2.31.0"},
        ),
        (
            Filters(include=("numpy",), exclude=("requests",)),
            {"numpy=1.25.0", "numpy=1.26.4", "numpy=2.0.0"},
        ),
        (Filters(include=("numpy",), latest=1), {"numpy=2.0.0"}),
        (
            Filters(include=("numpy", "python"), latest=2),
            {"numpy=1.26.4", "numpy=2.0.0", "python=3.12.1", "python=3.11.9"},
        ),
        (Filters(include=("numpy",), exclude_newer="5d"), {"numpy=1.25.0", "numpy=1.26.4"}),
        (Filters(include=("numpy",), exclude_newer="5d", latest=1), {"numpy=1.26.4"}),
        # seconds-based timestamps are understood; records without one are kept
        (Filters(include=("python",), exclude_newer="2026-01-01"), {"python=3.11.9"}),
        (Filters(include=("python",), exclude_newer="60d"), {"python=3.11.9"}),
    ],
)
def test_select(filters: Filters, expected: set[str]) -> None:
    assert names(select(RECORDS, filters, "linux-64", NOW)) == expected


def test_latest_keeps_every_build_of_a_version() -> None:
    chosen = select(RECORDS, Filters(include=("numpy",), latest=1), "linux-64", NOW)
    assert chosen == {"numpy-2.0.0-0.conda", "numpy-2.0.0-1.conda"}


@pytest.mark.parametrize("text", ["yesterday", "7x", "2026-13-01", ""])
def test_bad_cutoff(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cutoff(text, NOW)


def test_cutoff_values() -> None:
    assert parse_cutoff("1d", NOW) == NOW_MS - DAY_MS
    assert parse_cutoff("2026-06-01", NOW) == NOW_MS


def test_plan() -> None:
    records = dict([rec("a", "1"), rec("b", "1"), rec("c", "1", sha256="c" * 64)])
    wanted = {fn: msgspec.convert(r, Lite) for fn, r in records.items()}
    local = {
        "b-1-0.conda": FileState(1, "sha256:" + "a" * 64),
        "c-1-0.conda": FileState(1, "sha256:" + "a" * 64),
        "gone-1-0.conda": FileState(1, "sha256:" + "a" * 64),
        "filtered-1-0.conda": FileState(1, "sha256:" + "a" * 64),
    }
    plan = build_plan(wanted, local, keep_removed=False, removed_upstream={"gone-1-0.conda"})
    assert plan.add == ("a-1-0.conda",)
    assert plan.replace == ("c-1-0.conda",)
    assert plan.unchanged == 1  # b: same size and digest as held
    assert plan.kept_removed == ()
    assert plan.delete == ("filtered-1-0.conda", "gone-1-0.conda")
    kept = build_plan(wanted, local, keep_removed=True, removed_upstream={"gone-1-0.conda"})
    assert kept.delete == ("filtered-1-0.conda",)
    assert kept.kept_removed == ("gone-1-0.conda",)
    assert kept.unchanged == 1


def test_plan_deletes_stray_package_files_a_listing_found() -> None:
    wanted = {"a-1-0.conda": Lite(1, "a" * 64)}
    local = {"a-1-0.conda": FileState(1, "sha256:" + "a" * 64)}
    present = {"a-1-0.conda", "stray-1-0.conda", "repodata.json", "NOTES.txt", "../x-1-0.conda"}
    plan = build_plan(wanted, local, keep_removed=False, present=present)
    assert plan.strays == ("stray-1-0.conda",)
    assert plan.add == plan.replace == plan.delete == ()
    assert build_plan(wanted, local, keep_removed=False).strays == ()
