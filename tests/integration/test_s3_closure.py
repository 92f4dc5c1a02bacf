"""Issue 14 on an s3:// target (SeaweedFS): --solve and --lock select as on a folder, the kept
upstream indexes live in the bucket, a no-op run solves nothing and issues no PUT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from condasync.storage.s3 import S3Storage
from tests.conftest import CliResult, ok
from tests.integration.test_mirror_closure import (  # noqa: F401
    APP09_LINUX,
    APP10_LINUX,
    NOARCH,
    built_channel,
    explicit_file,
    up_server,
    upstream,
)
from tests.integration.test_s3_mirror_cli import s3_problems
from tests.realservers import S3Proxy, S3Server
from tests.servers import ChannelServer


def test_solve_and_lock_to_s3(
    upstream: Path,  # noqa: F811
    up_server: ChannelServer,  # noqa: F811
    s3_server: S3Server,
    s3_bucket: str,
    run_cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    target = f"s3://{s3_bucket}/env"
    args = ("mirror", up_server.url, target, "-j", "2", "--json", "--solve", "app <1",
            "--platform", "linux-64")  # fmt: skip
    with S3Proxy(s3_server.endpoint) as proxy:
        env = {**s3_server.env, "AWS_ENDPOINT_URL": proxy.url}
        first = ok(run_cli(*args, env=env, timeout=120))
        assert first.json()["closure"]["solves"][0]["records"] == 5
        storage = S3Storage(target, env=s3_server.env)
        assert s3_problems(storage) == []
        relpaths = {o.relpath for o in storage.list()}
        assert {f"linux-64/{fn}" for fn in APP09_LINUX} <= relpaths
        assert not any(p.startswith("osx-arm64/") and p.endswith(".conda") for p in relpaths)
        assert ".condasync/closure/linux-64.repodata.json" in relpaths
        proxy.requests.clear()
        again = ok(run_cli(*args, env=env, timeout=120))
        assert again.json()["closure"] == {"no_op": True, "solves": []}
        assert proxy.puts() == []
        # a dry run of a changed selection plans against the bucket and writes nothing
        dry = ok(run_cli("mirror", up_server.url, target, "--json", "--solve", "app >=1",
                         "--platform", "linux-64", "--keep-unselected", "0", "--max-delete",
                         "100", "--dry-run", env=env, timeout=120))  # fmt: skip
        assert set(dry.json()["subdirs"]["linux-64"]["deleted"]) == {
            "app-0.9-h0.conda", "libz-1.2-h0.conda"
        }  # fmt: skip
        assert [r.method for r in proxy.requests if r.method not in ("GET", "HEAD")] == []
        # a lockfile replaces the solve; the solve's packages are pruned at once
        lock = explicit_file(tmp_path / "explicit.txt", up_server.url, upstream, [
            ("linux-64", f, "md5") for f in sorted(APP10_LINUX)
        ] + [("noarch", f, "md5") for f in sorted(NOARCH)])  # fmt: skip
        locked = ok(run_cli("mirror", up_server.url, target, "-j", "2", "--json", "--lock", lock,
                            "--keep-unselected", "0", "--max-delete", "100", env=env,
                            timeout=120))  # fmt: skip
        assert set(locked.json()["subdirs"]["linux-64"]["deleted"]) == {
            "app-0.9-h0.conda", "libz-1.2-h0.conda"
        }  # fmt: skip
        assert s3_problems(storage) == []
        linux = {o.relpath for o in storage.list() if o.relpath.startswith("linux-64/")}
        assert {p for p in linux if p.endswith(".conda")} == {f"linux-64/{f}" for f in APP10_LINUX}
