"""`condasync mirror URL s3://bucket/prefix` end to end against SeaweedFS, with a recording proxy
in front to count the CLI's PUTs. Skipped (with the reason) while the CLI refuses s3:// targets."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import zstandard

from condasync.storage.s3 import S3Storage
from tests.conftest import Channel, CliResult, mirror_args, ok, wait_for
from tests.realservers import S3Proxy, S3Server

LOCK_SUFFIX = "/.condasync/lock"


def skip_unless_wired(result: CliResult) -> None:
    if result.returncode == 2 and (
        "not supported" in result.output or "No such option" in result.output
    ):
        pytest.skip("condasync does not accept s3:// targets yet (engine wiring of issue 5)")


def s3_problems(storage: S3Storage) -> list[str]:
    """What a client of the bucket would trip on: a .zst unlike its .json, or an indexed
    package object that is missing or has the wrong size or sha256."""
    problems: list[str] = []
    indexes = [o.relpath for o in storage.list() if o.relpath.endswith("/repodata.json")]
    for index in indexes:
        subdir = index.split("/", 1)[0]
        raw = storage.read(index) or b""
        zst = storage.read(f"{subdir}/repodata.json.zst")
        if zst is not None and zstandard.ZstdDecompressor().decompressobj().decompress(zst) != raw:
            problems.append(f"{subdir}/repodata.json.zst differs from repodata.json")
        doc = json.loads(raw)
        for key in ("packages", "packages.conda"):
            for filename, record in (doc.get(key) or {}).items():
                relpath = f"{subdir}/{filename}"
                if storage.stat(relpath) is None:
                    problems.append(f"{relpath} is indexed but missing")
                    continue
                size, digests = storage.hash_object(relpath, ("sha256",))
                if size != record["size"]:
                    problems.append(f"{relpath}: size {size} != {record['size']}")
                if record.get("sha256") and digests["sha256"] != record["sha256"]:
                    problems.append(f"{relpath}: sha256 mismatch")
    return problems


def test_mirror_to_s3_then_a_noop_run_issues_no_puts(
    real_channel: Channel, channel_server, s3_server: S3Server, s3_bucket: str, run_cli
) -> None:
    target = f"s3://{s3_bucket}/mirror"
    with S3Proxy(s3_server.endpoint) as proxy:
        env = {**s3_server.env, "AWS_ENDPOINT_URL": proxy.url}
        first = run_cli(*mirror_args(channel_server.url, target), env=env)
        skip_unless_wired(first)
        ok(first)
        storage = S3Storage(target, env=s3_server.env)
        assert s3_problems(storage) == []
        relpaths = {o.relpath for o in storage.list()}
        for subdir in ("linux-64", "osx-64", "noarch"):
            assert {f"{subdir}/{name}" for name in real_channel.records(subdir)} <= relpaths
        assert any(p.startswith(".condasync/") for p in relpaths)  # state lives in the bucket
        assert f"{LOCK_SUFFIX[1:]}" not in relpaths  # the lock was released

        proxy.requests.clear()
        ok(run_cli(*mirror_args(channel_server.url, target), env=env))
        # A no-op run takes no lock and writes nothing: not one PUT, not one DELETE.
        assert proxy.puts() == []
        assert not [r for r in proxy.requests if r.method in ("DELETE", "POST")]


def test_s3_endpoint_and_path_style_flags(
    channel_server, s3_server: S3Server, s3_bucket: str, run_cli
) -> None:
    env = {k: v for k, v in s3_server.env.items() if k != "AWS_ENDPOINT_URL"}
    target = f"s3://{s3_bucket}/flags"
    result = run_cli(
        *mirror_args(channel_server.url, target),
        "--s3-endpoint",
        s3_server.endpoint,
        "--s3-force-path-style",
        env={**env, "AWS_ENDPOINT_URL": ""},
    )
    skip_unless_wired(result)
    ok(result)
    assert s3_problems(S3Storage(target, env=s3_server.env)) == []


def test_wrong_secret_exits_3_with_a_clear_message(
    channel_server, s3_server: S3Server, s3_bucket: str, run_cli
) -> None:
    env = {**s3_server.env, "AWS_SECRET_ACCESS_KEY": "definitely-wrong-secret"}
    result = run_cli(*mirror_args(channel_server.url, f"s3://{s3_bucket}/m"), env=env)
    skip_unless_wired(result)
    assert result.returncode == 3, str(result)
    assert "SignatureDoesNotMatch" in result.output or "denied" in result.output.lower()
    assert "definitely-wrong-secret" not in result.output
    assert "Traceback" not in result.output
    assert S3Storage(f"s3://{s3_bucket}/m", env=s3_server.env).list() == []


def test_verify_an_s3_tree(channel_server, s3_server: S3Server, s3_bucket: str, run_cli) -> None:
    target = f"s3://{s3_bucket}/v"
    first = run_cli(*mirror_args(channel_server.url, target), env=s3_server.env)
    skip_unless_wired(first)
    ok(first)
    verify = run_cli("verify", target, env=s3_server.env)
    if verify.returncode == 2 and "not a directory" in verify.output:
        pytest.skip("condasync verify does not accept s3:// targets yet (issue 5)")
    ok(verify)
    storage = S3Storage(target, env=s3_server.env)
    victim = next(o.relpath for o in storage.list() if o.relpath.endswith(".conda"))
    storage.write_if_changed(victim, hashlib.sha256(b"corrupt").digest())
    assert run_cli("verify", target, "--deep", env=s3_server.env).returncode == 4


def test_rattler_installs_from_the_s3_tree(
    channel_server, s3_server: S3Server, s3_bucket: str, run_cli, rattler_install, tmp_path
) -> None:
    """The bucket, read anonymously over plain HTTP (as behind a CDN), is a working channel."""
    ok(run_cli(*mirror_args(channel_server.url, f"s3://{s3_bucket}/conda"), env=s3_server.env))
    url = f"{s3_server.endpoint}/{s3_bucket}/conda"
    result = rattler_install(url, ["dependent", "_r-mutex"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {r["name"] for r in result.records} >= {"dependent", "_r-mutex"}


def test_kill9_during_an_s3_run_leaves_a_consistent_bucket(
    real_channel: Channel, fault_server, s3_server: S3Server, s3_bucket: str, run_cli, start_cli
) -> None:
    target = f"s3://{s3_bucket}/k"
    ok(run_cli(*mirror_args(fault_server.url, target), env=s3_server.env))
    storage = S3Storage(target, env=s3_server.env)
    before = storage.read("noarch/repodata.json")
    real_channel.reupload("noarch", "dependent-2.0-0.conda", b"second upload " * 400)
    real_channel.add("noarch", "added-later-1.0-0.conda", b"later" * 100)
    real_channel.write()
    fault_server.fault("/noarch/dependent-2.0-0.conda", "slow", chunk=64, interval=0.05)
    run = start_cli(*mirror_args(fault_server.url, target), env=s3_server.env)
    wait_for(lambda: fault_server.fault_hits("/noarch/dependent-2.0-0.conda") >= 1, what="slow GET")
    time.sleep(0.5)
    run.kill9()
    assert s3_problems(storage) == []
    assert storage.read("noarch/repodata.json") == before  # still the old snapshot
    # the next run (same host, the killed holder is gone) takes the lock over and finishes
    fault_server.clear_faults()
    ok(run_cli(*mirror_args(fault_server.url, target), env=s3_server.env))
    assert s3_problems(storage) == []
    assert storage.read("noarch/dependent-2.0-0.conda") == b"second upload " * 400
    assert storage.stat("noarch/added-later-1.0-0.conda") is not None


def test_s3_dry_run_writes_nothing_and_options_work_as_on_disk(
    real_channel: Channel, channel_server, s3_server: S3Server, s3_bucket: str, run_cli
) -> None:
    target = f"s3://{s3_bucket}/opts"
    with S3Proxy(s3_server.endpoint) as proxy:
        env = {**s3_server.env, "AWS_ENDPOINT_URL": proxy.url}
        dry = run_cli(*mirror_args(channel_server.url, target, "--dry-run", "--json"), env=env)
        ok(dry)
        assert dry.json()["added"], "a dry run still plans"
        assert proxy.puts() == []
        assert not [r for r in proxy.requests if r.method in ("DELETE", "POST")]
    storage = S3Storage(target, env=s3_server.env)
    assert storage.list() == []

    ok(run_cli(*mirror_args(channel_server.url, target, "--bz2"), env=s3_server.env))
    assert storage.stat("noarch/repodata.json.bz2") is not None
    assert s3_problems(storage) == []
    # an object deleted behind our back comes back with --repair (S3 has no folder mtime)
    victim = next(
        o.relpath
        for o in storage.list()
        if o.relpath.startswith("noarch/") and o.relpath.endswith(".conda")
    )
    storage.delete(victim)
    ok(run_cli(*mirror_args(channel_server.url, target, "--bz2", "--repair"), env=s3_server.env))
    assert storage.stat(victim) is not None
    assert s3_problems(storage) == []


def test_a_second_s3_run_while_one_publishes_exits_5(
    fault_server, s3_server: S3Server, s3_bucket: str, run_cli, start_cli
) -> None:
    target = f"s3://{s3_bucket}/locked"
    fault_server.fault("/noarch/dependent-2.0-0.conda", "slow", chunk=1, interval=0.05)
    first = start_cli(*mirror_args(fault_server.url, target), env=s3_server.env)
    wait_for(lambda: fault_server.fault_hits("/noarch/dependent-2.0-0.conda") >= 1, what="slow GET")
    second = run_cli(*mirror_args(fault_server.url, target, "--json"), env=s3_server.env)
    assert second.returncode == 5, str(second)
    assert "locked" in second.output
    first.kill9()


def test_s3_mass_deletion_guard_and_wrong_url_change_nothing(
    real_channel: Channel, channel_server, serve, tmp_path, s3_server: S3Server, s3_bucket, run_cli
) -> None:
    target = f"s3://{s3_bucket}/guard"
    env = s3_server.env
    ok(run_cli(*mirror_args(channel_server.url, target), env=env))
    storage = S3Storage(target, env=env)

    def objects() -> dict[str, tuple[int, int]]:
        return {o.relpath: (o.size, o.mtime_ns) for o in storage.list()}

    before = objects()
    empty = tmp_path / "empty-site"
    empty.mkdir()
    wrong = serve(empty)
    result = run_cli(*mirror_args(wrong.url, target, subdirs=False), env=env)
    ok(result, 3)
    assert "no conda channel at" in result.stderr
    assert objects() == before
    real_channel.docs["noarch"]["packages"] = {}
    real_channel.docs["noarch"]["packages.conda"] = {}
    real_channel.write("noarch")
    result = run_cli(*mirror_args(channel_server.url, target), env=env)
    ok(result, 3)
    assert "--max-delete 100" in result.stderr
    assert {k: v for k, v in objects().items() if k.startswith("noarch/")} == {
        k: v for k, v in before.items() if k.startswith("noarch/")
    }
    ok(run_cli(*mirror_args(channel_server.url, target, "--max-delete", "100"), env=env))
    assert s3_problems(storage) == []
