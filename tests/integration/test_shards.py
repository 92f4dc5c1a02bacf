"""Sharded repodata (CEP-16) in mirror trees: what py-rattler reads through them, incremental
writes, the grace period, --no-shards, verify, and the invariant under kill -9."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import zstandard

from tests.conftest import (
    REAL_SUBDIRS,
    assert_consistent,
    index_records,
    mirror_args,
    ok,
    tree_bytes,
    tree_stat,
)
from tests.servers import ChannelServer
from tests.shard_support import (
    SHARD_INDEX,
    client_records,
    read_index,
    shard_problems,
    shard_records,
    unpack,
)


def shard_files(root: Path, subdir: str) -> set[str]:
    folder = root / subdir / "shards"
    return {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()


def test_rattler_installs_through_shards_only(
    channel_server, serve, mirror_dir, run_cli, rattler_install, tmp_path
):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    channel_server.stop()
    mirror = serve(mirror_dir)
    got = rattler_install(mirror.url, ["dependent", "_r-mutex"], tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.installed() == {"dependent-2.0-0", "dependency-2.0-0", "_r-mutex-1.0.1-anacondar_1"}
    paths = [r.path for r in mirror.log()]
    assert "/noarch/repodata_shards.msgpack.zst" in paths
    assert "/linux-64/repodata_shards.msgpack.zst" in paths
    assert sum(1 for p in paths if "/shards/" in p) >= 3, paths
    assert not [p for p in paths if "repodata.json" in p], paths
    assert all(r.status == 200 for r in mirror.log()), [(r.path, r.status) for r in mirror.log()]


def test_records_through_shards_equal_repodata(
    real_channel, channel_server, serve, mirror_dir, run_cli, tmp_path
):
    # a name with both formats, a patched record and a `removed` entry
    real_channel.doc("noarch")["removed"] = ["dependent-0.5-0.conda", "gone-1.0-0.conda"]
    real_channel.write()
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    mirror = serve(mirror_dir)
    for subdir in REAL_SUBDIRS:
        published = index_records(mirror_dir, subdir)
        assert shard_records(mirror_dir, subdir) == published
        names = sorted({fn.rsplit("-", 2)[0] for fn in published})
        mirror.clear_log()
        via_shards = client_records(mirror.url, tmp_path, True, subdir, names)
        assert any("/shards/" in r.path for r in mirror.log())
        assert not [r.path for r in mirror.log() if "repodata.json" in r.path]
        via_json = client_records(mirror.url, tmp_path, False, subdir, names)
        assert sorted(via_shards) == sorted(published)
        # rattler drops a .tar.bz2 from repodata.json when the .conda of it is listed too
        assert via_json and all(via_shards[fn] == rec for fn, rec in via_json.items())
        dropped = sorted(set(via_shards) - set(via_json))
        assert all(fn[: -len(".tar.bz2")] + ".conda" in via_json for fn in dropped), dropped
    index = read_index(mirror_dir, "noarch")
    assert index is not None
    info = index["info"]
    assert info["base_url"] == "./" and info["shards_base_url"] == "./shards/"
    assert isinstance(info["created_at"], str) and info["created_at"].endswith("Z")
    assert all(isinstance(d, bytes) and len(d) == 32 for d in index["shards"].values())
    assert "gone" not in index["shards"]  # listed only in `removed`: no shard
    dependent = index["shards"]["dependent"].hex()
    shard = unpack((mirror_dir / "noarch" / "shards" / f"{dependent}.msgpack.zst").read_bytes())
    assert shard["removed"] == ["dependent-0.5-0.conda"]
    record = shard["packages.conda"]["dependent-2.0-0.conda"]
    assert len(record["sha256"]) == 32 and len(record["md5"]) == 16
    # zstd frames carry their content size (Python's zstandard.decompress needs it)
    for path in (mirror_dir / "noarch").rglob("*.msgpack.zst"):
        assert zstandard.frame_content_size(path.read_bytes()) > 0


def test_incremental_patch_noop_and_grace(
    real_channel, channel_server, mirror_dir, run_cli, tmp_path
):
    first = ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))).json()
    written = sum(s["shards"]["written"] for s in first["subdirs"].values())
    names = sum(len(read_index(mirror_dir, s)["shards"]) for s in REAL_SUBDIRS)
    assert written == names
    before = tree_stat(mirror_dir)
    again = ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))).json()
    assert again["unchanged"] and tree_stat(mirror_dir) == before  # a no-op writes nothing
    old_shards = shard_files(mirror_dir, "noarch")
    old_dependent = read_index(mirror_dir, "noarch")["shards"]["dependent"].hex()
    # upstream patches depends: same file, new record
    real_channel.record("noarch", "dependent-2.0-0.conda")["depends"] = ["dependency >=2"]
    real_channel.write()
    patched = ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))).json()
    assert patched["subdirs"]["noarch"]["shards"] == {"written": 1, "deleted": 0}
    assert patched["subdirs"]["linux-64"]["shards"]["written"] == 0
    assert shard_records(mirror_dir, "noarch") == index_records(mirror_dir, "noarch")
    assert shard_records(mirror_dir, "noarch")["dependent-2.0-0.conda"]["depends"] == [
        "dependency >=2"
    ]
    # the old shard stays for the grace period (default 15m), through a no-op run too
    assert f"{old_dependent}.msgpack.zst" in shard_files(mirror_dir, "noarch")
    assert old_shards <= shard_files(mirror_dir, "noarch")
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    assert f"{old_dependent}.msgpack.zst" in shard_files(mirror_dir, "noarch")
    # with --shard-grace 0 the next run (a no-op) deletes it, and nothing else
    noop = ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--shard-grace", "0", "--json")))
    assert noop.json()["subdirs"]["noarch"]["shards"]["deleted"] == 1
    assert f"{old_dependent}.msgpack.zst" not in shard_files(mirror_dir, "noarch")
    assert not shard_problems(mirror_dir)
    assert ok(run_cli("verify", str(mirror_dir))).returncode == 0


def test_no_shards_removes_index_then_shards(channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    assert shard_files(mirror_dir, "noarch")
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--no-shards", "--shard-grace", "0")))
    assert not (mirror_dir / "noarch" / SHARD_INDEX).exists()
    assert shard_files(mirror_dir, "noarch")  # clients holding the old index still get them
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--no-shards", "--shard-grace", "0")))
    assert not shard_files(mirror_dir, "noarch")
    assert_consistent(mirror_dir)
    # and back on: everything is written again
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    assert shard_records(mirror_dir, "noarch") == index_records(mirror_dir, "noarch")


def test_no_shards_from_config(channel_server, mirror_dir, run_cli, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        f'[[mirror]]\nurl = "{channel_server.url}"\ndir = "{mirror_dir}"\n'
        'subdirs = ["noarch"]\nshards = false\nshard_grace = "1h"\n'
    )
    ok(run_cli("mirror", "--config", str(config)))
    assert (mirror_dir / "noarch" / "repodata.json").exists()
    assert not (mirror_dir / "noarch" / SHARD_INDEX).exists()
    assert not shard_files(mirror_dir, "noarch")
    bad = run_cli(*mirror_args(channel_server.url, mirror_dir, "--shard-grace", "soon"))
    assert bad.returncode == 2, str(bad)


def test_shards_follow_filters_and_failures(fault_server, mirror_dir, run_cli):
    fault_server.fault("/noarch/dependency-1.0-0.conda", "500", times=None)
    result = run_cli(*mirror_args(fault_server.url, mirror_dir, "--exclude", "python", "--json"))
    assert result.returncode == 1, str(result)
    for subdir in REAL_SUBDIRS:
        assert shard_records(mirror_dir, subdir) == index_records(mirror_dir, subdir)
    noarch = shard_records(mirror_dir, "noarch")
    assert "dependency-1.0-0.conda" not in noarch and "dependency-2.0-0.conda" in noarch
    assert "python" not in read_index(mirror_dir, "noarch")["shards"]
    assert not shard_problems(mirror_dir)


def test_verify_checks_shards(channel_server, mirror_dir, run_cli, tmp_path):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    assert ok(run_cli("verify", str(mirror_dir))).returncode == 0
    index = read_index(mirror_dir, "noarch")
    folder = mirror_dir / "noarch" / "shards"
    dependent = folder / f"{index['shards']['dependent'].hex()}.msgpack.zst"
    dependency = folder / f"{index['shards']['dependency'].hex()}.msgpack.zst"
    saved = dependent.read_bytes()
    dependent.write_bytes(dependency.read_bytes())  # another shard's bytes: wrong hash
    result = run_cli("verify", str(mirror_dir), "--json")
    assert result.returncode == 4, str(result)
    assert {p["kind"] for p in result.json()["problems"]} == {"shard-hash"}
    dependent.unlink()
    result = run_cli("verify", str(mirror_dir), "--json")
    assert result.returncode == 4 and result.json()["problems"][0]["kind"] == "shard-missing"
    dependent.write_bytes(saved)
    # an old orphan is a warning, not a problem
    orphan = folder / ("ab" * 32 + ".msgpack.zst")
    orphan.write_bytes(saved)
    import os

    os.utime(orphan, (time.time() - 3600, time.time() - 3600))
    result = run_cli("verify", str(mirror_dir), "--json")
    assert result.returncode == 0, str(result)
    assert any("orphan" in w for w in result.json()["warnings"])
    # a shard index that does not decode
    (mirror_dir / "noarch" / SHARD_INDEX).write_bytes(b"not zstd")
    result = run_cli("verify", str(mirror_dir), "--json")
    assert result.returncode == 4 and result.json()["problems"][0]["kind"] == "shard-index"


def test_deterministic_across_fresh_mirrors(channel_server, tmp_path, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, tmp_path / "a")))
    time.sleep(0.05)
    ok(run_cli(*mirror_args(channel_server.url, tmp_path / "b")))
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_kill9_with_polling_reader_keeps_invariant(
    real_channel, channel_server, mirror_dir, run_cli, start_cli, tmp_path
):
    """kill -9 at random moments of runs that re-upload, patch, add and remove, while a reader
    polls the tree: the shard invariant holds at every look, and the next run completes."""
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    rng = random.Random(16)
    problems: list[str] = []
    stop = threading.Event()
    looks = [0]

    def poll() -> None:
        while not stop.is_set():
            try:
                found = shard_problems(mirror_dir)
            except FileNotFoundError:
                continue  # a file vanished between listing and reading: look again
            looks[0] += 1
            problems.extend(found)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        for round_ in range(6):
            target = "dependent-2.0-0.conda" if round_ % 2 else "dependency-2.0-0.conda"
            real_channel.reupload("noarch", target, f"upload {round_} ".encode() * 500)
            real_channel.record("noarch", "dependent-1.0-0.conda")["depends"] = [f"x{round_}"]
            real_channel.add("noarch", f"extra{round_}-1.0-0.conda")
            real_channel.write()
            run = start_cli(*mirror_args(channel_server.url, mirror_dir, "--shard-grace", "0"))
            time.sleep(rng.uniform(0.05, 0.9))
            if run.alive():
                run.kill9()
            else:
                run.wait()
            assert not problems, problems[:5]
    finally:
        stop.set()
        reader.join(10)
    assert looks[0] > 0
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    assert not shard_problems(mirror_dir)
    assert_consistent(mirror_dir)
    for subdir in REAL_SUBDIRS:
        assert shard_records(mirror_dir, subdir) == index_records(mirror_dir, subdir)
    assert ok(run_cli("verify", str(mirror_dir))).returncode == 0


def test_shards_served_by_plain_http_with_token_prefix(
    channel_server, mirror_dir, run_cli, tmp_path
):
    """Relative base_url/shards_base_url: the same tree works under any prefix."""
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    with ChannelServer(mirror_dir, token="s3cret") as server:
        url = f"{server.url}/t/s3cret"
        got = client_records(url, tmp_path, True, "noarch", ["dependent"])
        assert sorted(got) == ["dependent-1.0-0.conda", "dependent-2.0-0.conda"]
        assert all(r["url"].startswith(url + "/noarch/") for r in got.values()), got
        assert any("/shards/" in r.path for r in server.log())
        assert json.dumps(got)  # plain JSON


def test_index_writes_shards_incrementally(tmp_path, run_cli, serve):
    import shutil

    from tests.conftest import REAL_CHANNEL

    root = tmp_path / "own"
    shutil.copytree(REAL_CHANNEL, root)
    for subdir in REAL_SUBDIRS:
        (root / subdir / "repodata.json").unlink()
    ok(run_cli("index", str(root)))
    for subdir in REAL_SUBDIRS:
        assert shard_records(root, subdir) == index_records(root, subdir)
    before = tree_stat(root)
    ok(run_cli("index", str(root)))
    assert tree_stat(root) == before  # nothing changed: nothing written
    old = shard_files(root, "noarch")
    (root / "noarch" / "dependent-1.0-0.conda").unlink()
    ok(run_cli("index", str(root)))
    new = shard_files(root, "noarch")
    assert len(new - old) == 1  # only the shard of `dependent` was written again
    assert shard_records(root, "noarch") == index_records(root, "noarch")
    assert "dependent-1.0-0.conda" not in shard_records(root, "noarch")
    assert ok(run_cli("verify", str(root))).returncode == 0
    server = serve(root)
    got = client_records(server.url, tmp_path, True, "noarch", ["dependent", "dependency"])
    assert sorted(got) == [
        "dependency-1.0-0.conda",
        "dependency-2.0-0.conda",
        "dependent-2.0-0.conda",
    ]
    assert not [r.path for r in server.log() if "repodata.json" in r.path]


def test_a_damaged_shard_index_is_rewritten_by_the_next_run(channel_server, mirror_dir, run_cli):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    path = mirror_dir / "noarch" / SHARD_INDEX
    good = path.read_bytes()
    with open(path, "r+b") as fh:  # in place: the folder's mtime stays as it was
        fh.write(b"\0" * 16)
    assert run_cli("verify", str(mirror_dir)).returncode == 4
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    assert path.read_bytes() == good
    assert ok(run_cli("verify", str(mirror_dir))).returncode == 0


def _sections(names: dict[str, int], patch: str = "") -> dict[str, dict[str, bytes]]:
    """Records for `names` (name -> how many), as the raw JSON a mirror run groups."""
    out: dict[str, dict[str, bytes]] = {"packages": {}, "packages.conda": {}}
    for name, count in names.items():
        for i in range(count):
            fn = f"{name}-{i}.0-h{i}_0.conda"
            doc = {"name": name, "version": f"{i}.0", "build": f"h{i}_0", "build_number": 0,
                   "size": 10 + i, "sha256": f"{i:064x}", "md5": f"{i:032x}",
                   "depends": [patch] if patch else [], "timestamp": 1700000000000 + i}  # fmt: skip
            out["packages.conda"][fn] = json.dumps(doc).encode()
    return out


def _fresh(sections: dict[str, dict[str, bytes]], name: str, leave_out: set[str]) -> bytes:
    from condasync.channel.shardencode import build_shard
    from condasync.channel.shards import NameRecords

    records = {
        fn: raw
        for fn, raw in sections["packages.conda"].items()
        if fn.startswith(f"{name}-") and fn not in leave_out
    }
    return build_shard(NameRecords({}, records)).data


def test_staged_shards_are_published_in_order_and_interim_ones_match(tmp_path: Path) -> None:
    """New shard files wait in the staging folder until an index about to name them is
    published; the interim shards (without the files about to be replaced, nor those whose
    download failed) are byte for byte a fresh encoding of their records."""
    import hashlib

    from condasync.engine.shardsync import SubdirShards
    from condasync.storage import open_storage

    storage = open_storage(str(tmp_path))
    first = _sections({"alpha": 3, "beta": 4, "gamma": 2})
    run = SubdirShards(storage, "noarch", True, 0.0)
    run.prepare_sections(first, [])
    run.publish_final()
    run.finish()
    before = shard_files(tmp_path, "noarch")
    assert len(before) == 3 and not (tmp_path / "noarch/shards/.condasync-tmp").exists()

    second = _sections({"alpha": 3, "beta": 5, "gamma": 2}, patch="x >=1")  # all three change
    replaced = {"beta-1.0-h1_0.conda", "beta-2.0-h2_0.conda", "alpha-0.0-h0_0.conda"}
    run = SubdirShards(storage, "noarch", True, 0.0)
    run.prepare_sections(second, [], replaced)
    assert run.pub.stager is not None
    for future in run.pub.stager.pending.values():
        future.result()  # written by the writer threads
    assert shard_files(tmp_path, "noarch") == before  # staged, not yet in place
    staged = list((tmp_path / "noarch/shards/.condasync-tmp").iterdir())
    assert len(staged) == 5  # 3 final shards, 2 interim ones (alpha, beta)
    failed = {"beta-2.0-h2_0.conda", "beta-4.0-h4_0.conda"}  # a replacement and an addition
    run.drop(failed)
    run.publish_interim(replaced - failed)
    interim = read_index(tmp_path, "noarch")["shards"]
    for name in ("alpha", "beta"):
        data = (tmp_path / f"noarch/shards/{interim[name].hex()}.msgpack.zst").read_bytes()
        assert hashlib.sha256(data).digest() == interim[name]
        assert data == _fresh(second, name, replaced | failed)
    gamma = (tmp_path / f"noarch/shards/{interim['gamma'].hex()}.msgpack.zst").read_bytes()
    assert gamma == _fresh(second, "gamma", set())  # not replaced: its final shard already
    run.publish_final()
    final = read_index(tmp_path, "noarch")["shards"]
    beta = (tmp_path / f"noarch/shards/{final['beta'].hex()}.msgpack.zst").read_bytes()
    assert beta == _fresh(second, "beta", failed)
    run.finish()
    assert not (tmp_path / "noarch/shards/.condasync-tmp").exists()
    named = {f"{d.hex()}.msgpack.zst" for d in final.values()}
    # the interim shards and the first run's are retired, nothing else is left unnamed
    retired = json.loads((tmp_path / ".condasync/noarch.shards-retired.json").read_bytes())
    assert shard_files(tmp_path, "noarch") - named == {
        f"{h}.msgpack.zst" for h in retired["shards"]
    }


def test_a_killed_runs_staged_shards_are_cleared(tmp_path: Path) -> None:
    from condasync.engine.shardsync import SubdirShards
    from condasync.storage import open_storage

    storage = open_storage(str(tmp_path))
    staging = tmp_path / "noarch/shards/.condasync-tmp"
    staging.mkdir(parents=True)
    (staging / f"{'ab' * 32}.msgpack.zst.killed.1").write_bytes(b"half a shard")
    run = SubdirShards(storage, "noarch", True, 0.0)
    run.prepare_sections(_sections({"alpha": 2}), [])
    run.publish_final()
    run.finish()
    assert not staging.exists()
    (name,) = shard_files(tmp_path, "noarch")
    assert name == f"{read_index(tmp_path, 'noarch')['shards']['alpha'].hex()}.msgpack.zst"


def test_verify_finds_a_shard_whose_records_differ_from_repodata(
    channel_server, mirror_dir, run_cli
):
    """A shard that hashes to its name but no longer holds repodata.json's records for its
    name (here repodata.json and its .zst patched behind the mirror's back): exit 4."""
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    path = mirror_dir / "noarch" / "repodata.json"
    doc = json.loads(path.read_bytes())
    doc["packages.conda"]["dependent-2.0-0.conda"]["depends"] = ["patched"]
    data = json.dumps(doc).encode()
    path.write_bytes(data)
    (mirror_dir / "noarch" / "repodata.json.zst").write_bytes(zstandard.compress(data))
    result = run_cli("verify", str(mirror_dir), "--json")
    assert result.returncode == 4, str(result)
    problems = result.json()["problems"]
    assert [(p["subdir"], p["kind"]) for p in problems] == [("noarch", "shard-records")]
    assert "dependent-2.0-0.conda" in problems[0]["detail"]


def test_kept_removed_records_are_in_the_shards_too(
    real_channel, channel_server, mirror_dir, run_cli
):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    real_channel.remove("noarch", "dependent-1.0-0.conda")
    real_channel.write()
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--keep-removed")))
    assert "dependent-1.0-0.conda" in index_records(mirror_dir, "noarch")
    assert shard_records(mirror_dir, "noarch") == index_records(mirror_dir, "noarch")
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--max-delete", "100")))
    assert "dependent-1.0-0.conda" not in shard_records(mirror_dir, "noarch")
    assert shard_records(mirror_dir, "noarch") == index_records(mirror_dir, "noarch")
    assert not shard_problems(mirror_dir)


def test_shard_grace_counts_from_when_the_index_was_replaced(
    real_channel, channel_server, mirror_dir, run_cli
):
    """An old shard file retired just now stays for the grace period (its age does not
    count), and goes on the first run after the grace has passed."""
    import os

    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    old = read_index(mirror_dir, "noarch")["shards"]["dependent"].hex()
    path = mirror_dir / "noarch" / "shards" / f"{old}.msgpack.zst"
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    real_channel.record("noarch", "dependent-2.0-0.conda")["depends"] = ["dependency >=2"]
    real_channel.write()
    patched = ok(run_cli(*mirror_args(channel_server.url, mirror_dir, "--json", "--shard-grace",
                                      "30m"))).json()  # fmt: skip
    assert patched["subdirs"]["noarch"]["shards"] == {"written": 1, "deleted": 0}
    assert path.exists()
    time.sleep(2.2)
    done = ok(
        run_cli(*mirror_args(channel_server.url, mirror_dir, "--json", "--shard-grace", "2s"))
    )
    assert done.json()["subdirs"]["noarch"]["shards"] == {"written": 0, "deleted": 1}
    assert not path.exists()


def test_changed_names_found_in_upstreams_bytes_publish_the_same_shards(tmp_path: Path) -> None:
    """A mirror publishing every upstream record finds the changed names in upstream's bytes
    (shardruns): the same shard files and indexes, interim ones included, as grouping the
    parsed records, through a change with replacements and a failed download."""

    def runs(run: Any, index: Any, replace: set[str]) -> None:
        run.prepare(index, None, set(), {}, replace, index.order)
        assert run.groups.__class__.__name__ == "RunGroups"

    def parsed(run: Any, index: Any, replace: set[str]) -> None:
        run.prepare_sections(index.sections, index.removed, replace)

    assert _shard_runs(tmp_path, "runs", runs) == _shard_runs(tmp_path, "parsed", parsed)


def _shard_runs(
    tmp_path: Path, how: str, prepare: Any
) -> tuple[list[bytes], set[str], list[dict[str, int]]]:
    """Two runs of SubdirShards over one tree (the second with replacements and a failed
    download), `prepare(run, index, replace)` preparing each: the indexes published, the
    shard files left, and the files each run wrote."""
    from condasync.channel.bigindex import parse_index
    from condasync.engine.shardsync import SubdirShards
    from condasync.storage import open_storage

    def body(sections: dict[str, dict[str, bytes]]) -> bytes:
        doc = {k: {fn: json.loads(r) for fn, r in v.items()} for k, v in sections.items()}
        return json.dumps({"info": {"subdir": "noarch"}, **doc}, indent=1).encode()

    first = _sections({"alpha": 3, "beta": 4, "gamma": 2, "delta": 1})
    second = _sections({"alpha": 3, "beta": 5, "gamma": 2, "delta": 1}, patch="x >=1")
    second["packages.conda"]["delta-0.0-h0_0.conda"] = first["packages.conda"][
        "delta-0.0-h0_0.conda"
    ]
    replaced = {"beta-1.0-h1_0.conda", "alpha-0.0-h0_0.conda"}
    storage = open_storage(str(tmp_path / how))
    seen: list[bytes] = []
    counts = []
    for sections, replace, failed in (
        (first, set(), set()),
        (second, replaced, {"beta-4.0-h4_0.conda"}),
    ):
        index = parse_index(body(sections), "noarch")
        run = SubdirShards(storage, "noarch", True, 0.0)
        prepare(run, index, replace)
        run.drop(failed)
        if replace:
            run.publish_interim(replace)
            seen.append((tmp_path / how / "noarch" / SHARD_INDEX).read_bytes())
        run.publish_final()
        seen.append((tmp_path / how / "noarch" / SHARD_INDEX).read_bytes())
        run.finish()
        counts.append({"written": run.files_written})
    assert not (tmp_path / how / "noarch/shards/.condasync-tmp").exists()
    return seen, shard_files(tmp_path / how, "noarch"), counts


def test_shards_prepared_in_a_forked_child_are_the_same(tmp_path: Path, monkeypatch) -> None:
    """`condasync mirror` prepares shards in a forked child (engine/forked.py): the run takes
    its result over and publishes the same indexes and files as preparing in process; a
    child that fails leaves the work to the parent, with the same outcome."""
    import os

    from condasync.engine.shardsync import SubdirShards

    children: list[int] = []

    def here(run: Any, index: Any, replace: set[str]) -> None:
        run.begin(index, None, {}, replace, index.order, apart=False)
        run.complete()
        assert run.groups is not None

    def forked(run: Any, index: Any, replace: set[str]) -> None:
        run.begin(index, None, {}, replace, index.order, apart=True)
        (child,) = run._children
        assert child.pid not in (0, os.getpid())
        children.append(child.pid)
        run.complete()
        assert run.groups is None  # the child's result, taken over
        assert run.final is not None and run.final.names

    def split(run: Any, index: Any, replace: set[str]) -> None:
        run.begin(index, None, {}, replace, index.order, apart=True, parts=2)
        assert len(run._children) == 2
        run.complete()
        assert run.groups is None  # both shares, merged

    expected = _shard_runs(tmp_path, "here", here)
    assert _shard_runs(tmp_path, "forked", forked) == expected
    assert len(set(children)) == 2
    assert _shard_runs(tmp_path, "split", split) == expected

    def fails(self: Any, part: int, parts: int) -> Any:
        raise OSError("the child's disk is full")

    monkeypatch.setattr(SubdirShards, "_in_child", fails)

    def falls_back(run: Any, index: Any, replace: set[str]) -> None:
        run.begin(index, None, {}, replace, index.order, apart=True)
        assert run._children
        run.complete()
        assert run.groups is not None  # prepared here after all

    assert _shard_runs(tmp_path, "fallback", falls_back) == expected


def test_a_cancelled_child_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    """A run that fails during its downloads kills the child preparing shards; nothing it
    staged stays, and the parent does not prepare them itself."""
    import os

    from condasync.channel.bigindex import parse_index
    from condasync.engine.shardsync import SubdirShards
    from condasync.storage import open_storage

    started = tmp_path / "started"

    def slow(self: Any, part: int, parts: int) -> Any:
        started.write_text("1")
        time.sleep(60)

    monkeypatch.setattr(SubdirShards, "_in_child", slow)
    storage = open_storage(str(tmp_path / "tree"))
    doc = {k: {fn: json.loads(r) for fn, r in v.items()} for k, v in
           _sections({"alpha": 2}).items()}  # fmt: skip
    index = parse_index(json.dumps({"info": {"subdir": "noarch"}, **doc}).encode(), "noarch")
    run = SubdirShards(storage, "noarch", True, 0.0)
    run.begin(index, None, {}, set(), index.order, apart=True)
    (child,) = run._children
    pid = child.pid
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists()
    waiting = threading.Thread(target=run.complete)  # as the run: waiting in a thread
    waiting.start()
    clock = time.monotonic()
    run.cancel()
    waiting.join(10)
    assert not waiting.is_alive() and time.monotonic() - clock < 5
    assert run.final is None
    run.discard()
    assert not (tmp_path / "tree/noarch/shards").exists() or not any(
        (tmp_path / "tree/noarch/shards").iterdir()
    )
    try:
        os.kill(pid, 0)  # reaped: no such process any more
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"child {pid} still exists")
