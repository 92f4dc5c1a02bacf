"""Issue 14 through serve: a mirror channel's settings carry `lock`, `solve`, `platforms` and
`with_deps` (POST /api/channels, PATCH /api/channels/{name}); synchronize selects as the CLI
does, and py-rattler installs from the channel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import RattlerResult, assert_consistent, disk_packages
from tests.integration.test_mirror_closure import (  # noqa: F401
    APP09_LINUX,
    APP10_LINUX,
    NOARCH,
    built_channel,
    explicit_file,
    up_server,
    upstream,
)
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer


def test_closure_settings_through_the_api(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    upstream: Path,  # noqa: F811
    up_server: ChannelServer,  # noqa: F811
    rattler_install: Callable[..., RattlerResult],
) -> None:
    server = start_serve()
    c, headers = server.client, server.headers()
    r = server.create_channel(
        "env", up_server.url, "mirror", solve=["app <1"], platforms=["linux-64"], max_delete=100
    )
    assert r.status_code == 201, r.text
    assert r.json()["solve"] == ["app <1"] and r.json()["platforms"] == ["linux-64"]

    def sync() -> dict[str, Any]:
        r = c.put("/api/channels/env/actions", json={"action": "synchronize"}, headers=headers)
        assert r.status_code == 200, r.text
        return server.wait_task(r.json()["id"], timeout=120)

    done = sync()
    assert done["status"] == "success", done["error"]
    root = server.root / "env"
    assert disk_packages(root, "linux-64") == APP09_LINUX
    assert disk_packages(root, "noarch") == NOARCH
    assert done["report"]["closure"]["solves"][0]["records"] == 5
    got = rattler_install(f"{server.url}/channels/env", ["app"], tmp_path)
    assert got.returncode == 0, got.stderr[-3000:]
    assert {r["file_name"] for r in got.records} == APP09_LINUX | NOARCH
    # PATCH: a lockfile (its text) instead of the solve; prune what the solve selected
    lock = explicit_file(tmp_path / "explicit.txt", up_server.url, upstream, [
        ("linux-64", f, "md5") for f in sorted(APP10_LINUX)
    ] + [("noarch", f, "sha256") for f in sorted(NOARCH)])  # fmt: skip
    body = {"solve": None, "lock": [lock.read_text()], "keep_unselected": "0"}
    r = c.patch("/api/channels/env", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json().get("solve") is None and r.json()["platforms"] == ["linux-64"]
    bad = c.patch("/api/channels/env", json={"keep_unselected": "soon"}, headers=headers)
    assert bad.status_code == 422, bad.text
    assert c.patch("/api/channels/env", json={"with_deps": True}).status_code in (401, 403)
    done = sync()
    assert done["status"] == "success", done["error"]
    assert done["report"]["closure"]["selected"]["linux-64"]["lock"] == 3
    assert disk_packages(root, "linux-64") == APP10_LINUX
    assert_consistent(root)
    again = sync()
    assert again["report"]["unchanged"] is True and again["report"]["closure"]["no_op"] is True


def test_lock_and_with_deps_set_at_creation(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    upstream: Path,  # noqa: F811
    up_server: ChannelServer,  # noqa: F811
) -> None:
    """POST /api/channels with `with_deps` (over the channel's include list) and with `lock`
    (a lockfile's text): the first synchronize selects as `mirror --with-deps`/`--lock`."""
    server = start_serve()
    c, headers = server.client, server.headers()
    deps = server.create_channel(
        "deps", up_server.url, "mirror", with_deps=True, metadata={"includelist": ["app 0.9"]}
    )
    assert deps.status_code == 201, deps.text
    assert deps.json()["with_deps"] is True
    lock = explicit_file(tmp_path / "explicit.txt", up_server.url, upstream, [
        ("linux-64", "libz-1.3-h0.conda", "sha256"), ("noarch", "tzdata-2024a-h0.conda", "md5"),
    ])  # fmt: skip
    locked = server.create_channel("locked", up_server.url, "mirror", lock=[lock.read_text()])
    assert locked.status_code == 201, locked.text
    for name in ("deps", "locked"):
        r = c.put(f"/api/channels/{name}/actions", json={"action": "synchronize"}, headers=headers)
        assert r.status_code == 200, r.text
        done = server.wait_task(r.json()["id"], timeout=120)
        assert done["status"] == "success", done["error"]
        assert_consistent(server.root / name)
    assert disk_packages(server.root / "deps", "linux-64") == APP09_LINUX
    assert disk_packages(server.root / "deps", "noarch") == NOARCH
    assert disk_packages(server.root / "deps", "osx-arm64") == set()
    assert disk_packages(server.root / "locked", "linux-64") == {"libz-1.3-h0.conda"}
    assert disk_packages(server.root / "locked", "noarch") == {"tzdata-2024a-h0.conda"}
