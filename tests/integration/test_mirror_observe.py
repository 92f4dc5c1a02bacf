"""`mirror --metrics-file` (parsed with prometheus-client's own parser), `condasync status`
(age, packages, incomplete runs, the lock holder, --max-age exit 4) and `--log-format json`,
against a real upstream on loopback."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from condasync.storage.s3 import S3Storage
from tests.conftest import Channel, mirror_args, wait_for
from tests.realservers import S3Server
from tests.servers import ChannelServer, FaultServer

PKG = "/noarch/dependent-2.0-0.conda"
SUBDIRS = ("linux-64", "noarch", "osx-64")

Samples = dict[str, dict[tuple[str, str, str], float]]


def parse_textfile(path: Path) -> Samples:
    """metric name -> {(url, dir, subdir): value}, read by prometheus-client's parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge", family
        for s in family.samples:
            key = (s.labels["url"], s.labels["dir"], s.labels["subdir"])
            out.setdefault(s.name, {})[key] = s.value
    return out


def expected(channel: Channel, subdir: str) -> tuple[int, int]:
    records = channel.records(subdir)
    return len(records), sum(r["size"] for r in records.values())


def test_metrics_file_success_then_failure_keeps_last_success(
    real_channel: Channel, channel_server: ChannelServer, tmp_path: Path, run_cli: Any
) -> None:
    target = tmp_path / "mirror"
    prom = tmp_path / "textfile" / "condasync.prom"
    prom.parent.mkdir()
    before = time.time()
    first = run_cli(*mirror_args(channel_server.url, target, "--metrics-file", prom))
    assert first.returncode == 0, str(first)
    m = parse_textfile(prom)
    assert os.listdir(prom.parent) == ["condasync.prom"]  # the temp file was renamed
    for subdir in SUBDIRS:
        key = (channel_server.url, str(target), subdir)
        packages, size = expected(real_channel, subdir)
        assert m["condasync_mirror_packages"][key] == packages
        assert m["condasync_mirror_bytes"][key] == size
        assert m["condasync_mirror_added"][key] == packages
        assert m["condasync_mirror_downloaded_bytes"][key] == size
        assert m["condasync_mirror_exit_code"][key] == 0
        assert m["condasync_mirror_incomplete"][key] == 0
        for name in ("replaced", "deleted", "failed", "rejected"):
            assert m[f"condasync_mirror_{name}"][key] == 0
        assert before <= m["condasync_mirror_last_run_timestamp_seconds"][key] <= time.time()
        assert (
            m["condasync_mirror_last_success_timestamp_seconds"][key]
            == m["condasync_mirror_last_run_timestamp_seconds"][key]
        )
        assert m["condasync_mirror_duration_seconds"][key] > 0
    success = m["condasync_mirror_last_success_timestamp_seconds"]

    channel_server.stop()  # upstream unreachable: exit 3
    time.sleep(0.05)
    failed = run_cli(*mirror_args(channel_server.url, target, "--metrics-file", prom))
    assert failed.returncode == 3, str(failed)
    again = parse_textfile(prom)
    for subdir in SUBDIRS:
        key = (channel_server.url, str(target), subdir)
        assert again["condasync_mirror_exit_code"][key] == 3
        assert again["condasync_mirror_incomplete"][key] == 1
        assert again["condasync_mirror_last_success_timestamp_seconds"][key] == success[key]
        assert again["condasync_mirror_last_run_timestamp_seconds"][key] > success[key]
        assert again["condasync_mirror_packages"][key] == expected(real_channel, subdir)[0]
        assert again["condasync_mirror_added"][key] == 0


def test_metrics_file_keeps_last_success_when_the_state_cannot_be_read(
    channel_server: ChannelServer, tmp_path: Path, run_cli: Any
) -> None:
    target = tmp_path / "mirror"
    prom = tmp_path / "condasync.prom"
    assert run_cli(*mirror_args(channel_server.url, target, "--metrics-file", prom)).returncode == 0
    success = parse_textfile(prom)["condasync_mirror_last_success_timestamp_seconds"]
    (target / ".condasync" / "runs.json").unlink()  # the record is gone: the file remembers
    channel_server.stop()
    assert run_cli(*mirror_args(channel_server.url, target, "--metrics-file", prom)).returncode == 3
    after = parse_textfile(prom)
    assert after["condasync_mirror_last_success_timestamp_seconds"] == success
    assert set(after["condasync_mirror_exit_code"].values()) == {3}


def test_one_metrics_file_for_all_mirrors_of_a_config(
    channel_server: ChannelServer, tmp_path: Path, run_cli: Any
) -> None:
    config = tmp_path / "mirrors.toml"
    config.write_text(
        'metrics_file = "out/all.prom"\n'
        f'[[mirror]]\nurl = "{channel_server.url}"\ndir = "one"\nsubdirs = ["noarch"]\n'
        f'[[mirror]]\nurl = "{channel_server.url}"\ndir = "two"\nsubdirs = ["linux-64"]\n'
    )
    (tmp_path / "out").mkdir()
    result = run_cli("mirror", "--config", config)
    assert result.returncode == 0, str(result)
    m = parse_textfile(tmp_path / "out" / "all.prom")
    keys = set(m["condasync_mirror_exit_code"])
    dirs = {(d, s) for _u, d, s in keys}
    assert dirs == {(str(tmp_path / "one"), "noarch"), (str(tmp_path / "two"), "linux-64"),
                    (str(tmp_path / "two"), "noarch")}  # fmt: skip


def test_status_reports_age_packages_and_max_age(
    real_channel: Channel, fault_server: FaultServer, tmp_path: Path, run_cli: Any
) -> None:
    target = tmp_path / "mirror"
    assert run_cli(*mirror_args(fault_server.url, target)).returncode == 0
    result = run_cli("status", target, "--json", "--max-age", "2h")
    assert result.returncode == 0, str(result)
    doc = result.json()
    assert doc["locked"] is False and doc["lock"] is None and doc["stale"] == []
    for subdir in SUBDIRS:
        entry = doc["subdirs"][subdir]
        packages, size = expected(real_channel, subdir)
        assert entry["upstream"] == fault_server.url
        assert entry["packages"] == packages and entry["bytes"] == size
        assert entry["incomplete"] is False
        assert time.time() - 60 < entry["last_success"] == entry["last_run"] <= time.time()
    plain = run_cli("status", target)
    assert plain.returncode == 0 and "noarch: complete" in plain.stdout, str(plain)

    # a package fails for good: the run is incomplete, the last full success stays
    real_channel.add("noarch", "new-pkg-1.0-0.conda")
    real_channel.write()
    fault_server.fault("/noarch/new-pkg-1.0-0.conda", 500)
    time.sleep(3)
    partial = run_cli(*mirror_args(fault_server.url, target, "--retries", "0"))
    assert partial.returncode == 1, str(partial)
    after = run_cli("status", target, "--json").json()["subdirs"]
    assert after["noarch"]["incomplete"] is True
    assert after["noarch"]["last_success"] == doc["subdirs"]["noarch"]["last_success"]
    assert after["noarch"]["last_run"] > after["noarch"]["last_success"]
    assert after["linux-64"]["incomplete"] is False
    assert after["linux-64"]["last_success"] == after["linux-64"]["last_run"]
    # a limit between the two ages: noarch's success is at least 3 s older than linux-64's
    midway = 2 * time.time() - after["noarch"]["last_success"] - after["linux-64"]["last_success"]
    stale = run_cli("status", target, "--max-age", f"{midway / 2:.1f}s")
    assert stale.returncode == 4, str(stale)
    assert "noarch" in stale.stderr and "linux-64" not in stale.stderr
    assert run_cli("status", target, "--max-age", "2h").returncode == 0
    assert run_cli("status", target, "--max-age", "soon").returncode == 2
    assert run_cli("status", tmp_path / "nothing-here").returncode == 2


def test_status_names_the_run_holding_the_lock(
    fault_server: FaultServer, tmp_path: Path, run_cli: Any, start_cli: Any
) -> None:
    target = tmp_path / "mirror"
    fault_server.fault(PKG, "slow", chunk=1, interval=0.05)  # minutes: held for the test
    run = start_cli(*mirror_args(fault_server.url, target))

    def locked() -> dict[str, Any] | None:
        found = run_cli("status", target, "--json")
        if found.returncode != 0:
            return None
        doc: dict[str, Any] = found.json()
        return doc if doc["locked"] else None

    doc = wait_for(locked, timeout=30, interval=0.2, what="status to see the lock")
    assert doc["lock"] == {"pid": run.pid, "host": socket.gethostname()}
    assert f"pid {run.pid}" in run_cli("status", target).stdout
    assert run.alive()  # the probe took nothing from the run
    run.kill9()
    gone = run_cli("status", target, "--json")
    assert gone.returncode == 0 and gone.json()["locked"] is False, str(gone)


def test_log_format_json_every_line_is_one_object(
    real_channel: Channel, fault_server: FaultServer, tmp_path: Path, run_cli: Any
) -> None:
    target = tmp_path / "mirror"
    fault_server.fault(PKG, 500)  # a failed package: error lines and exit 1
    result = run_cli(*mirror_args(fault_server.url, target, "--retries", "0", "--log-format",
                                  "json"))  # fmt: skip
    assert result.returncode == 1, str(result)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert result.stdout == ""
    events = [line["event"] for line in lines]
    assert "failed" in events and "published" in events and events[-1] == "summary"
    assert all({"time", "level", "event"} <= set(line) for line in lines)
    summary = lines[-1]
    assert summary["failed"] == 1 and summary["exit_code"] == 1
    assert any(line["level"] == "error" and line.get("name") == PKG.split("/")[-1]
               for line in lines)  # fmt: skip

    with_json = run_cli(*mirror_args(fault_server.url, target, "--log-format", "json", "--json"))
    for stream in (with_json.stdout, with_json.stderr):
        for line in stream.splitlines():
            assert isinstance(json.loads(line), dict), line
    assert len(with_json.stdout.splitlines()) == 1

    fault_server.stop()
    down = run_cli(*mirror_args(fault_server.url, target, "--log-format", "json"))
    assert down.returncode == 3
    parsed = [json.loads(line) for line in down.stderr.splitlines()]
    assert parsed and parsed[-1]["level"] == "error"
    usage = run_cli("mirror", "--log-format", "json")  # no URL/DIR: a usage error, as JSON
    assert usage.returncode == 2
    assert json.loads(usage.stderr.strip())["exit_code"] == 2


def test_status_of_an_s3_mirror(
    real_channel: Channel,
    channel_server: ChannelServer,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    run_cli: Any,
) -> None:
    target = f"s3://{s3_bucket}/mirror"
    prom = tmp_path / "s3.prom"
    first = run_cli(*mirror_args(channel_server.url, target, "--metrics-file", prom),
                    env=s3_server.env)  # fmt: skip
    assert first.returncode == 0, str(first)
    result = run_cli("status", target, "--json", "--max-age", "1h", env=s3_server.env)
    assert result.returncode == 0, str(result)
    doc = result.json()
    assert doc["locked"] is False
    for subdir in SUBDIRS:
        packages, size = expected(real_channel, subdir)
        entry = doc["subdirs"][subdir]
        assert (entry["packages"], entry["bytes"], entry["incomplete"]) == (packages, size, False)
        assert entry["upstream"] == channel_server.url
    m = parse_textfile(prom)
    assert (
        m["condasync_mirror_packages"][(channel_server.url, target, "noarch")]
        == expected(real_channel, "noarch")[0]
    )
    # a lock object that has not expired names the run holding it
    storage = S3Storage(target, env=s3_server.env)
    lock = {"token": "t", "host": "elsewhere", "pid": 4242, "expires": time.time() + 60}
    storage.write_if_changed(".condasync/lock", json.dumps(lock).encode())
    held = run_cli("status", target, "--json", env=s3_server.env).json()
    assert held["lock"] == {"pid": 4242, "host": "elsewhere"}
    storage.write_if_changed(".condasync/lock", json.dumps({**lock, "expires": 1}).encode())
    assert run_cli("status", target, "--json", env=s3_server.env).json()["locked"] is False
