"""quetz's API shapes and status codes, by plain HTTP against a real `condasync serve` (what
quetz-client 0.5.0 lacks: /api/me, versions, jobs, actions, PATCH), the mirroring settings
(metadata lists, first synchronize, proxylist), uploads refused, /get/ URLs and bz2."""

from __future__ import annotations

import bz2
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Channel, CliResult, RattlerResult
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer

ZLIB = "linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2"
CHANNEL_KEYS = {
    "name", "description", "private", "size_limit", "ttl", "mirror_channel_url", "mirror_mode",
    "members_count", "packages_count",
}  # fmt: skip
PACKAGE_KEYS = {
    "name", "summary", "description", "url", "platforms", "current_version", "latest_change"
}  # fmt: skip
JOB_KEYS = {
    "id", "manifest", "owner_id", "created", "start_at", "repeat_every_seconds", "status",
    "items_spec",
}  # fmt: skip
VERSION_KEYS = {
    "id", "channel_name", "package_name", "platform", "version", "build_string", "build_number",
    "filename", "info", "uploader", "time_created", "download_count",
}  # fmt: skip


def wait_job(server: ServeProcess, job_id: int, timeout: float = 60) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = server.client.get(
            f"/api/jobs/{job_id}", headers=server.headers()
        ).json()
        if job["status"] in ("success", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture
def server(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    real_channel: Channel,
) -> ServeProcess:
    channeldata = {"subdirs": ["linux-64", "noarch", "osx-64"], "packages": {}}
    (real_channel.root / "channeldata.json").write_text(json.dumps(channeldata))
    serve = start_serve()
    r = serve.create_channel("mir", channel_server.url, "mirror", actions=[])
    assert r.status_code == 201, r.text
    return serve


def test_channel_objects_and_pages(server: ServeProcess, channel_server: ChannelServer) -> None:
    c, h = server.client, server.headers()
    # condasync's fields and quetz's, on the plain endpoints
    ch = c.get("/api/channels/mir").json()
    assert CHANNEL_KEYS | {"max_delete", "metadata"} <= set(ch)
    assert (ch["members_count"], ch["packages_count"], ch["description"]) == (1, 0, None)
    assert [x["name"] for x in c.get("/api/channels").json()] == ["mir"]
    # quetz's pages: exactly quetz's keys, skip/limit honoured, an empty page at the end
    for name in ("a1", "a2"):
        assert server.create_channel(name, channel_server.url, "proxy").status_code == 201
    page = c.get("/api/paginated/channels", params={"skip": 0, "limit": 2}).json()
    assert page["pagination"] == {"skip": 0, "limit": 2, "all_records_count": 3}
    assert [set(x) for x in page["result"]] == [CHANNEL_KEYS, CHANNEL_KEYS]
    assert [x["name"] for x in page["result"]] == ["a1", "a2"]
    assert [
        x["name"] for x in c.get("/api/paginated/channels?skip=2&limit=2").json()["result"]
    ] == ["mir"]
    assert c.get("/api/paginated/channels?skip=4&limit=2").json()["result"] == []
    assert c.get("/api/paginated/channels?q=a2").json()["pagination"]["all_records_count"] == 1
    # public=False: only channels where the key has a role (it created all three)
    assert len(c.get("/api/paginated/channels?public=False", headers=h).json()["result"]) == 3
    assert c.get("/api/paginated/channels?public=False").json()["result"] == []


def test_packages_versions_me_members(server: ServeProcess, real_channel: Channel) -> None:
    c, h = server.client, server.headers()
    r = c.put("/api/channels/mir/actions", json={"action": "synchronize_repodata"}, headers=h)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["manifest"] == "synchronize_repodata" and set(job) >= JOB_KEYS
    assert wait_job(server, job["id"])["status"] == "success"
    page = c.get("/api/paginated/channels/mir/packages", params={"limit": 3, "q": ""}).json()
    assert page["pagination"]["all_records_count"] == 12
    assert all(set(p) == PACKAGE_KEYS for p in page["result"]) and len(page["result"]) == 3
    newest = c.get("/api/paginated/channels/mir/packages?order_by=name:desc&limit=1").json()
    assert newest["result"][0]["name"] == "zlib"
    zlib = c.get("/api/channels/mir/packages/zlib").json()
    assert set(zlib) >= PACKAGE_KEYS and zlib["platforms"] == ["linux-64", "osx-64"]
    assert c.get("/api/channels/mir/packages/nope").status_code == 404
    versions = c.get("/api/channels/mir/packages/zlib/versions").json()
    assert len(versions) == 4 and all(set(v) == VERSION_KEYS for v in versions)
    record = real_channel.record("linux-64", ZLIB.split("/")[1])
    mine = next(v for v in versions if v["filename"] == ZLIB.split("/")[1])
    assert (mine["platform"], mine["version"], mine["build_string"]) == (
        "linux-64",
        "1.2.11",
        "h7b6447c_3",
    )
    assert mine["info"]["sha256"] == record["sha256"]
    paged = c.get("/api/paginated/channels/mir/packages/zlib/versions?skip=3&limit=2").json()
    assert len(paged["result"]) == 1 and paged["pagination"]["all_records_count"] == 4
    # /api/me: quetz's Profile shape, for the key; 401 without one or with a wrong one
    me = c.get("/api/me", headers=h).json()
    assert set(me) >= {"name", "avatar_url", "user"} and me["role"] == "owner"
    assert set(me["user"]) == {"id", "username"}
    assert c.get("/api/me").status_code == 401
    assert c.get("/api/me", headers={"X-API-Key": "cs_wrong"}).status_code == 401
    # members: key ids and roles, never the key
    r = c.get("/api/channels/mir/members", headers=h)
    assert r.status_code == 200 and server.key and server.key not in r.text
    assert server.key[:12] not in r.text
    assert r.json() == [
        {
            "role": "owner",
            "user": {
                "id": me["user"]["id"],
                "username": me["user"]["username"],
                "profile": {"name": me["name"], "avatar_url": ""},
            },
        }
    ]
    assert c.get("/api/channels/mir/members").status_code == 401


def test_jobs_actions_and_first_synchronize(
    server: ServeProcess, channel_server: ChannelServer
) -> None:
    c, h = server.client, server.headers()
    # "actions": [] created no job; a default mirror starts its first synchronize at creation
    assert c.get("/api/jobs?status=success&status=failed", headers=h).json()["result"] == []
    assert server.create_channel("auto", channel_server.url, "mirror").status_code == 201
    jobs = c.get(
        "/api/jobs",
        params=[("status", s) for s in ("pending", "running", "success")],
        headers=h,
    ).json()["result"]
    assert len(jobs) == 1 and set(jobs[0]) == JOB_KEYS
    assert wait_job(server, jobs[0]["id"])["status"] == "success"
    assert c.get(f"/api/tasks/{jobs[0]['id']}").json()["channel"] == "auto"
    assert c.get("/api/jobs", headers=h).json()["result"] == []  # finished: hidden by default
    assert (server.root / "auto" / ZLIB).is_file()
    # start_at and repeat_every_seconds at creation
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    body = {"start_at": later, "repeat_every_seconds": 3600}
    assert server.create_channel("later", channel_server.url, "mirror", **body).status_code == 201
    pending = c.get("/api/jobs", headers=h).json()["result"]
    assert [(j["status"], j["repeat_every_seconds"]) for j in pending] == [("pending", 3600)]
    assert pending[0]["start_at"].startswith(later[:16])
    # actions with no meaning here: 422 naming the accepted ones
    for action in ("reindex", "synchronize_metrics", "cleanup"):
        r = c.put("/api/channels/auto/actions", json={"action": action}, headers=h)
        assert r.status_code == 422
        assert "synchronize, synchronize_repodata" in r.json()["message"]
    body2 = {"actions": ["validate_packages"]}
    assert server.create_channel("x2", channel_server.url, "mirror", **body2).status_code == 422
    assert c.get("/api/jobs/999999", headers=h).status_code == 404
    assert c.get("/api/jobs/1").status_code == 401


def test_patch_and_filters(server: ServeProcess, run_cli: Callable[..., CliResult]) -> None:
    c, h = server.client, server.headers()
    patch = {"private": True, "ttl": 900, "description": "d", "metadata": {"includelist": ["zlib"]}}
    r = c.patch("/api/channels/mir", json=patch, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["private"], out["ttl"], out["description"]) == (True, 900, "d")
    assert out["metadata"]["includelist"] == ["zlib"]
    # metadata is merged, as in quetz
    r = c.patch("/api/channels/mir", json={"metadata": {"proxylist": ["mock"]}}, headers=h)
    assert r.json()["metadata"] == {"includelist": ["zlib"], "excludelist": None,
                                    "proxylist": ["mock"]}  # fmt: skip
    for bad in ({"name": "y"}, {"mirror_channel_url": "http://x/y"}, {"ttl": -1},
                {"metadata": {"includelist": ["bad spec ]["]}}):  # fmt: skip
        assert c.patch("/api/channels/mir", json=bad, headers=h).status_code == 422, bad
    member = run_cli("apikey", "create", server.root, "--role", "member").stdout.strip()
    assert (
        c.patch("/api/channels/mir", json={"ttl": 5}, headers={"X-API-Key": member}).status_code
        == 403
    )
    assert c.patch("/api/channels/mir", json={"ttl": 5}).status_code == 401
    assert c.patch("/api/channels/nope", json={"ttl": 5}, headers=h).status_code == 404
    # the sync applies the lists: zlib only
    job = c.put("/api/channels/mir/actions", json={"action": "synchronize"}, headers=h).json()
    assert wait_job(server, job["id"])["status"] == "success"
    names = [p["name"] for p in c.get("/api/channels/mir/packages", headers=h).json()]
    assert names == ["zlib"]
    # an exclude list instead (dropping zlib is a 100% shrink of linux-64: max_delete 100)
    c.patch("/api/channels/mir", json={"max_delete": 100, "metadata": {"includelist": None,
            "excludelist": ["zlib", "mock", "dependent"]}}, headers=h)  # fmt: skip
    job = c.put("/api/channels/mir/actions", json={"action": "synchronize"}, headers=h).json()
    done = wait_job(server, job["id"])
    assert done["status"] == "success", c.get(f"/api/tasks/{job['id']}").json()["error"]
    names = [p["name"] for p in c.get("/api/channels/mir/packages", headers=h).json()]
    assert "zlib" not in names and "dependency" in names and "dependent" not in names
    assert not (server.root / "mir" / ZLIB).exists()


def test_proxylist_is_served_from_upstream(
    server: ServeProcess,
    channel_server: ChannelServer,
    real_channel: Channel,
    rattler_install: Callable[..., RattlerResult],
    tmp_path: Path,
) -> None:
    c, h = server.client, server.headers()
    body = {"metadata": {"proxylist": ["zlib", "dependency"]}}
    assert server.create_channel("pl", channel_server.url, "mirror", **body).status_code == 201
    job = c.get("/api/jobs", params={"status": ["pending", "running", "success"]}, headers=h)
    assert wait_job(server, job.json()["result"][0]["id"])["status"] == "success"
    index = c.get("/get/pl/linux-64/repodata.json").json()
    assert ZLIB.split("/")[1] in index["packages"]  # listed ...
    assert not (server.root / "pl" / ZLIB).exists()  # ... not copied
    assert (server.root / "pl" / "noarch" / "dependent-2.0-0.conda").is_file()
    r = c.get(f"/get/pl/{ZLIB}")
    assert r.status_code == 307 and r.headers["location"] == f"{channel_server.url}/{ZLIB}"
    assert (
        c.get(f"/get/pl/{ZLIB}", follow_redirects=True).content
        == (real_channel.root / ZLIB).read_bytes()
    )
    assert c.get("/get/pl/linux-64/zlib-9-0.conda").status_code == 307  # upstream says 404
    assert c.get("/get/pl/linux-64/other-9-0.conda").status_code == 404
    # a real client follows the redirect for the proxied dependency
    result = rattler_install(f"{server.url}/get/pl", ["dependent"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"dependent", "dependency"} <= {r["name"] for r in result.records}
    assert not (server.root / "pl" / "noarch" / "dependency-2.0-0.conda").exists()


def test_uploads_refused_with_405(server: ServeProcess, channel_server: ChannelServer) -> None:
    c, h = server.client, server.headers()
    assert server.create_channel("up", channel_server.url, "proxy").status_code == 201
    for name in ("up", "mir"):
        upload = f"/api/channels/{name}/upload/xtensor-0.16.1-0.tar.bz2?sha256=00&force=False"
        for path in (f"/api/channels/{name}/files/", f"/api/channels/{name}/files", upload):
            r = c.post(path, content=b"bytes", headers=h, follow_redirects=False)
            assert r.status_code == 405, (path, r.status_code)
            assert "read only" in r.json()["detail"]
    files = {"files": ("xtensor-0.16.1-0.tar.bz2", b"x")}
    r = c.post("/api/channels/mir/files/", files=files, headers=h, follow_redirects=False)
    assert r.status_code == 405
    assert c.post("/api/channels/nope/files/", headers=h).status_code == 404


def test_get_urls_private_channel_and_keys(
    server: ServeProcess,
    channel_server: ChannelServer,
    run_cli: Callable[..., CliResult],
) -> None:
    c = server.client
    r = server.create_channel("sec", channel_server.url, "proxy", private=True)
    assert r.status_code == 201
    reader = run_cli(
        "apikey", "create", server.root, "--role", "member", "--channel", "sec"
    ).stdout.strip()
    url = "/get/sec/noarch/repodata.json"
    assert c.get(url).status_code == 401
    assert c.get(url, headers={"X-API-Key": "cs_wrong"}).status_code == 401
    assert c.get(url, headers={"X-API-Key": reader}).status_code == 200
    same = c.get(f"/t/{reader}/get/sec/noarch/repodata.json")
    assert same.status_code == 200
    assert same.content == c.get(f"/t/{reader}/channels/sec/noarch/repodata.json").content
    assert c.get(f"/t/{reader}/get/sec/noarch/dependent-2.0-0.conda").status_code == 200
    assert c.get("/get/nope/noarch/repodata.json").status_code == 404


def test_proxy_bz2_only_of_the_same_snapshot(
    server: ServeProcess, channel_server: ChannelServer, real_channel: Channel
) -> None:
    c = server.client
    assert server.create_channel("up", channel_server.url, "proxy", ttl=0).status_code == 201
    folder = real_channel.root / "linux-64"
    served = c.get("/channels/up/linux-64/repodata.json").content
    (folder / "repodata.json.bz2").write_bytes(bz2.compress(served))
    r = c.get("/channels/up/linux-64/repodata.json.bz2")
    assert r.status_code == 200 and bz2.decompress(r.content) == served
    assert r.headers["content-type"] == "application/x-bzip2"
    assert c.get("/get/up/linux-64/repodata.json.bz2").content == r.content
    # upstream's bz2 of another snapshot: 404, never served
    other = json.loads(served)
    other["packages"].pop(ZLIB.split("/")[1])
    (folder / "repodata.json.bz2").write_bytes(bz2.compress(json.dumps(other).encode()))
    again = c.get("/channels/up/linux-64/repodata.json.bz2")  # the kept copy of our snapshot
    assert again.status_code == 200 and bz2.decompress(again.content) == served
    assert c.get("/channels/up/osx-64/repodata.json").status_code == 200
    (real_channel.root / "osx-64" / "repodata.json.bz2").write_bytes(bz2.compress(b"{}"))
    assert c.get("/channels/up/osx-64/repodata.json.bz2").status_code == 404
    assert c.get("/channels/up/noarch/repodata.json.bz2").status_code == 404  # none upstream
