"""Shards (CEP-16) on an s3:// target (SeaweedFS): written, in order, incrementally; verify
checks them; a no-op run issues no PUT."""

from __future__ import annotations

import hashlib

import msgspec
import zstandard

from condasync.storage.s3 import S3Storage
from tests.conftest import Channel, mirror_args, ok
from tests.realservers import S3Proxy, S3Server
from tests.shard_support import SHARD_INDEX


def _unpack(data: bytes) -> dict:
    return msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(data))


def test_shards_on_s3(
    real_channel: Channel, channel_server, s3_server: S3Server, s3_bucket: str, run_cli
) -> None:
    target = f"s3://{s3_bucket}/sharded"
    with S3Proxy(s3_server.endpoint) as proxy:
        env = {**s3_server.env, "AWS_ENDPOINT_URL": proxy.url}
        ok(run_cli(*mirror_args(channel_server.url, target), env=env))
        puts = proxy.puts()
        storage = S3Storage(target, env=s3_server.env)
        index = _unpack(storage.read(f"noarch/{SHARD_INDEX}") or b"")
        records: dict[str, dict] = {}
        for name, digest in index["shards"].items():
            data = storage.read(f"noarch/shards/{digest.hex()}.msgpack.zst") or b""
            assert hashlib.sha256(data).digest() == digest, name
            shard = _unpack(data)
            for key in ("packages", "packages.conda"):
                for fn, rec in shard[key].items():
                    records[fn] = {
                        k: v.hex() if isinstance(v, bytes) else v for k, v in rec.items()
                    }
        assert records == real_channel.records("noarch")
        # order: shards before the shard index, the shard index before repodata.json.zst
        noarch = [p for p in puts if "/noarch/" in p]
        first_index = min(i for i, p in enumerate(noarch) if p.endswith(SHARD_INDEX))
        last_shard = max(i for i, p in enumerate(noarch) if "/shards/" in p)
        zst = min(i for i, p in enumerate(noarch) if p.endswith("repodata.json.zst"))
        assert last_shard < first_index < zst, noarch
        proxy.requests.clear()
        ok(run_cli(*mirror_args(channel_server.url, target), env=env))
        assert proxy.puts() == []  # a no-op writes nothing
        # a patched record: one new shard
        real_channel.record("noarch", "dependent-2.0-0.conda")["depends"] = ["dependency >=2"]
        real_channel.write()
        proxy.requests.clear()
        result = ok(run_cli(*mirror_args(channel_server.url, target, "--json"), env=env))
        assert result.json()["subdirs"]["noarch"]["shards"]["written"] == 1
        assert len([p for p in proxy.puts() if "/shards/" in p]) == 1
    assert ok(run_cli("verify", target, env=s3_server.env)).returncode == 0
    digest = _unpack(storage.read(f"noarch/{SHARD_INDEX}") or b"")["shards"]["dependency"]
    storage.write_if_changed(f"noarch/shards/{digest.hex()}.msgpack.zst", b"tampered")
    bad = run_cli("verify", target, "--json", env=s3_server.env)
    assert bad.returncode == 4 and bad.json()["problems"][0]["kind"] == "shard-hash", str(bad)


def test_shard_grace_and_no_shards_on_s3(
    real_channel: Channel, channel_server, s3_server: S3Server, s3_bucket: str, run_cli
) -> None:
    """Retired shards go once the grace has passed; --no-shards removes the shard index at
    once and the shards on the next run after the grace, as on a folder."""
    target = f"s3://{s3_bucket}/grace"
    env = s3_server.env
    storage = S3Storage(target, env=env)

    def shard_objects() -> set[str]:
        return {o.relpath for o in storage.list() if "/shards/" in o.relpath}

    ok(run_cli(*mirror_args(channel_server.url, target), env=env))
    real_channel.record("noarch", "dependent-2.0-0.conda")["depends"] = ["dependency >=2"]
    real_channel.write()
    patched = ok(run_cli(*mirror_args(channel_server.url, target, "--json"), env=env)).json()
    assert patched["subdirs"]["noarch"]["shards"] == {"written": 1, "deleted": 0}
    before = shard_objects()
    noop = ok(run_cli(*mirror_args(channel_server.url, target, "--json", "--shard-grace", "0"),
                      env=env)).json()  # fmt: skip
    assert noop["subdirs"]["noarch"]["shards"] == {"written": 0, "deleted": 1}
    assert len(before - shard_objects()) == 1
    args = mirror_args(channel_server.url, target, "--no-shards", "--shard-grace", "0")
    ok(run_cli(*args, env=env))
    assert storage.read(f"noarch/{SHARD_INDEX}") is None
    assert shard_objects()  # a client holding the old index still gets its shards
    ok(run_cli(*args, env=env))
    assert shard_objects() == set()
    assert ok(run_cli("verify", target, env=env)).returncode == 0
