"""The pages' HTML escapes everything from repodata (untrusted input), and the summary built
from a hostile or odd index keeps only what it can show safely."""

from __future__ import annotations

import json
from pathlib import Path

from condasync.serve import html
from condasync.serve.session import csrf_ok, csrf_token, safe_next, same_origin
from condasync.serve.store import LocalChannels
from condasync.serve.summary import BuildRow, PackageRow, Summaries

EVIL = '<script>alert("x")</script>'


def _info() -> html.ChannelInfo:
    return html.ChannelInfo("c", "mirror", "http://up/<b>", False, "http://h/channels/c")


def test_channel_and_package_pages_escape_repodata() -> None:
    row = PackageRow("pkg", EVIL, EVIL, EVIL, ["linux-64"], 1)
    page = html.channel_page(_info(), [row], 1, EVIL, 0, html.Viewer())
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "http://up/&lt;b&gt;" in page
    build = BuildRow("linux-64", EVIL, EVIL, "pkg-1-0.conda", 10, 1_700_000_000_000, EVIL, EVIL)
    page = html.package_page(_info(), row, [build], html.Viewer())
    assert "<script>alert" not in page and page.count("&lt;script&gt;") >= 4
    assert "2023-11-14" in page
    tasks = [{"id": 1, "status": EVIL, "error": EVIL, "report": {"added": [EVIL]}}]
    assert "<script>alert" not in html.history(tasks, False, "c", None)


def test_summary_of_an_index_with_odd_records(tmp_path: Path) -> None:
    records = {
        "good-1.0-0.conda": {"name": "good", "version": "1.0", "build": "0", "size": 5,
                             "license": EVIL, "sha256": "ab" * 32},
        "good-1.10-0.conda": {"name": "good", "version": "1.10", "build": "0", "size": 7},
        "good-1.9-0.conda": {"name": "good", "version": "1.9", "build": "0", "size": 6},
        "bad-1-0.conda": {"name": 5, "version": "1"},  # not a string name: skipped
        "worse-1-0.conda": "not a record",
    }  # fmt: skip
    channel = tmp_path / "root" / "c" / "noarch"
    channel.mkdir(parents=True)
    (channel / "repodata.json").write_text(json.dumps({"packages.conda": records}))
    summaries = Summaries(tmp_path / "pages", LocalChannels(tmp_path / "root"))
    assert summaries.refresh("c") is True
    assert summaries.refresh("c") is False  # unchanged index: nothing rebuilt
    rows, total = summaries.packages("c")
    assert total == 1 and rows[0].name == "good" and rows[0].latest == "1.10"
    assert rows[0].builds == 3
    _row, builds = summaries.package("c", "good")
    assert [b.version for b in builds] == ["1.10", "1.9", "1.0"]
    assert summaries.packages("c", "%")[1] == 0  # LIKE wildcards are escaped
    assert summaries.packages("c", "oo")[1] == 1


def test_session_helpers() -> None:
    token = csrf_token("cs_key")
    assert csrf_ok("cs_key", token) and not csrf_ok("cs_other", token)
    assert not csrf_ok("cs_key", None) and not csrf_ok("cs_key", "")
    assert safe_next("//evil.example/") == "/" and safe_next("https://evil/") == "/"
    assert safe_next("/channels/x/") == "/channels/x/"
    assert same_origin({"host": "h:1", "origin": "http://h:1"})
    assert not same_origin({"host": "h:1", "origin": "http://evil"})
    assert not same_origin({"host": "h:1", "origin": "null"})


def test_a_big_change_is_rebuilt_in_the_background(tmp_path: Path) -> None:
    """A page is not held up by a big rebuild when an older summary exists: it shows that one
    while a thread rebuilds (here every change counts as big: background_above=0)."""
    import time

    subdir = tmp_path / "root" / "c" / "noarch"
    subdir.mkdir(parents=True)
    one = {"a-1-0.conda": {"name": "a", "version": "1", "build": "0"}}
    (subdir / "repodata.json").write_text(json.dumps({"packages.conda": one}))
    summaries = Summaries(tmp_path / "pages", LocalChannels(tmp_path / "root"))
    assert summaries.refresh("c", background_above=0) is True  # nothing to show yet: waits
    two = {**one, "b-2-0.conda": {"name": "b", "version": "2", "build": "0"}}
    (subdir / "repodata.json").write_text(json.dumps({"packages.conda": two}) + " " * 10)
    assert summaries.refresh("c", force=True, background_above=0) is False
    deadline = time.monotonic() + 10
    while summaries.packages("c")[1] != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.name for r in summaries.packages("c")[0]] == ["a", "b"]
