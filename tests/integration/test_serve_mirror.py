"""Mirror channels through the API: create, synchronize in the background (the mirror engine),
one task at a time, task status and report, then py-rattler installs from the result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Channel, RattlerResult, assert_consistent
from tests.integration.test_mirror_safety import snapshot
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer, FaultServer

ZLIB = "linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2"


def test_mirror_channel_synchronized_through_the_api(
    tmp_path: Path,
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    fault_server: FaultServer,
    rattler_install: Callable[..., RattlerResult],
) -> None:
    server = start_serve()
    c, headers = server.client, server.headers()
    r = server.create_channel("mirror-channel", fault_server.url, "mirror")
    assert r.status_code == 201, r.text
    fault_server.fault(f"/{ZLIB}", "slow", chunk=32768, interval=0.1)  # keeps the sync busy
    r = c.put(
        "/api/channels/mirror-channel/actions", json={"action": "synchronize"}, headers=headers
    )
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] in ("pending", "running") and isinstance(task["id"], int)
    # a second synchronize while the first runs returns the same task
    again = c.put(
        "/api/channels/mirror-channel/actions", json={"action": "synchronize"}, headers=headers
    ).json()
    assert again["id"] == task["id"]
    # the server keeps serving meanwhile
    assert c.get("/api/channels").status_code == 200
    done = server.wait_task(task["id"])
    assert done["status"] == "success", done
    report = done["report"]
    assert report["exit_code"] == 0 and ZLIB.split("/")[1] in report["added"]
    root = server.root / "mirror-channel"
    assert_consistent(root)
    assert len(fault_server.requests_for(f"/{ZLIB}", "GET")) == 1
    listing = {p["name"]: p for p in c.get("/api/channels/mirror-channel/packages").json()}
    assert listing["dependent"]["latest_version"] == "2.0"
    # a new synchronize after the first finished is a new task, and a no-op
    r = c.put(
        "/api/channels/mirror-channel/actions", json={"action": "synchronize"}, headers=headers
    )
    second = server.wait_task(r.json()["id"])
    assert second["id"] != task["id"] and second["report"]["unchanged"] is True
    result = rattler_install(
        f"{server.url}/channels/mirror-channel", ["dependent", "_r-mutex"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"dependent", "_r-mutex"} <= {rec["name"] for rec in result.records}
    fault_server.stop()
    offline = rattler_install(f"{server.url}/channels/mirror-channel", ["dependent"], tmp_path)
    assert offline.returncode == 0, offline.stderr[-3000:]


def test_scheduled_and_failed_tasks(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    fault_server: FaultServer,
) -> None:
    server = start_serve()
    c, headers = server.client, server.headers()
    assert server.create_channel("later", fault_server.url, "mirror", actions=[]).status_code == 201
    body = {
        "action": "synchronize",
        "start_at": "2000-01-01T00:00:00Z",
        "repeat_every_seconds": 3600,
    }
    task = c.put("/api/channels/later/actions", json=body, headers=headers).json()
    done = server.wait_task(task["id"])
    assert done["status"] == "success" and done["repeat_every_seconds"] == 3600
    # the repeat is queued as a pending task, returned to a new synchronize
    pending = c.put("/api/channels/later/actions", json={"action": "synchronize"}, headers=headers)
    assert pending.json()["status"] == "pending" and pending.json()["id"] != task["id"]
    # an unreachable upstream fails the task with the engine's message
    assert (
        server.create_channel("gone", "http://127.0.0.1:9", "mirror", actions=[]).status_code == 201
    )
    r = c.put("/api/channels/gone/actions", json={"action": "synchronize"}, headers=headers)
    failed = server.wait_task(r.json()["id"])
    assert failed["status"] == "failed" and failed["error"], json.dumps(failed)


def test_synchronize_after_upstream_vanished_fails_and_keeps_the_channel(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    real_channel: Channel,
    channel_server: ChannelServer,
) -> None:
    server = start_serve()
    c, headers = server.client, server.headers()
    r = server.create_channel("m", channel_server.url, "mirror")
    assert r.status_code == 201 and r.json()["max_delete"] == 50, r.text

    def sync() -> dict[str, Any]:
        r = c.put("/api/channels/m/actions", json={"action": "synchronize"}, headers=headers)
        return server.wait_task(r.json()["id"])

    assert sync()["status"] == "success"
    root = server.root / "m"
    before = snapshot(root)
    for sub in ("linux-64", "noarch", "osx-64"):  # the channel is gone upstream: 404 everywhere
        for name in ("repodata.json", "repodata.json.zst"):
            (real_channel.root / sub / name).unlink(missing_ok=True)
    failed = sync()
    assert failed["status"] == "failed" and "no conda channel at" in failed["error"], failed
    assert snapshot(root) == before
    assert c.get("/channels/m/noarch/repodata.json").status_code == 200
    # an emptied index trips the mass-deletion guard, as for `condasync mirror`
    real_channel.docs["linux-64"]["packages"] = {}
    real_channel.docs["linux-64"]["packages.conda"] = {}
    real_channel.write()
    failed = sync()
    assert failed["status"] == "failed" and "--max-delete" in failed["error"], failed
    assert {k: v for k, v in snapshot(root).items() if k.startswith("linux-64")} == {
        k: v for k, v in before.items() if k.startswith("linux-64")
    }
