"""`condasync serve` for operators, against real servers on loopback: /metrics parsed with
prometheus-client's own parser, /healthz and /readyz, the JSON access log with X-Request-Id,
errors on stderr with the same id, and no API key in any log line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Channel, cli_command, cli_env, copy_channel, wait_for
from tests.realservers import PG_BIN, PostgresServer, S3Server
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer, FaultServer

ZLIB = "linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2"
DEPENDENT = "noarch/dependent-2.0-0.conda"
KINDS = {"index", "shard", "package", "api", "page"}
STATUS_CLASSES = {"1xx", "2xx", "3xx", "4xx", "5xx"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: ServeProcess, **headers: str) -> Samples:
    response = server.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_proxy_results_and_upstream(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    fault_server: FaultServer,
    real_channel: Channel,
) -> None:
    root = tmp_path / "root"
    copy_channel(real_channel.root, root / "static")
    server = start_serve(root)
    assert server.create_channel("up", fault_server.url, "proxy").status_code == 201
    c = server.client
    assert c.get("/channels/static/noarch/repodata.json").status_code == 200
    assert c.get("/channels/static/noarch/repodata.json").status_code == 200
    assert c.get(f"/channels/static/{DEPENDENT}").status_code == 200
    assert c.get("/channels/static/noarch/no-such-1-0.conda").status_code == 404
    assert c.get("/channels/made-up-name/noarch/x-1-0.conda").status_code == 404
    assert c.get("/channels/up/linux-64/repodata.json").status_code == 200  # fetched: miss
    assert c.get("/channels/up/linux-64/repodata.json").status_code == 200  # cached: hit
    assert c.get(f"/channels/up/{ZLIB}").status_code == 200  # miss
    assert c.get(f"/channels/up/{ZLIB}").status_code == 200  # hit
    fault_server.fault(f"/{DEPENDENT}", "corrupt", times=1)
    assert c.get("/channels/up/noarch/repodata.json").status_code == 200
    with pytest.raises(httpx.RemoteProtocolError):  # cut short: never a complete-looking body
        c.get(f"/channels/up/{DEPENDENT}")
    assert c.get("/api/channels").status_code == 200

    m = scrape(server)
    requests = "condasync_http_requests_total"
    assert value(m, requests, channel="static", kind="index", status="2xx") == 2
    assert value(m, requests, channel="static", kind="package", status="2xx") == 1
    assert value(m, requests, channel="static", kind="package", status="4xx") == 1
    # a name nobody created never becomes a label
    assert value(m, requests, channel="", kind="package", status="4xx") == 1
    assert value(m, requests, channel="up", kind="package", status="2xx") == 3  # one cut short
    assert value(m, requests, channel="", kind="api", status="2xx") >= 2
    size = len((real_channel.root / DEPENDENT).read_bytes())
    sent = value(m, "condasync_http_response_bytes_total", channel="static", kind="package",
                 status="2xx")  # fmt: skip
    assert sent == size
    assert value(m, "condasync_http_request_duration_seconds_count", kind="index") >= 3
    results = "condasync_proxy_results_total"
    assert value(m, results, channel="up", result="miss") >= 2  # an index and the package
    assert value(m, results, channel="up", result="hit") >= 2
    assert value(m, results, channel="up", result="verify_failed") == 1
    assert value(m, "condasync_upstream_requests_total", channel="up") >= 3
    assert value(m, "condasync_proxy_downloads_in_flight") == 0
    cached = len((real_channel.root / ZLIB).read_bytes())
    assert value(m, "condasync_proxy_cache_files", channel="up") == 1
    assert value(m, "condasync_proxy_cache_bytes", channel="up") == cached

    # every name and label is bounded: no filename, no key, no made-up channel
    for (name, labels), _v in m.items():
        assert name.startswith("condasync_"), name
        for label, text in labels:
            assert label in ("channel", "kind", "status", "result", "le"), label
            if label == "kind":
                assert text in KINDS
            if label == "status":
                assert text in STATUS_CLASSES
            if label == "channel":
                assert text in ("", "static", "up"), text

    # upstream errors: upstream gone, a package not cached yet
    fault_server.stop()
    assert c.get("/channels/up/linux-64/test-package-0.1-0.tar.bz2").status_code in (502, 504)
    assert value(scrape(server), "condasync_upstream_errors_total", channel="up") >= 1


def test_metrics_key_only(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    run_cli: Any,
) -> None:
    root = tmp_path / "root"
    server = start_serve(root, "--metrics-key-only")
    assert server.client.get("/metrics").status_code == 401
    (root / "x").mkdir()  # a key's channel must exist
    member = run_cli("apikey", "create", str(root), "--channel", "x", "--role", "owner")
    assert member.returncode == 0, str(member)
    channel_only = member.stdout.strip()
    assert server.client.get("/metrics", headers={"X-API-Key": channel_only}).status_code == 403
    assert server.client.get("/metrics", headers={"X-API-Key": "cs_wrong"}).status_code == 401
    assert server.key
    scrape(server, **{"X-API-Key": server.key})
    scrape(server, Authorization=f"Bearer {server.key}")
    # probes need no key even then
    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/readyz").status_code == 200


def test_healthz_and_readyz(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
) -> None:
    root = tmp_path / "root"
    db = tmp_path / "db.sqlite"
    server = start_serve(root, "--db", f"sqlite:///{db}")
    health = server.client.get("/healthz")
    assert health.status_code == 200 and health.headers["x-request-id"]
    assert server.client.head("/readyz").status_code == 200
    ready = server.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    root.rename(tmp_path / "gone")  # the channel storage is no longer there
    time.sleep(1.1)  # answers are reused for a second
    ready = server.client.get("/readyz")
    assert ready.status_code == 503
    assert "channel storage" in ready.text and str(root.name) in ready.text
    assert server.client.get("/healthz").status_code == 200  # the process is still up
    (tmp_path / "gone").rename(root)
    time.sleep(1.1)
    assert server.client.get("/readyz").status_code == 200


def test_no_metrics_option(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
) -> None:
    server = start_serve(tmp_path / "root", "--no-metrics")
    assert server.client.get("/metrics").status_code == 404
    assert server.client.get("/healthz").status_code == 200


def test_access_log_lines_request_ids_and_no_key_anywhere(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    serve: Callable[..., ChannelServer],
    real_channel: Channel,
    run_cli: Any,
) -> None:
    root = tmp_path / "root"
    log = tmp_path / "access.log"
    upstream = serve(real_channel.root)
    server = start_serve(root, "--access-log", str(log))
    key = run_cli("apikey", "create", str(root), "--role", "owner").stdout.strip()
    assert key.startswith("cs_")
    body = {"name": "priv", "private": True, "mirror_channel_url": upstream.url,
            "mirror_mode": "proxy"}  # fmt: skip
    c = server.client
    assert c.post("/api/channels", json=body, headers={"X-API-Key": key}).status_code == 201
    answers = [
        c.get("/channels/priv/noarch/repodata.json", headers={"X-API-Key": key}),
        c.get(f"/t/{key}/channels/priv/linux-64/repodata.json"),
        c.get(f"/t/{key}/channels/priv/{ZLIB}"),
        c.get(f"/t/{key}/channels/priv/{ZLIB}"),
        c.get(f"/channels/priv/{ZLIB}", headers={"Authorization": f"Bearer {key}"}),
        c.get("/channels/priv/noarch/repodata.json"),  # 401
        c.get(f"/t/{key}x/channels/priv/noarch/repodata.json"),  # a wrong key: 401
        c.get("/api/channels/priv", headers={"X-API-Key": key}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200, 401, 401, 200]
    upstream.stop()
    failed = c.get(f"/t/{key}/channels/priv/noarch/sample_noarch_python-1.0-py_0.conda")
    assert failed.status_code >= 500
    answers.append(failed)
    time.sleep(0.3)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    by_id = {line["request_id"]: line for line in lines}
    for answer in answers:
        rid = answer.headers["x-request-id"]
        line = by_id[rid]
        assert set(line) == {"time", "method", "path", "status", "bytes", "duration_s",
                             "channel", "cache", "request_id"}  # fmt: skip
        assert line["status"] == answer.status_code
        assert line["bytes"] == len(answer.content)
        assert line["method"] == "GET" and line["duration_s"] >= 0
        assert line["path"].startswith(("/channels/", "/api/")), line
        assert line["time"].endswith("Z")
    zlib_lines = [by_id[a.headers["x-request-id"]] for a in answers[2:5]]
    assert [z["cache"] for z in zlib_lines] == ["miss", "hit", "hit"]
    assert all(z["channel"] == "priv" and z["path"] == f"/channels/priv/{ZLIB}" for z in zlib_lines)
    # the error is on stderr with the same request id
    failed_id = failed.headers["x-request-id"]
    assert f"request_id={failed_id}" in server.stderr
    # no key in any log line, on any stream
    for text in (log.read_text(), server.stderr, server.stdout):
        for line in text.splitlines():
            assert key not in line and key[:20] not in line, line
            assert "Bearer" not in line


def test_access_log_to_stdout(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
) -> None:
    server = start_serve(tmp_path / "root", "--access-log", "-")
    answer = server.client.get("/healthz")
    time.sleep(0.2)
    lines = [json.loads(x) for x in server.stdout.splitlines() if x.startswith("{")]
    assert [x["request_id"] for x in lines] == [answer.headers["x-request-id"]]
    assert lines[0]["path"] == "/healthz" and lines[0]["status"] == 200


def test_access_log_path_unwritable_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        cli_command("serve", str(tmp_path), "--access-log", str(tmp_path / "no" / "such.log")),
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "access log" in result.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_sync_task_metrics_and_status_of_a_mirror_channel(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    run_cli: Any,
) -> None:
    server = start_serve(tmp_path / "root")
    assert server.create_channel("mir", channel_server.url, "mirror").status_code == 201
    c, headers = server.client, server.headers()
    before = time.time()
    task = c.put("/api/channels/mir/actions", json={"action": "synchronize"}, headers=headers)
    assert server.wait_task(task.json()["id"])["status"] == "success"
    m = scrape(server)
    assert value(m, "condasync_sync_tasks_total", channel="mir", status="success") == 1
    assert value(m, "condasync_sync_duration_seconds_count") == 1
    last = value(m, "condasync_sync_last_success_timestamp_seconds", channel="mir")
    assert before <= last <= time.time()
    # the engine's run record serves `condasync status` for the channel's folder too
    status = run_cli("status", tmp_path / "root" / "mir", "--json", "--max-age", "1h")
    assert status.returncode == 0, str(status)
    assert status.json()["subdirs"]["noarch"]["upstream"] == channel_server.url

    channel_server.stop()  # the next task fails
    task = c.put("/api/channels/mir/actions", json={"action": "synchronize"}, headers=headers)
    assert server.wait_task(task.json()["id"])["status"] == "failed"
    m = scrape(server)
    assert value(m, "condasync_sync_tasks_total", channel="mir", status="failed") == 1
    assert value(m, "condasync_sync_last_success_timestamp_seconds", channel="mir") == last


def test_readyz_with_postgresql_and_s3(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    postgres_server: PostgresServer,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    name = f"db_{os.urandom(6).hex()}"
    url = postgres_server.create_database(name)
    server = start_serve(tmp_path / "scratch", "--db", url, "--storage", f"s3://{s3_bucket}/ch",
                         env=s3_server.env)  # fmt: skip
    assert server.client.get("/readyz").status_code == 200
    # the bucket goes away: not ready, and the reason says which part
    assert s3_server.signed_request("DELETE", f"/{s3_bucket}") in (200, 204)
    time.sleep(1.1)
    ready = server.client.get("/readyz")
    assert ready.status_code == 503 and "channel storage" in ready.text, ready.text
    assert s3_server.signed_request("PUT", f"/{s3_bucket}") in (200, 409)
    wait_for(lambda: server.client.get("/readyz").status_code == 200, timeout=10, interval=0.3)
    # the database goes away
    dropdb = PG_BIN / "dropdb"
    subprocess.run(
        [str(dropdb), "--force", "-h", postgres_server.host, "-p", str(postgres_server.port),
         "-U", postgres_server.user, name],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    time.sleep(1.1)
    ready = server.client.get("/readyz")
    assert ready.status_code == 503 and "database" in ready.text, ready.text
    assert server.client.get("/healthz").status_code == 200
