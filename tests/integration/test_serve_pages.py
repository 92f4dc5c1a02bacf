"""The pages people browse, against `condasync serve` with a mirror, a proxy and a private
channel on a real upstream: their text, keys (headers, cookie, never `?key=`), CSRF, the
Synchronize button clicked in headless Chromium, and a screenshot."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.chromium import Browser, find_chromium
from tests.conftest import REPO_ROOT, CliResult, copy_channel
from tests.serve_support import ServeProcess, start_serve_shared  # noqa: F401
from tests.servers import ChannelServer

SECRET_PACKAGES = ("zlib", "dependent", "_r-mutex", "xtensor-io", "conda-forge-repodata-patches")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChannelServer]:
    root = tmp_path_factory.mktemp("upstream") / "channel"
    with ChannelServer(copy_channel(REPO_ROOT / "tests" / "data" / "real-channel", root)) as server:
        yield server


@pytest.fixture(scope="module")
def site(
    upstream: ChannelServer,
    start_serve_shared: Callable[..., ServeProcess],  # noqa: F811
) -> ServeProcess:
    server = start_serve_shared()
    for name, mode, private in (("mir", "mirror", False), ("prox", "proxy", False),
                                ("secret", "proxy", True)):  # fmt: skip
        r = server.create_channel(name, upstream.url, mode, private=private)
        assert r.status_code == 201, r.text
    task = server.client.put(
        "/api/channels/mir/actions", json={"action": "synchronize"}, headers=server.headers()
    ).json()
    assert server.wait_task(task["id"], 60)["status"] == "success"
    return server


def _key(site: ServeProcess, run_cli: Callable[..., CliResult], *args: str) -> str:
    result = run_cli("apikey", "create", str(site.root), *args)
    assert result.returncode == 0, result
    return result.stdout.strip()


def test_front_page_lists_channels_and_hides_private_ones(site: ServeProcess) -> None:
    c = site.client
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    for expected in ("mir", "prox", "mirror", "proxy", "success", "/docs",
                     f"{site.url}/channels/mir"):  # fmt: skip
        assert expected in text, expected
    assert "secret" not in text
    assert "cdn" not in text.lower() and "<script src" not in text
    assert "secret" in c.get("/", headers=site.headers()).text
    assert "secret" in c.get("/", headers={"Authorization": f"Bearer {site.key}"}).text
    assert "secret" not in c.get(f"/?key={site.key}").text  # keys are never taken from URLs


def test_channel_page_search_and_package_page(site: ServeProcess) -> None:
    c = site.client
    page = c.get("/channels/mir/")
    assert page.status_code == 200
    for expected in ("dependent", "2.0", "noarch", "zlib", "1.2.11", "linux-64, osx-64",
                     "Synchronize history", "added", "success"):  # fmt: skip
        assert expected in page.text, expected
    assert "Synchronize</button>" not in page.text  # no key: no button
    assert c.get("/channels/mir").status_code == 308
    found = c.get("/channels/mir/", params={"q": "zli"}).text
    assert "/channels/mir/packages/zlib" in found and "/packages/dependent" not in found
    pkg = c.get("/channels/mir/packages/zlib")
    assert pkg.status_code == 200
    for expected in ("h7b6447c_3", "zlib-1.2.11-h7b6447c_3.conda", "osx-64", "2018-11-21",
                     "f33afff2144e1d6c4cf2e3e184937db8bf825b4537df74662aea5ee207b6a31b",
                     f"conda install -c {site.url}/channels/mir zlib",
                     f"mamba install -c {site.url}/channels/mir zlib",
                     "pixi add zlib"):  # fmt: skip
        assert expected in pkg.text, expected
    assert c.get("/channels/mir/packages/nothing-here").status_code == 404
    for path in ("/", "/channels/mir/", "/channels/mir/packages/zlib", "/login"):
        head = c.head(path)  # link checkers and load balancers ask with HEAD
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"].startswith("text/html"), path
    assert c.get("/channels/none/").status_code == 404
    # the channel's files are still files
    assert c.get("/channels/mir/noarch/repodata.json").json()["packages.conda"]
    assert c.get("/channels/mir/linux-64/zlib-1.2.11-h7b6447c_3.conda").status_code == 200


def test_proxy_page_marks_cached_packages_and_shows_the_cache(site: ServeProcess) -> None:
    c = site.client
    before = c.get("/channels/prox/").text
    assert "zlib" in before and "dependent" in before  # upstream's packages, from its index
    assert "0 packages" in before
    assert c.get("/channels/prox/noarch/dependent-2.0-0.conda").status_code == 200
    assert c.get("/channels/prox/noarch/dependent-2.0-0.conda").status_code == 200  # a hit
    time.sleep(2.5)  # the access record is written in batches
    after = c.get("/channels/prox/").text
    rows = dict(re.findall(r'packages/([a-z_-]+)">[^<]*</a></td>(.*?)</tr>', after))
    assert rows["dependent"].endswith("<td>cached</td>")
    assert not rows["zlib"].endswith("<td>cached</td>")
    assert "1 packages, 3.8 KiB" in after
    assert "50%" in after and "1 hits, 1 misses" in after


def test_private_channel_shows_nothing_without_a_key(
    site: ServeProcess, run_cli: Callable[..., CliResult]
) -> None:
    c = site.client
    for url, headers in (
        ("/channels/secret/", {}),
        (f"/channels/secret/?key={site.key}", {}),
        ("/channels/secret/packages/zlib", {}),
        ("/channels/secret/", {"X-API-Key": "cs_wrong"}),
    ):
        r = c.get(url, headers=headers)
        assert r.status_code == 401, (url, r.status_code)
        assert "API key" in r.text and '<form method="post" action="/login">' in r.text
        for name in SECRET_PACKAGES:
            assert name not in r.text, (url, name)
    member = _key(site, run_cli, "--role", "member")
    denied = c.get("/channels/secret/", headers={"X-API-Key": member})
    assert denied.status_code == 403 and "zlib" not in denied.text
    for headers in ({"X-API-Key": site.key}, {"Authorization": f"Bearer {site.key}"}):
        ok = c.get("/channels/secret/", headers=headers)
        assert ok.status_code == 200 and "zlib" in ok.text
    reader = _key(site, run_cli, "--channel", "secret", "--role", "member")
    assert "zlib" in c.get("/channels/secret/packages/zlib", headers={"X-API-Key": reader}).text


def test_login_cookie_and_csrf(site: ServeProcess, run_cli: Callable[..., CliResult]) -> None:
    c = site.client
    bad = c.post("/login", data={"key": "cs_nope", "next": "/channels/secret/"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    good = c.post("/login", data={"key": site.key or "", "next": "/channels/mir/"})
    assert good.status_code == 303 and good.headers["location"] == "/channels/mir/"
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert c.post("/login", data={"key": site.key, "next": "//evil.example/"}).headers[
        "location"] == "/"  # fmt: skip
    assert c.post("/login", data={"key": site.key}, headers={"Origin": "http://evil.example"}
                  ).status_code == 403  # fmt: skip
    c = httpx.Client(base_url=site.url, cookies={"condasync_key": site.key or ""}, timeout=30)
    page = c.get("/channels/mir/").text
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert token and "Synchronize</button>" in page
    # without the token: refused by the form handler and by the API
    assert c.post("/channels/mir/synchronize").status_code == 403
    assert c.post("/channels/mir/synchronize", data={"csrf": "0" * 64}
                  ).status_code == 403  # fmt: skip
    api = c.put("/api/channels/mir/actions", json={"action": "synchronize"})
    assert api.status_code == 401
    wrong = c.put("/api/channels/mir/actions", json={"action": "synchronize"},
                  headers={"X-CSRF-Token": "0" * 64})  # fmt: skip
    assert wrong.status_code == 401
    # a member sees no button, and its token does not synchronize
    member = _key(site, run_cli, "--role", "member")
    member_page = httpx.get(
        f"{site.url}/channels/mir/", cookies={"condasync_key": member}, timeout=30
    ).text
    assert "Synchronize</button>" not in member_page and "Synchronize history" in member_page
    # with the token, the form post starts a task
    posted = c.post("/channels/mir/synchronize", data={"csrf": token.group(1)})
    assert posted.status_code == 303
    tasks = [t for t in _tasks(site) if t["channel"] == "mir"]
    assert len(tasks) >= 2
    site.wait_task(tasks[-1]["id"], 60)
    c.close()
    site.client.cookies.clear()  # the logins above set it on the shared client


def _tasks(site: ServeProcess) -> list[dict[str, object]]:
    found = []
    for ident in range(1, 50):
        r = site.client.get(f"/api/tasks/{ident}")
        if r.status_code == 200:
            found.append(r.json())
    return found


def test_pages_in_chromium_synchronize_and_screenshot(site: ServeProcess, tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    browser = Browser(binary)
    try:
        front = browser.open(f"{site.url}/")
        for expected in ("Channels", "mir", "prox", "mirror", "proxy", "API docs",
                         f"{site.url}/channels/mir"):  # fmt: skip
            assert expected in front, expected
        assert "secret" not in front
        # log in through the form, then come back to the mirror channel
        browser.open(f"{site.url}/login?next=/channels/mir/")
        browser.evaluate(
            f"document.querySelector('input[name=key]').value = {site.key!r};"
            "document.querySelector('form[action=\"/login\"]').submit()"
        )
        browser.wait_for("location.pathname === '/channels/mir/' && "
                         "document.readyState === 'complete'")  # fmt: skip
        text = browser.text()
        for expected in ("Synchronize history", "Synchronize", "dependent", "zlib", "success"):
            assert expected in text, expected
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: not visible to scripts
        before = {t["id"] for t in _tasks(site)}
        browser.evaluate("document.getElementById('sync-button').click()")
        result = browser.wait_for(
            "document.getElementById('sync-result') && "
            "document.getElementById('sync-result').textContent"
        )
        assert re.match(r"task \d+ (pending|running|success)", result), result
        new = {int(t["id"]) for t in _tasks(site)} - {int(i) for i in before}  # type: ignore[call-overload]
        assert len(new) == 1
        assert site.wait_task(new.pop(), 60)["status"] == "success"
        time.sleep(2)  # the page reloads itself after a click
        browser.open(f"{site.url}/channels/mir/")
        assert browser.text().count("success") >= 2
        private = browser.open(f"{site.url}/channels/secret/")  # the owner's cookie reads it
        assert "zlib" in private
        shot = browser.screenshot(tmp_path / "channel.png")
        assert shot.startswith(b"\x89PNG") and len(shot) > 5000
        browser.open(f"{site.url}/channels/mir/")
        keep = os.environ.get("CONDASYNC_SCREENSHOT")  # docs/screenshot-channel.png is made so
        browser.screenshot(Path(keep) if keep else tmp_path / "screenshot-channel.png")
    finally:
        browser.close()
