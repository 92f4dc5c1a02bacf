"""`condasync serve` API: auth on every write endpoint, 401/403/404/405/409/422, private
channels, delete, the apikey CLI against the same database, OpenAPI and /docs offline."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer

NEW = {"name": "x", "mirror_channel_url": "http://h/c", "mirror_mode": "proxy"}
WRITES = [
    ("POST", "/api/channels", NEW),
    ("DELETE", "/api/channels/up", None),
    ("PUT", "/api/channels/mir/actions", {"action": "synchronize"}),
    ("POST", "/api/channels/up/files", None),
]  # fmt: skip


@pytest.fixture
def api_server(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
) -> ServeProcess:
    server = start_serve()
    assert server.key and server.key.startswith("cs_"), server.stdout
    assert server.create_channel("up", channel_server.url, "proxy").status_code == 201
    assert server.create_channel("mir", channel_server.url, "mirror").status_code == 201
    return server


def _member_key(server: ServeProcess, run_cli: Callable[..., CliResult], *args: str) -> str:
    result = run_cli("apikey", "create", server.root, *args)
    assert result.returncode == 0, result
    return result.stdout.strip()


def test_every_write_needs_a_key_and_a_role(
    api_server: ServeProcess, run_cli: Callable[..., CliResult]
) -> None:
    c = api_server.client
    member = _member_key(api_server, run_cli, "--role", "member")
    for method, url, body in WRITES:
        assert c.request(method, url, json=body).status_code == 401, (method, url)
        bad = {"X-API-Key": "cs_not-a-key"}  # unknown key: unauthenticated, as in quetz
        assert c.request(method, url, json=body, headers=bad).status_code == 401, (method, url)
        r = c.request(method, url, json=body, headers={"X-API-Key": member})
        assert r.status_code == 403, (method, url, r.status_code)
        assert "detail" in r.json()
    # nothing changed
    assert {ch["name"] for ch in c.get("/api/channels").json()} == {"up", "mir"}


def test_create_conflict_validation_and_read_only(
    api_server: ServeProcess, channel_server: ChannelServer
) -> None:
    c, headers = api_server.client, api_server.headers()
    assert api_server.create_channel("up", channel_server.url, "proxy").status_code == 409
    for bad in (
        {"name": "Bad Name", "mirror_channel_url": channel_server.url, "mirror_mode": "proxy"},
        {"name": "-x", "mirror_channel_url": channel_server.url, "mirror_mode": "proxy"},
        {"name": "a" * 65, "mirror_channel_url": channel_server.url, "mirror_mode": "proxy"},
        {"name": "ok", "mirror_channel_url": "ftp://h/c", "mirror_mode": "proxy"},
        {"name": "ok", "mirror_channel_url": "file:///etc", "mirror_mode": "mirror"},
        {"name": "ok", "mirror_channel_url": channel_server.url, "mirror_mode": "cache"},
        {"name": "ok", "mirror_channel_url": channel_server.url, "mirror_mode": "proxy", "ttl": -1},
        {"mirror_channel_url": channel_server.url, "mirror_mode": "proxy"},
    ):
        r = c.post("/api/channels", json=bad, headers=headers)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["message"]
    # a body sent the way the README's curl sends it (no JSON content type) is still JSON
    r = c.put(
        "/api/channels/up/actions",
        content=b'{"action": "synchronize"}',
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 405 and "proxy" in r.json()["detail"]
    r = c.put("/api/channels/mir/actions", json={"action": "explode"}, headers=headers)
    assert r.status_code == 422
    for name in ("up", "mir"):
        r = c.post(f"/api/channels/{name}/files", headers=headers)
        assert r.status_code == 405 and "read only" in r.json()["detail"]
    assert c.get("/api/channels/nope").status_code == 404
    assert c.put("/api/channels/nope/actions", json={"action": "synchronize"}, headers=headers)
    assert c.get("/api/tasks/999999").status_code == 404


def test_private_channel_needs_a_role_for_files_too(
    api_server: ServeProcess, channel_server: ChannelServer, run_cli: Callable[..., CliResult]
) -> None:
    c = api_server.client
    r = api_server.create_channel("secret", channel_server.url, "proxy", private=True)
    assert r.status_code == 201
    url = "/channels/secret/noarch/repodata.json"
    assert c.get(url).status_code == 401
    assert c.get(url, headers={"X-API-Key": "cs_wrong"}).status_code == 401
    outsider = _member_key(api_server, run_cli, "--role", "member")
    assert c.get(url, headers={"X-API-Key": outsider}).status_code == 403
    reader = _member_key(api_server, run_cli, "--role", "member", "--channel", "secret")
    r = c.get(url, headers={"X-API-Key": reader})
    assert r.status_code == 200 and r.json()["info"]["subdir"] == "noarch"
    assert r.headers["cache-control"].startswith("private")
    assert c.get(f"/t/{reader}/channels/secret/noarch/dependent-2.0-0.conda").status_code == 200
    assert c.get("/api/channels/secret").status_code == 401
    assert c.get("/api/channels/secret", headers={"X-API-Key": reader}).status_code == 200
    bearer = {"Authorization": f"Bearer {reader}"}
    assert c.get("/api/channels/secret", headers=bearer).status_code == 200
    assert c.get(url, headers=bearer).status_code == 200
    assert "secret" not in {ch["name"] for ch in c.get("/api/channels").json()}
    # a channel member may read but not synchronize or delete
    assert c.delete("/api/channels/secret", headers={"X-API-Key": reader}).status_code == 403
    # revoking works at once
    assert run_cli("apikey", "revoke", api_server.root, reader[:12]).returncode == 0
    assert c.get(url, headers={"X-API-Key": reader}).status_code == 401
    assert c.get("/api/channels/secret", headers={"X-API-Key": reader}).status_code == 401


def test_delete_removes_channel_and_files(api_server: ServeProcess) -> None:
    c = api_server.client
    assert c.get("/channels/up/noarch/repodata.json").status_code == 200
    assert (api_server.root / "up" / "noarch" / "repodata.json").is_file()
    r = c.delete("/api/channels/up", headers=api_server.headers())
    assert r.status_code == 200, r.text
    assert not (api_server.root / "up").exists()
    assert c.get("/api/channels/up").status_code == 404
    assert c.get("/channels/up/noarch/repodata.json").status_code == 404


def test_apikey_cli(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    root = tmp_path / "srv"
    result = run_cli("apikey", "create", root, "--role", "owner")
    assert result.returncode == 0, result
    assert re.fullmatch(r"cs_[A-Za-z0-9_-]{40,}\n", result.stdout), result.stdout
    key = result.stdout.strip()
    db = (root / ".condasync" / "condasync.db").read_bytes()
    assert key.encode() not in db  # stored hashed
    listed = run_cli("apikey", "list", root, "--json")
    assert listed.returncode == 0 and key not in listed.stdout
    assert '"role":"owner"' in listed.stdout
    assert run_cli("apikey", "create", root, "--role", "boss").returncode == 2
    assert run_cli("apikey", "revoke", root, "999").returncode != 0
    assert run_cli("apikey", "revoke", root, "1").returncode == 0
    assert '"revoked":true' in run_cli("apikey", "list", root, "--json").stdout
    other = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    (root / "c").mkdir()  # a key's channel must exist (a tree in DIR, or a row)
    made = run_cli(
        "apikey", "create", root, "--db", other, "--channel", "c", "--role", "maintainer"
    )
    assert made.returncode == 0 and (tmp_path / "elsewhere.db").is_file()
    assert (
        '"channels":{"c":"maintainer"}' in run_cli("apikey", "list", "--db", other, "--json").stdout
    )


def test_openapi_declares_errors(api_server: ServeProcess) -> None:
    schema = api_server.client.get("/openapi.json").json()
    paths = schema["paths"]
    post = paths["/api/channels"]["post"]["responses"]
    assert {"201", "401", "403", "409", "422"} <= set(post)
    assert {"401", "403", "404", "405"} <= set(
        paths["/api/channels/{name}/actions"]["put"]["responses"]
    )
    assert "405" in paths["/api/channels/{name}/files"]["post"]["responses"]
    assert {"304", "404", "416"} <= set(
        paths["/channels/{name}/{subdir}/{filename}"]["get"]["responses"]
    )
    assert "/api/tasks/{task_id}" in paths
    for quetz in ("/api/channels/{name}/files/", "/api/channels/{name}/upload/{filename}"):
        assert "405" in paths[quetz]["post"]["responses"]
    assert "/get/{name}/{subdir}/{filename}" in paths and "/api/jobs/{job_id}" in paths


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_docs_page_renders_offline_in_chromium(api_server: ServeProcess) -> None:
    html = api_server.client.get("/docs").text
    assert "cdn" not in html.lower() and "static-offline-docs" in html
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                "--dump-dom", f"{api_server.url}/docs",
            ],
            capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": profile},
        )  # fmt: skip
    dom = proc.stdout
    assert "opblock" in dom, proc.stderr[-2000:]
    assert re.search(r"opblock-summary-method\">POST<", dom), dom[:2000]
    assert "/api/channels" in dom
