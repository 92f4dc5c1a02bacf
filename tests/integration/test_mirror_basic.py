"""Mirror a real channel over HTTP and check what gets published: a client can install from it,
records are unchanged, .zst == .json, the output is deterministic."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import zstandard

from tests.conftest import (
    REAL_SUBDIRS,
    Channel,
    assert_consistent,
    disk_packages,
    index_records,
    load_index,
    mirror_args,
    ok,
    published_subdirs,
    real_files,
    tree_bytes,
)
from tests.servers import ChannelServer


def test_rattler_installs_from_mirror(
    real_channel, channel_server, serve, mirror_dir, run_cli, rattler_install, tmp_path
):
    result = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert result.returncode == 0, str(result)
    channel_server.stop()  # the client must get everything from the mirror

    mirror = serve(mirror_dir)
    got = rattler_install(mirror.url, ["dependent", "_r-mutex"], tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.installed() == {"dependent-2.0-0", "dependency-2.0-0", "_r-mutex-1.0.1-anacondar_1"}
    fetched = {r.path for r in mirror.log() if r.method == "GET" and r.status == 200}
    assert {
        "/noarch/dependent-2.0-0.conda",
        "/noarch/dependency-2.0-0.conda",
        "/noarch/_r-mutex-1.0.1-anacondar_1.tar.bz2",
    } <= fetched
    upstream = real_channel.records("noarch")
    for rec in got.records:
        assert rec["sha256"] == upstream[rec["file_name"]]["sha256"]


def test_rattler_installs_older_pin_from_file_url_mirror(
    channel_server, mirror_dir, run_cli, rattler_install, tmp_path
):
    result = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert result.returncode == 0, str(result)
    got = rattler_install(mirror_dir.as_uri(), ["dependent=1.0"], tmp_path)
    assert got.returncode == 0, got.stderr
    assert "dependent-1.0-0" in got.installed()


def test_first_run_mirrors_every_package(real_channel, channel_server, mirror_dir, run_cli):
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--json"))
    assert result.returncode == 0, str(result)
    report = result.json()
    expected = real_files(real_channel)
    assert published_subdirs(mirror_dir) == sorted(REAL_SUBDIRS)
    for sub, files in expected.items():
        assert disk_packages(mirror_dir, sub) == files, sub
        assert set(index_records(mirror_dir, sub)) == files, sub
    assert sorted(report["added"]) == sorted(f for files in expected.values() for f in files)
    assert report["replaced"] == [] and report["deleted"] == []
    assert report["failed"] == {} and report["rejected"] == {}
    assert report["unchanged"] is False
    assert report["dry_run"] is False
    assert report["exit_code"] == 0 and not report["error"]
    assert Path(report["dir"]).resolve() == mirror_dir.resolve()
    assert set(report["subdirs"]) == set(REAL_SUBDIRS)
    for sub, files in expected.items():
        assert sorted(report["subdirs"][sub]["added"]) == sorted(files)
        assert report["subdirs"][sub]["packages"] == len(files)
    total = sum(r["size"] for sub in expected for r in real_channel.records(sub).values())
    assert report["bytes"] >= total
    assert_consistent(mirror_dir)


def test_default_subdirs_are_discovered(real_channel, channel_server, mirror_dir, run_cli):
    """Without -s every subdir upstream has is mirrored (here linux-64, osx-64, noarch)."""
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, subdirs=False))
    assert result.returncode == 0, str(result)
    assert published_subdirs(mirror_dir) == sorted(REAL_SUBDIRS)
    for sub, files in real_files(real_channel).items():
        assert disk_packages(mirror_dir, sub) == files


def test_records_published_unchanged(real_channel, channel_server, serve, mirror_dir, run_cli):
    noarch = real_channel.doc("noarch")
    # A hotfix: the package's own info/index.json says depends == ["dependency 2.0"]-ish; the
    # record upstream serves is patched and must be published as it is, never re-derived.
    patched = real_channel.record("noarch", "dependent-2.0-0.conda")
    patched["depends"] = ["dependency >=2.0,<3.0a0", "python-hotfix-marker"]
    patched["constrains"] = ["zlib <0"]
    patched["x_unknown_record_key"] = {"nested": [1, 2.5, None, "é"]}
    noarch["v3"] = {"whl": {"demo-1.0-py3-none-any.whl": {"name": "demo", "version": "1.0"}}}
    noarch["x_top_level"] = [1, 2, 3]
    noarch["removed"] = ["gone-1.0-0.tar.bz2"]
    # CEP-15: packages live under base_url; the mirror fetches them there and drops the key
    elsewhere = serve(real_channel.root)
    noarch["info"]["base_url"] = f"{elsewhere.url}/noarch/"
    noarch["repodata_version"] = 2
    noarch["info"]["x_info_key"] = "kept"
    real_channel.write()

    result = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert result.returncode == 0, str(result)

    for sub in REAL_SUBDIRS:
        upstream = json.loads((real_channel.root / sub / "repodata.json").read_bytes())
        published = load_index(mirror_dir, sub)
        assert published["packages"] == upstream["packages"], sub
        assert published["packages.conda"] == upstream["packages.conda"], sub
        assert published.get("removed") == upstream["removed"], sub
        if sub != "noarch":  # noarch had base_url, so its version may drop back to 1
            assert published.get("repodata_version") == upstream["repodata_version"], sub
        assert "base_url" not in published["info"], sub
        assert published["info"]["subdir"] == sub
        for key in set(upstream) - {"info", "repodata_version"}:
            assert published[key] == upstream[key], (sub, key)

    assert {r.path for r in elsewhere.log() if r.method == "GET"} == {
        f"/noarch/{f}" for f in real_channel.records("noarch")
    }
    published = load_index(mirror_dir, "noarch")
    assert published["v3"] == noarch["v3"]
    assert published["x_top_level"] == [1, 2, 3]
    assert published["info"].get("x_info_key") == "kept"
    record = published["packages.conda"]["dependent-2.0-0.conda"]
    assert record["depends"] == ["dependency >=2.0,<3.0a0", "python-hotfix-marker"]
    assert record["x_unknown_record_key"] == {"nested": [1, 2.5, None, "é"]}
    # timestamps exactly as upstream (ms ints stay ms ints)
    assert record["timestamp"] == patched["timestamp"]
    # the .tar.bz2 and .conda sections stay separate
    assert all(k.endswith(".tar.bz2") for k in published["packages"])
    assert all(k.endswith(".conda") for k in published["packages.conda"])


def test_zst_decompresses_to_the_json_bytes(channel_server, mirror_dir, run_cli):
    result = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert result.returncode == 0, str(result)
    for sub in REAL_SUBDIRS:
        raw = (mirror_dir / sub / "repodata.json").read_bytes()
        zst = (mirror_dir / sub / "repodata.json.zst").read_bytes()
        assert zstandard.ZstdDecompressor().decompressobj().decompress(zst) == raw, sub


def test_bz2_option_writes_same_bytes(channel_server, mirror_dir, run_cli):
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--bz2"))
    assert result.returncode == 0, str(result)
    for sub in REAL_SUBDIRS:
        raw = (mirror_dir / sub / "repodata.json").read_bytes()
        assert bz2.decompress((mirror_dir / sub / "repodata.json.bz2").read_bytes()) == raw


def test_output_is_deterministic(channel_server, tmp_path, run_cli):
    """Two mirrors of one upstream, with different concurrency, are byte-identical
    (test_local_upstream_forms compares file:// and path upstreams the same way)."""
    one, two = tmp_path / "one", tmp_path / "two"
    ok(run_cli(*mirror_args(channel_server.url, one)))
    ok(run_cli(*mirror_args(channel_server.url, two, "-j", "1")))
    first = tree_bytes(one)
    assert any(name.endswith("repodata.json.zst") for name in first)
    assert first == tree_bytes(two)


def test_channeldata_is_copied(real_channel, channel_server, mirror_dir, run_cli):
    channeldata = json.dumps(
        {
            "channeldata_version": 1,
            "packages": {"dependent": {"subdirs": ["noarch"], "version": "2.0"}},
            "subdirs": ["noarch"],
        }
    ).encode()
    (real_channel.root / "channeldata.json").write_bytes(channeldata)
    result = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert result.returncode == 0, str(result)
    assert (mirror_dir / "channeldata.json").read_bytes() == channeldata


def test_upstream_zst_is_preferred(real_channel, mirror_dir, run_cli):
    real_channel.write(zst=True)
    with ChannelServer(real_channel.root) as server:
        result = run_cli(*mirror_args(server.url, mirror_dir))
        assert result.returncode == 0, str(result)
        log = server.log()
    for sub in REAL_SUBDIRS:
        zst_gets = [r for r in log if r.path == f"/{sub}/repodata.json.zst" and r.method == "GET"]
        assert zst_gets and zst_gets[0].status == 200, sub
        assert not [r for r in log if r.path == f"/{sub}/repodata.json" and r.method == "GET"], sub
    assert_consistent(mirror_dir)


def test_index_published_as_upstream_wrote_it(real_channel, tmp_path, run_cli):
    """Nothing filtered, nothing of ours to change: upstream's JSON and .zst bytes are the
    published index. A zstd level asked for, or a filter, means our own encoding."""
    real_channel.write(zst=True)
    as_is, level, filtered = tmp_path / "as-is", tmp_path / "level", tmp_path / "filtered"
    with ChannelServer(real_channel.root) as server:
        ok(run_cli(*mirror_args(server.url, as_is)))
        ok(run_cli(*mirror_args(server.url, level, "--zstd-level", "19")))
        ok(run_cli(*mirror_args(server.url, filtered, "--exclude", "other-package")))
    for sub in REAL_SUBDIRS:
        upstream = real_channel.root / sub
        for name in ("repodata.json", "repodata.json.zst"):
            assert (as_is / sub / name).read_bytes() == (upstream / name).read_bytes(), sub
        raw = (level / sub / "repodata.json").read_bytes()
        assert raw == (upstream / "repodata.json").read_bytes(), sub
        zst = (level / sub / "repodata.json.zst").read_bytes()
        assert zst != (upstream / "repodata.json.zst").read_bytes(), sub
        assert zstandard.ZstdDecompressor().decompressobj().decompress(zst) == raw, sub
    assert (filtered / "linux-64" / "repodata.json").read_bytes() != (
        real_channel.root / "linux-64" / "repodata.json"
    ).read_bytes()
    assert "other-package-0.2-0.tar.bz2" not in index_records(filtered, "linux-64")
    for mirror in (as_is, level, filtered):
        assert_consistent(mirror)


def test_a_key_listed_twice_upstream_is_published_once(real_channel, tmp_path, run_cli):
    """A (buggy) upstream lists a package twice in a section, the copies apart. Clients may read
    such a document either way, so it is not published as it is: the mirror's index lists the
    package once, with the record msgspec and json.loads keep (the last)."""
    real_channel.write()
    path = real_channel.root / "noarch" / "repodata.json"
    doc = json.loads(path.read_bytes())
    key = max(("packages", "packages.conda"), key=lambda k: len(doc.get(k) or {}))
    section = doc[key]
    assert len(section) >= 2
    name = next(iter(section))
    entries = [f"{json.dumps(fn)}: {json.dumps(record)}" for fn, record in section.items()]
    entries.append(entries[0])  # the same record again, after the others
    rest = json.dumps({k: v for k, v in doc.items() if k != key})
    path.write_text(f"{rest[:-1]}, {json.dumps(key)}: {{{', '.join(entries)}}}}}")
    assert path.read_text().count(json.dumps(name) + ":") == 2
    mirror = tmp_path / "mirror"
    with ChannelServer(real_channel.root) as server:
        ok(run_cli(*mirror_args(server.url, mirror, "-s", "noarch", subdirs=False)))
    published = (mirror / "noarch" / "repodata.json").read_text()
    assert published.count(json.dumps(name) + ":") == 1
    assert json.loads(published)[key][name] == section[name]
    assert_consistent(mirror)


def test_an_info_listed_twice_upstream_loses_its_base_url(real_channel, tmp_path, run_cli):
    """An upstream writes `info` twice, the first with a base_url (pointing clients at
    upstream's files). Parsers keep the last; the mirror's index must hold no base_url at all,
    so it is written again, not published as it is."""
    real_channel.write()
    path = real_channel.root / "noarch" / "repodata.json"
    doc = json.loads(path.read_bytes())
    rest = json.dumps({k: v for k, v in doc.items() if k != "info"})
    first = json.dumps({"subdir": "noarch", "base_url": "https://upstream.invalid/files"})
    path.write_text(f'{{"info": {first}, "info": {json.dumps(doc["info"])}, {rest[1:]}')
    assert json.loads(path.read_bytes())["info"] == doc["info"]
    mirror = tmp_path / "mirror"
    with ChannelServer(real_channel.root) as server:
        ok(run_cli(*mirror_args(server.url, mirror, "-s", "noarch", subdirs=False)))
    published = (mirror / "noarch" / "repodata.json").read_text()
    assert "base_url" not in published and "upstream.invalid" not in published
    assert json.loads(published)["info"]["subdir"] == "noarch"
    assert_consistent(mirror)


def test_generated_channel_with_md5_only_record(gen_channel: Channel, serve, mirror_dir, run_cli):
    gen_channel.add("linux-64", "md5only-1.0-0.tar.bz2", b"x" * 1000, sha256=...)
    gen_channel.add("linux-64", "both-1.0-0.conda", b"y" * 1000)
    gen_channel.add("noarch", "pure-1.0-0.conda", b"z" * 10)
    gen_channel.write()
    server = serve(gen_channel.root)
    result = run_cli(
        *mirror_args(server.url, mirror_dir, "-s", "linux-64", "-s", "noarch", subdirs=False)
    )
    assert result.returncode == 0, str(result)
    assert disk_packages(mirror_dir, "linux-64") == {"md5only-1.0-0.tar.bz2", "both-1.0-0.conda"}
    assert disk_packages(mirror_dir, "noarch") == {"pure-1.0-0.conda"}
    assert "sha256" not in index_records(mirror_dir, "linux-64")["md5only-1.0-0.tar.bz2"]
    assert_consistent(mirror_dir)
