"""Untrusted repodata: hostile keys and absurd records are skipped, never joined into a path."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import (
    Channel,
    assert_consistent,
    disk_packages,
    index_records,
    md5_of,
    mirror_args,
    sha256_of,
)

PAYLOAD = b"hostile payload\n" * 20
LONG_NAME = "a" * 300 + "-1.0-0.conda"
HOSTILE_KEYS = {
    "../../x.conda": "packages.conda",
    "/etc/x.conda": "packages.conda",
    "a/b-1-0.conda": "packages.conda",
    "evil\x00-1.0-0.conda": "packages.conda",
    "x-1-0.zip": "packages",
    LONG_NAME: "packages.conda",
    "..\\..\\win-1.0-0.tar.bz2": "packages",
    ".hidden-1.0-0.conda": "packages.conda",
}
BAD_RECORDS = {
    "negative-1.0-0.conda": {"size": -1},
    "huge-1.0-0.conda": {"size": 10**15},
    "nohash-1.0-0.conda": {"sha256": ..., "md5": ...},
    "badhash-1.0-0.conda": {"sha256": "not-hex"},
}
GOOD = {"good-1.0-0.conda", "good-2.0-0.tar.bz2", "nosha-1.0-0.tar.bz2"}


def hostile_channel(channel: Channel) -> None:
    for filename in sorted(GOOD):
        extra = {"sha256": ...} if filename.startswith("nosha") else {}
        channel.add("linux-64", filename, filename.encode() * 50, **extra)
    for filename, fields in BAD_RECORDS.items():
        channel.add("linux-64", filename, PAYLOAD, **fields)
    doc = channel.doc("linux-64")
    for key, section in HOSTILE_KEYS.items():
        doc.setdefault(section, {})[key] = {
            "name": "x",
            "version": "1",
            "build": "0",
            "build_number": 0,
            "depends": [],
            "md5": md5_of(PAYLOAD),
            "sha256": sha256_of(PAYLOAD),
            "size": len(PAYLOAD),
            "subdir": "linux-64",
            "timestamp": 1700000000000,
        }
    # Give a path-traversal download something to fetch if an engine ever joined the key.
    (channel.root / "x.conda").write_bytes(PAYLOAD)
    channel.add("noarch", "fine-1.0-0.conda")
    channel.write()


def snapshot_outside(root: Path, exclude: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == exclude:
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != exclude]
        out |= {os.path.join(dirpath, f) for f in filenames}
        out |= {os.path.join(dirpath, d) for d in dirnames}
    return out


def run_hostile(gen_channel, url, tmp_path, run_cli):
    hostile_channel(gen_channel)
    target = tmp_path / "deep" / "mirror"
    target.parent.mkdir()
    before = snapshot_outside(tmp_path, target)
    result = run_cli(
        *mirror_args(url, target, "-s", "linux-64", "-s", "noarch", "--json", subdirs=False)
    )
    return target, before, result


def check_hostile(target, before, result, tmp_path):
    assert result.returncode == 0, str(result)
    report = result.json()
    rejected = report["rejected"]
    for key in [*HOSTILE_KEYS, *BAD_RECORDS]:
        assert key in rejected, f"{key!r} not rejected: {rejected}"
        assert rejected[key], f"no reason given for {key!r}"
    assert set(report["subdirs"]["linux-64"]["rejected"]) == set(rejected)
    assert report["failed"] == {}
    for key in [
        "../../x.conda",
        "/etc/x.conda",
        "a/b-1-0.conda",
        "x-1-0.zip",
        "negative-1.0-0.conda",
        "nohash-1.0-0.conda",
    ]:
        assert key in result.stderr, f"no warning on stderr naming {key!r}:\n{result.stderr}"
    # the rest mirrors
    assert disk_packages(target, "linux-64") == GOOD
    assert set(index_records(target, "linux-64")) == GOOD
    assert disk_packages(target, "noarch") == {"fine-1.0-0.conda"}
    assert_consistent(target)
    # nothing was created outside DIR, nor anywhere a hostile key points to
    assert snapshot_outside(tmp_path, target) == before
    assert not Path("/etc/x.conda").exists()
    assert not (target / "linux-64" / "a").exists()
    assert not (target / "x.conda").exists()
    inside = {p.name for p in (target / "linux-64").iterdir()}
    assert not [
        n
        for n in inside
        if n == "x.conda"
        or n.startswith("aaaa")
        or "hidden" in n
        or "win" in n
        or n.endswith(".zip")
    ], inside


def test_hostile_keys_are_rejected_over_http(gen_channel, serve, tmp_path, run_cli):
    server = serve(gen_channel.root)
    target, before, result = run_hostile(gen_channel, server.url, tmp_path, run_cli)
    check_hostile(target, before, result, tmp_path)
    fetched = {r.path for r in server.log() if r.method == "GET"}
    assert "/x.conda" not in fetched and "/etc/x.conda" not in fetched


def test_hostile_keys_are_rejected_over_file_url(gen_channel, tmp_path, run_cli):
    target, before, result = run_hostile(gen_channel, gen_channel.url, tmp_path, run_cli)
    check_hostile(target, before, result, tmp_path)


def test_hostile_subdir_option_is_refused(channel_server, tmp_path, run_cli):
    target = tmp_path / "mirror"
    result = run_cli(*mirror_args(channel_server.url, target, "-s", "../../evil", subdirs=False))
    assert result.returncode == 2, str(result)
    assert not (tmp_path / "evil").exists()
    assert "Traceback" not in result.output
