"""Table-driven tests of the pure parts of the operator features: request classification, the
access log's path cleaning, the run record's update rules, the textfile, durations."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from condasync.engine.runrecord import encode_runs, parse_runs, update_runs
from condasync.engine.status import parse_duration
from condasync.engine.textfile import Series, carry_over, render
from condasync.models import MirrorReport, SubdirReport, SubdirRun
from condasync.serve.accesslog import clean_path
from condasync.serve.metrics import status_class
from condasync.serve.observe import classify


@pytest.mark.parametrize(
    ("path", "kind", "channel"),
    [
        ("/channels/c/noarch/repodata.json", "index", "c"),
        ("/channels/c/noarch/repodata.json.zst", "index", "c"),
        ("/channels/c/channeldata.json", "index", "c"),
        ("/channels/c/noarch/repodata_shards.msgpack.zst", "shard", "c"),
        ("/channels/c/noarch/shards/ab12.msgpack.zst", "shard", "c"),
        ("/channels/c/noarch/a-1-0.conda", "package", "c"),
        ("/channels/c/linux-64/a-1-0.tar.bz2", "package", "c"),
        ("/channels/c/", "page", "c"),
        ("/channels/c/packages/numpy", "page", "c"),
        ("/api/channels/c/packages", "api", "c"),
        ("/api/tasks/3", "api", ""),
        ("/metrics", "api", ""),
        ("/docs", "api", ""),
    ],
)
def test_classify(path: str, kind: str, channel: str) -> None:
    assert classify(path) == (kind, channel)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (b"/t/cs_secret/channels/c/noarch/repodata.json", "/channels/c/noarch/repodata.json"),
        (b"/t/cs_secret", "/"),
        (b"/t//channels/c/x", "/channels/c/x"),
        (b"/channels/c/noarch/a-1-0.conda?key=cs_secret", "/channels/c/noarch/a-1-0.conda"),
        (b"/api/channels", "/api/channels"),
    ],
)
def test_clean_path_drops_tokens_and_queries(raw: bytes, clean: str) -> None:
    assert clean_path({"raw_path": raw, "path": raw.decode()}) == clean


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "2xx"), (304, "3xx"), (404, "4xx"), (503, "5xx"), (101, "1xx"), (999, "5xx")],
)
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1w", 604800),
     ("1.5h", 5400), (" 2H ", 7200)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2 hours", "-1h", "2x"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _report(exit_code: int, *subs: SubdirReport) -> MirrorReport:
    return MirrorReport("https://up/ch", "/srv/m", subdirs=list(subs), seconds=2.0,
                        exit_code=exit_code)  # fmt: skip


def _synced(subdir: str, packages: int, size: int, failed: int = 0) -> SubdirReport:
    sub = SubdirReport(subdir, added=["a-1-0.conda"], packages=packages, published_bytes=size,
                       bytes=10, timings={"publish": 0.1})  # fmt: skip
    sub.failed = {f"f{i}-1-0.conda": "boom" for i in range(failed)}
    return sub


def test_update_runs_success_partial_noop_and_failure() -> None:
    runs = update_runs({}, _report(0, _synced("noarch", 5, 500), _synced("linux-64", 3, 300)), 100)
    assert runs["noarch"].last_success == 100 and runs["noarch"].packages == 5
    assert runs["noarch"].bytes == 500 and runs["noarch"].added == 1
    assert runs["noarch"].upstream == "https://up/ch" and not runs["noarch"].incomplete

    partial = update_runs(runs, _report(1, _synced("noarch", 4, 400, failed=1)), 200)
    assert partial["noarch"].last_success == 100  # not a full success
    assert partial["noarch"].last_run == 200 and partial["noarch"].incomplete
    assert partial["noarch"].exit_code == 1 and partial["noarch"].failed == 1
    assert partial["noarch"].packages == 4  # what the index lists now
    assert partial["linux-64"] == runs["linux-64"]  # not in this run: as it was

    noop = update_runs(partial, _report(0, SubdirReport("noarch", unchanged=True)), 300)
    assert noop["noarch"].last_success == 300 and noop["noarch"].packages == 4
    assert noop["noarch"].unchanged and noop["noarch"].added == 0

    down = update_runs(noop, _report(3), 400)  # upstream unreachable before any subdir
    for name in ("noarch", "linux-64"):
        assert down[name].exit_code == 3 and down[name].incomplete and down[name].last_run == 400
    assert down["noarch"].last_success == 300 and down["linux-64"].last_success == 100
    assert down["noarch"].packages == 4

    vanished = SubdirReport("linux-64", error="upstream has no linux-64")
    one_gone = update_runs(noop, _report(3, vanished, _synced("noarch", 4, 400)), 500)
    assert one_gone["linux-64"].exit_code == 3 and one_gone["linux-64"].last_success == 100
    assert one_gone["noarch"].exit_code == 0 and one_gone["noarch"].last_success == 500
    assert parse_runs(encode_runs(one_gone)) == one_gone


def test_parse_runs_tolerates_garbage() -> None:
    assert parse_runs(None) == {}
    assert parse_runs(b"not json") == {}
    assert parse_runs(b'{"subdirs": 3}') == {}
    assert parse_runs(b'{"subdirs": {"noarch": {"last_run": 5, "future_field": 1}}}') == {
        "noarch": SubdirRun(last_run=5)
    }


def test_textfile_renders_for_the_prometheus_parser() -> None:
    runs = {"noarch": SubdirRun(upstream="u", last_run=10.5, last_success=None, exit_code=3,
                                incomplete=True, packages=None)}  # fmt: skip
    mirrors = [Series('https://up/"ch"', "/srv/m", runs, 3), Series("u2", "/srv/n", {}, 3, 42.0)]
    families = {f.name: f for f in text_string_to_metric_families(render(mirrors))}
    exit_codes = {(s.labels["url"], s.labels["subdir"]): s.value
                  for s in families["condasync_mirror_exit_code"].samples}  # fmt: skip
    assert exit_codes == {('https://up/"ch"', "noarch"): 3, ("u2", ""): 3}
    last_runs = families["condasync_mirror_last_run_timestamp_seconds"].samples
    assert {s.value for s in last_runs} == {10.5, 42.0}
    success = families["condasync_mirror_last_success_timestamp_seconds"].samples
    assert [s.value for s in success] == [0]  # never: 0, so a staleness alert fires


def test_carry_over_from_the_previous_file() -> None:
    before = [Series("u", "/d", {"noarch": SubdirRun(last_run=5, last_success=5, packages=7,
                                                      bytes=70)})]  # fmt: skip
    previous = render(before)
    now = [Series("u", "/d", {}, 3, 9.0), Series("other", "/e", {}, 3, 9.0)]
    carry_over(previous, now)
    run = now[0].runs["noarch"]
    assert (run.last_success, run.packages, run.bytes) == (5, 7, 70)
    assert (run.last_run, run.exit_code, run.incomplete) == (9.0, 3, True)
    assert now[1].runs == {}
