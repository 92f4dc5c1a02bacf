"""What gets mirrored: --include/--exclude MatchSpecs, --latest, --exclude-newer, -s, URL forms."""

from __future__ import annotations

import pytest

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

DEPENDEN = {
    "dependency-1.0-0.conda",
    "dependency-2.0-0.conda",
    "dependent-1.0-0.conda",
    "dependent-2.0-0.conda",
}


def mirrored(root) -> dict[str, set[str]]:
    """subdir -> files on disk; asserts the index lists exactly the files on disk."""
    out = {}
    for sub in REAL_SUBDIRS:
        on_disk = disk_packages(root, sub)
        indexed = (
            set(index_records(root, sub)) if (root / sub / "repodata.json").exists() else set()
        )
        assert on_disk == indexed, (sub, on_disk ^ indexed)
        out[sub] = on_disk
    return out


def _all(real_channel: Channel) -> dict[str, set[str]]:
    return real_files(real_channel)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(
            ["--include", "dependen*"],
            lambda all_: {"linux-64": set(), "osx-64": set(), "noarch": DEPENDEN},
            id="include-glob",
        ),
        pytest.param(
            ["--exclude", "dependen*"],
            lambda all_: {s: f - DEPENDEN for s, f in all_.items()},
            id="exclude-glob",
        ),
        pytest.param(
            ["--include", "dependen*", "--exclude", "dependency"],
            lambda all_: {
                "linux-64": set(),
                "osx-64": set(),
                "noarch": {"dependent-1.0-0.conda", "dependent-2.0-0.conda"},
            },
            id="include-and-exclude",
        ),
        pytest.param(
            ["--include", "dependent >=2", "--include", "zlib"],
            lambda all_: {
                "linux-64": {"zlib-1.2.11-h7b6447c_3.conda", "zlib-1.2.11-h7b6447c_3.tar.bz2"},
                "osx-64": {"zlib-1.2.11-h1de35cc_3.conda", "zlib-1.2.11-h1de35cc_3.tar.bz2"},
                "noarch": {"dependent-2.0-0.conda"},
            },
            id="include-version-spec-twice",
        ),
        pytest.param(
            ["--latest", "1"],
            lambda all_: {
                s: f - {"dependency-1.0-0.conda", "dependent-1.0-0.conda"} for s, f in all_.items()
            },
            id="latest-1",
        ),
        pytest.param(
            ["--exclude-newer", "2019-01-01"],
            lambda all_: {
                "linux-64": {"zlib-1.2.11-h7b6447c_3.conda", "zlib-1.2.11-h7b6447c_3.tar.bz2"},
                "osx-64": all_["osx-64"],
                "noarch": {
                    "conda-forge-repodata-patches-20180828-0.tar.bz2",
                    "conda-index-pkg-a-1.0-pyhed9eced_1.tar.bz2",
                },
            },
            id="exclude-newer-date",
        ),
    ],
)
def test_filters_select_packages(
    real_channel, channel_server, mirror_dir, run_cli, options, expected
):
    want = expected(_all(real_channel))
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, *options, "--json"))
    assert result.returncode == 0, str(result)
    assert mirrored(mirror_dir) == want
    report = result.json()
    assert sorted(report["added"]) == sorted(f for files in want.values() for f in files)
    for sub in REAL_SUBDIRS:
        upstream = real_channel.records(sub)
        assert report["subdirs"][sub]["filtered"] == len(upstream) - len(want[sub]), sub
        # filtered records are still published unchanged
        for name, record in index_records(mirror_dir, sub).items():
            assert record == upstream[name]
    # nothing filtered out was downloaded
    skipped = {f"/{s}/{f}" for s, files in _all(real_channel).items() for f in files - want[s]}
    assert not [r.path for r in channel_server.log() if r.path in skipped and r.method == "GET"]
    assert_consistent(mirror_dir)


def test_exclude_newer_duration(gen_channel, serve, mirror_dir, run_cli):
    import time

    now_ms = int(time.time() * 1000)
    gen_channel.add("noarch", "old-1.0-0.conda", timestamp=now_ms - 30 * 86400 * 1000)
    gen_channel.add("noarch", "fresh-1.0-0.conda", timestamp=now_ms - 3600 * 1000)
    gen_channel.add("noarch", "seconds-1.0-0.conda", timestamp=(now_ms // 1000) - 20 * 86400)
    gen_channel.write()
    server = serve(gen_channel.root)
    result = run_cli(
        *mirror_args(server.url, mirror_dir, "--exclude-newer", "7d", "-s", "noarch", subdirs=False)
    )
    assert result.returncode == 0, str(result)
    assert disk_packages(mirror_dir, "noarch") == {"old-1.0-0.conda", "seconds-1.0-0.conda"}


def test_narrowing_filters_deletes_and_widening_adds(
    real_channel, channel_server, mirror_dir, run_cli
):
    ok(run_cli(*mirror_args(channel_server.url, mirror_dir)))
    narrow = run_cli(
        *mirror_args(
            channel_server.url,
            mirror_dir,
            "--include",
            "dependent",
            "--json",
            "--max-delete",
            "100",
        )
    )
    assert narrow.returncode == 0, str(narrow)
    assert mirrored(mirror_dir) == {
        "linux-64": set(),
        "osx-64": set(),
        "noarch": {"dependent-1.0-0.conda", "dependent-2.0-0.conda"},
    }
    all_files = _all(real_channel)
    assert len(narrow.json()["deleted"]) == sum(map(len, all_files.values())) - 2
    wide = run_cli(*mirror_args(channel_server.url, mirror_dir))
    assert wide.returncode == 0, str(wide)
    assert mirrored(mirror_dir) == all_files


def test_subdir_selection_always_includes_noarch(real_channel, channel_server, mirror_dir, run_cli):
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "-s", "linux-64", subdirs=False))
    assert result.returncode == 0, str(result)
    assert published_subdirs(mirror_dir) == ["linux-64", "noarch"]
    assert not (mirror_dir / "osx-64").exists()
    assert disk_packages(mirror_dir, "linux-64") == _all(real_channel)["linux-64"]
    assert disk_packages(mirror_dir, "noarch") == _all(real_channel)["noarch"]
    assert not [r for r in channel_server.log() if r.path.startswith("/osx-64/")]


def test_empty_noarch_written_when_upstream_has_none(gen_channel, serve, mirror_dir, run_cli):
    gen_channel.add("linux-64", "only-1.0-0.conda")
    gen_channel.write()
    assert not (gen_channel.root / "noarch").exists()
    server = serve(gen_channel.root)
    result = run_cli(*mirror_args(server.url, mirror_dir, "-s", "linux-64", subdirs=False))
    assert result.returncode == 0, str(result)
    noarch = load_index(mirror_dir, "noarch")
    assert noarch["info"]["subdir"] == "noarch"
    assert noarch.get("packages", {}) == {} and noarch.get("packages.conda", {}) == {}
    assert (mirror_dir / "noarch" / "repodata.json.zst").is_file()
    assert disk_packages(mirror_dir, "linux-64") == {"only-1.0-0.conda"}
    assert_consistent(mirror_dir)


def test_local_upstream_forms(real_channel, channel_server, tmp_path, run_cli):
    """file://, file:// with a trailing slash and a plain path mirror the same bytes as HTTP."""
    remote = tmp_path / "remote"
    ok(run_cli(*mirror_args(channel_server.url, remote)))
    expected = tree_bytes(remote)
    forms = {
        "file-url": real_channel.root.as_uri(),
        "file-url-slash": real_channel.root.as_uri() + "/",
        "plain-path": str(real_channel.root),
    }
    for form, url in forms.items():
        local = tmp_path / form
        result = run_cli(*mirror_args(url, local))
        assert result.returncode == 0, str(result)
        assert mirrored(local) == _all(real_channel), form
        assert tree_bytes(local) == expected, form
    again = run_cli(*mirror_args(forms["plain-path"], tmp_path / "plain-path", "--json"))
    assert again.returncode == 0 and again.json()["unchanged"] is True, str(again)


def test_file_url_works_with_no_proxy_set(real_channel, mirror_dir, run_cli):
    """NO_PROXY=localhost,127.0.0.1 is a common setting; it must not break file:// upstreams."""
    result = run_cli(
        *mirror_args(real_channel.url, mirror_dir, "-s", "noarch", subdirs=False),
        env={"NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"},
    )
    assert result.returncode == 0, str(result)
    assert disk_packages(mirror_dir, "noarch") == _all(real_channel)["noarch"]


def test_invalid_include_spec_is_usage_error(channel_server, mirror_dir, run_cli):
    result = run_cli(*mirror_args(channel_server.url, mirror_dir, "--include", "foo >=>=1"))
    assert result.returncode == 2, str(result)
    assert "Traceback" not in result.output
    assert not disk_packages(mirror_dir, "noarch")
