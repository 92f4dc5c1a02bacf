"""quetz-client 0.5.0 (from PyPI) against a real `condasync serve`: every method it has.
Its dataclasses are built with `Channel(**json)` etc., so a missing or extra key in a page
item fails here, as it would for a quetz user."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from quetz_client import QuetzClient

from tests.conftest import Channel, CliResult
from tests.serve_support import ServeProcess, start_serve  # noqa: F401
from tests.servers import ChannelServer

CHANNELDATA = {
    "channeldata_version": 1,
    "subdirs": ["linux-64", "noarch", "osx-64"],
    "packages": {
        "zlib": {
            "summary": "compression library",
            "description": "A massively spiffy compression library",
            "home": "https://zlib.net",
        }
    },
}
INCLUDED = ["zlib", "dependent", "dependency"]


def wait_jobs_done(server: ServeProcess, timeout: float = 60) -> None:
    """Until no job is pending or running (quetz's default /api/jobs filter)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = server.client.get("/api/jobs", headers=server.headers()).json()
        if not jobs["result"]:
            return
        time.sleep(0.1)
    raise AssertionError("jobs still active")


@pytest.fixture
def quetz(
    start_serve: Callable[..., ServeProcess],  # noqa: F811
    channel_server: ChannelServer,
    real_channel: Channel,
) -> tuple[ServeProcess, QuetzClient, str]:
    (real_channel.root / "channeldata.json").write_text(json.dumps(CHANNELDATA))
    server = start_serve()
    assert server.key
    # the base URL without a trailing slash: the client appends "/api/..."
    return server, QuetzClient.from_token(server.url, server.key), channel_server.url


def test_set_channel_with_mirror_settings_then_read_everything(
    quetz: tuple[ServeProcess, QuetzClient, str],
) -> None:
    server, client, upstream = quetz
    client.set_channel(
        "mir",
        mirror_channel_url=upstream,
        mirror_mode="mirror",
        private=False,
        description="a filtered mirror",
        metadata={"includelist": INCLUDED},
    )  # the first synchronize starts now, as in quetz
    client.set_channel("prox", mirror_channel_url=upstream, mirror_mode="proxy", private=False)
    wait_jobs_done(server)

    channels = {c.name: c for c in client.yield_channels(limit=1)}  # one per page
    assert set(channels) == {"mir", "prox"}
    mir = channels["mir"]
    assert (mir.description, mir.private, mir.mirror_mode) == ("a filtered mirror", False, "mirror")
    assert mir.mirror_channel_url == upstream and mir.packages_count == len(INCLUDED)
    assert mir.members_count == 1  # the creating key is the owner
    assert [c.name for c in client.yield_channels(query="pro")] == ["prox"]

    packages = {p.name: p for p in client.yield_packages("mir", limit=2)}
    assert sorted(packages) == sorted(INCLUDED)  # include list honoured, pagination complete
    zlib = packages["zlib"]
    assert zlib.summary == "compression library"
    assert zlib.description == "A massively spiffy compression library"
    assert zlib.url == "https://zlib.net"
    assert zlib.platforms == ["linux-64", "osx-64"]
    assert zlib.current_version == "1.2.11" and zlib.latest_change
    assert [p.name for p in client.yield_packages("mir", query="depend")] == [
        "dependency",
        "dependent",
    ]
    # a proxy channel lists what upstream offers
    assert "mock" in {p.name for p in client.yield_packages("prox")}

    members = list(client.yield_channel_members("mir"))
    me = server.client.get("/api/me", headers=server.headers()).json()
    assert [(m.role, m.user.username) for m in members] == [("owner", me["user"]["username"])]
    assert next(client.get_role(me["user"]["username"])).role == "owner"
    assert [u.username for u in client.yield_users()] == [me["user"]["username"]]


def test_members_roles_upload_and_delete(
    quetz: tuple[ServeProcess, QuetzClient, str],
    run_cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    server, client, upstream = quetz
    client.set_channel("prox", mirror_channel_url=upstream, mirror_mode="proxy")
    made = run_cli("apikey", "create", server.root, "--role", "member")
    assert made.returncode == 0, made
    other = QuetzClient.from_token(server.url, made.stdout.strip())
    other_name = next(iter(other_me(server, made.stdout.strip())))
    client.set_channel_member(other_name, "maintainer", "prox")
    roles = {m.user.username: m.role for m in client.yield_channel_members("prox")}
    assert roles[other_name] == "maintainer"
    # the maintainer key now manages the channel's members, and sees its own role only
    assert len(list(other.yield_channel_members("prox"))) == 2
    assert next(other.get_role(other_name)).role == "member"
    client.set_role(other_name, "maintainer")
    assert next(other.get_role(other_name)).role == "maintainer"
    client.delete_channel_member(other_name, "prox")
    assert other_name not in {m.user.username for m in client.yield_channel_members("prox")}

    package = tmp_path / "xtensor-0.16.1-0.tar.bz2"
    package.write_bytes(b"not really a package")
    with pytest.raises(requests.HTTPError) as refused:
        client.post_file_to_channel("prox", package)
    assert refused.value.response.status_code == 405
    assert "read only" in refused.value.response.json()["detail"]

    with pytest.raises(requests.HTTPError) as bad:
        list(QuetzClient.from_token(server.url, "cs_wrong").yield_channels())
    assert bad.value.response.status_code == 401

    client.delete_channel("prox")
    assert [c.name for c in client.yield_channels()] == []
    assert not (server.root / "prox").exists()


def other_me(server: ServeProcess, key: str) -> dict[str, Any]:
    """{username: profile} of a key, through /api/me."""
    me = server.client.get("/api/me", headers={"X-API-Key": key}).json()
    return {me["user"]["username"]: me}
