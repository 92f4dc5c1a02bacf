"""Table-driven tests of quetz's shapes and channel settings: pagination, user names, record
times, proxylist URLs, metadata checks and PATCH rules."""

from __future__ import annotations

from typing import Any

import pytest

from condasync.engine.plan import without_proxied
from condasync.serve.db import Channel
from condasync.serve.quetzsettings import apply_patch, check_metadata
from condasync.serve.quetzshapes import (
    CHANNEL_KEYS,
    from_ms,
    key_id_of,
    paginated,
    proxied_url,
    quetz_channel,
    versions,
)


@pytest.mark.parametrize(
    ("skip", "limit", "result"),
    [(0, 2, [0, 1]), (2, 2, [2, 3]), (4, 2, [4]), (5, 2, []), (9, 2, []), (1, -1, [1, 2, 3, 4])],
)
def test_paginated(skip: int, limit: int, result: list[int]) -> None:
    page = paginated(list(range(5)), skip, limit)
    assert page == {
        "pagination": {"skip": skip, "limit": limit, "all_records_count": 5},
        "result": result,
    }


@pytest.mark.parametrize(
    ("name", "key_id"), [("key-3", 3), ("3", 3), ("key-", None), ("alice", None), ("key-1x", None)]
)
def test_key_id_of(name: str, key_id: int | None) -> None:
    assert key_id_of(name) == key_id


@pytest.mark.parametrize(
    ("value", "iso"),
    [
        (1542815100324, "2018-11-21T15:45:00.324000"),  # ms
        (1542815100, "2018-11-21T15:45:00"),  # s (old records)
        (None, None),
        (0, None),
        (True, None),
        ("1542815100", None),
    ],
)
def test_from_ms(value: Any, iso: str | None) -> None:
    assert from_ms(value) == iso


PL = {"metadata": {"proxylist": ["zlib"]}}


@pytest.mark.parametrize(
    ("mode", "settings", "relpath", "url"),
    [
        ("mirror", PL, "linux-64/zlib-1.2-0.conda", "http://up/c/linux-64/zlib-1.2-0.conda"),
        ("mirror", PL, "linux-64/zlib-extra-1.2-0.conda", None),
        ("mirror", PL, "linux-64/repodata.json", None),
        ("mirror", PL, "channeldata.json", None),
        ("proxy", PL, "linux-64/zlib-1.2-0.conda", None),
        ("mirror", {}, "linux-64/zlib-1.2-0.conda", None),
        ("mirror", {"metadata": {"proxylist": None}}, "linux-64/zlib-1.2-0.conda", None),
    ],
)
def test_proxied_url(mode: str, settings: dict[str, Any], relpath: str, url: str | None) -> None:
    assert proxied_url(mode, "http://up/c/", settings, relpath) == url


def test_channel_keys_exactly_quetz() -> None:
    ours = {**Channel("c", False, "http://u", "mirror").to_dict(), "max_delete": 50}
    assert list(quetz_channel(ours)) == list(CHANNEL_KEYS)


def test_versions_newest_first_and_only_the_package() -> None:
    records = {
        "a-1-0.conda": {"name": "a", "version": "1", "build": "0", "timestamp": 1000},
        "a-2-0.conda": {"name": "a", "version": "2", "build": "0", "timestamp": 2000},
        "b-1-0.conda": {"name": "b", "version": "1", "build": "0"},
    }
    found = versions("c", "a", {"noarch": records})
    assert [v["version"] for v in found] == ["2", "1"]
    assert found[0]["id"] != found[1]["id"] and found[0]["build_number"] == 0


@pytest.mark.parametrize(
    "metadata",
    [
        {"includelist": "zlib"},
        {"includelist": [""]},
        {"excludelist": ["bad spec ]["]},
        {"proxylist": ["a/b"]},
        {"other": []},
    ],
)
def test_bad_metadata(metadata: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        check_metadata(metadata)


def test_patch_merges_metadata_and_refuses_other_keys() -> None:
    channel = Channel("c", False, "http://u", "mirror", 600, {"metadata": {"includelist": ["a"]}})
    changed = apply_patch(channel, {"ttl": 5, "metadata": {"proxylist": ["b"]}})
    assert changed.ttl == 5
    assert changed.settings["metadata"] == {"includelist": ["a"], "proxylist": ["b"]}
    assert channel.settings["metadata"] == {"includelist": ["a"]}  # not changed in place
    for body in ({"name": "d"}, {"mirror_mode": "proxy"}, {"ttl": "5"}, {"private": 1}):
        with pytest.raises(ValueError):
            apply_patch(channel, body)


def test_without_proxied_keeps_other_names_and_odd_filenames() -> None:
    selected: dict[str, Any] = {
        "zlib-1.2-0.conda": 1,
        "zlib-extra-1.0-0.conda": 2,
        "numpy-2.0-py_0.tar.bz2": 3,
    }
    assert without_proxied(selected, ()) is selected  # no copy when nothing is proxied
    assert without_proxied(selected, ("zlib", "numpy")) == {"zlib-extra-1.0-0.conda": 2}
