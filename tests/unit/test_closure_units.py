"""Table-driven tests of the closure step's pure pieces: explicit-file hashes, virtual-package
defaults per platform family and overrides, --keep-unselected durations, lock hash checks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from condasync.channel.bigindex import Index, Lite, parse_index
from condasync.engine.closure import _compare
from condasync.engine.closure_state import keep_ms
from condasync.engine.fetch import IndexFetch
from condasync.engine.lockfiles import parse_explicit, parse_fragment, subdir_and_filename
from condasync.engine.solver import (
    SelectionError,
    Solve,
    SolverProcess,
    default_virtual_packages,
    run_solves,
    virtual_packages,
)
from condasync.engine.solverfiles import HeldIndexes as _Held
from condasync.engine.upstream import Upstream
from condasync.errors import UsageError

MD5 = "d7c89558ba9fa0495403155b64376d81"
SHA = "fe51de6107f9edc7aa4f786a70f4a883943bc9d39b3bb7307c04c41410990726"


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        (MD5, (None, MD5)),
        (SHA, (SHA, None)),
        (f"sha256:{SHA}", (SHA, None)),
        (f"sha256={SHA}", (SHA, None)),
        (f"md5={MD5}", (None, MD5)),
        (MD5.upper(), (None, MD5)),
        ("nothex", (None, None)),
        ("", (None, None)),
        (f"sha256:{MD5}", (None, None)),
    ],
)
def test_parse_fragment(fragment: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_fragment(fragment) == expected


def test_parse_explicit_skips_comments_blank_lines_and_non_packages() -> None:
    text = (
        "# This file may be used to create an environment using:\n# platform: linux-64\n"
        "@EXPLICIT\n\nhttps://x.org/cf/linux-64/a-1.0-h0.tar.bz2#" + MD5 + "\n"
        "# a comment\nhttps://x.org/cf/noarch/b-2-pyh0.conda#sha256:" + SHA + "\n"
        "https://x.org/cf/linux-64/c-1-0.conda\nhttps://pypi.org/simple/\n"
    )
    found = parse_explicit(text, "env.txt")
    assert [(p.subdir, p.filename, p.sha256, p.md5) for p in found.packages] == [
        ("linux-64", "a-1.0-h0.tar.bz2", None, MD5),
        ("noarch", "b-2-pyh0.conda", SHA, None),
        ("linux-64", "c-1-0.conda", None, None),
    ]
    assert found.skipped == ["https://pypi.org/simple/"]
    with pytest.raises(UsageError):
        parse_explicit("https://x/linux-64/a-1-0.conda\n", "no-marker.txt")


def test_subdir_and_filename_unquotes() -> None:
    assert subdir_and_filename("https://h/c/linux-64/a%2Bb-1-0.conda") == (
        "linux-64",
        "a+b-1-0.conda",
    )
    assert subdir_and_filename("x.conda") is None


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux-64", ["__unix=0", "__linux=4.18", "__glibc=2.28", "__archspec=x86_64"]),
        ("linux-aarch64", ["__unix=0", "__linux=4.18", "__glibc=2.28", "__archspec=aarch64"]),
        ("linux-riscv64", ["__unix=0", "__linux=4.18", "__glibc=2.39", "__archspec=riscv64"]),
        ("osx-64", ["__unix=0", "__osx=13.0", "__archspec=x86_64"]),
        ("osx-arm64", ["__unix=0", "__osx=13.0", "__archspec=m1"]),
        ("win-64", ["__win=10.0", "__archspec=x86_64"]),
        ("noarch", []),
    ],
)
def test_default_virtual_packages(platform: str, expected: list[str]) -> None:
    got = [f"{n}={b if n == '__archspec' else v}" for n, v, b in default_virtual_packages(platform)]
    assert got == expected
    assert not any(n == "__cuda" for n, _, _ in default_virtual_packages(platform))


def test_virtual_package_overrides_replace_or_add() -> None:
    got = virtual_packages("linux-64", ("__glibc=2.17", "__cuda=12.4", "__archspec=1=zen2"))
    assert got == [
        ("__unix", "0", "0"), ("__linux", "4.18", "0"), ("__glibc", "2.17", "0"),
        ("__cuda", "12.4", "0"), ("__archspec", "1", "zen2"),
    ]  # fmt: skip
    for bad in ("glibc=2.17", "__glibc", "__glibc=", "__a=1=2=3"):
        with pytest.raises(UsageError):
            virtual_packages("linux-64", (bad,))


@pytest.mark.parametrize(
    ("text", "ms"),
    [("0", 0), ("30d", 30 * 86400000), ("12h", 12 * 3600000), ("2w", 14 * 86400000)],
)
def test_keep_ms(text: str, ms: int) -> None:
    assert keep_ms(text) == ms


def test_keep_ms_rejects_garbage() -> None:
    with pytest.raises(UsageError):
        keep_ms("soon")


@pytest.mark.parametrize(
    ("lock", "upstream", "kind"),
    [
        ((SHA, MD5), (SHA, MD5), None),
        ((SHA, None), (SHA, "0" * 32), None),  # sha256 when both have one
        (("0" * 64, MD5), (SHA, MD5), "sha256"),
        ((None, MD5), (SHA, MD5), None),  # else md5
        ((None, "0" * 32), (SHA, MD5), "md5"),
        ((SHA, None), (None, MD5), None),  # nothing to compare
    ],
)
def test_lock_hash_comparison(
    lock: tuple[str | None, str | None], upstream: tuple[str | None, str | None], kind: str | None
) -> None:
    assert _compare(*lock, *upstream)[0] == kind


def _held_index(tmp_path: Path) -> tuple[_Held, dict[str, Index], Path, bytes]:
    doc = {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": {
        f"p{i}-1-0.conda": {"name": f"p{i}", "version": "1", "build": "0", "size": i + 1}
        for i in range(50)}}  # fmt: skip
    body = json.dumps(doc).encode()
    path = tmp_path / "linux-64.repodata.json"
    path.write_bytes(body)
    fetched = IndexFetch(unchanged=False, body=body)
    upstream = Upstream("linux-64", None, fetched, parse_index(body, "linux-64", lazy=True))
    assert upstream.repodata is not None and upstream.repodata.partial
    indexes = {"linux-64": upstream.repodata}
    held = _Held({"linux-64": body}, {"linux-64": body}, {"linux-64": upstream})
    held.release(indexes, {"linux-64": str(path)})
    return held, indexes, path, body


def test_the_parent_lets_the_index_go_during_the_solve_and_reads_it_back(tmp_path: Path) -> None:
    held, indexes, _path, body = _held_index(tmp_path)
    index = indexes["linux-64"]
    assert index.body == b"" and held.bodies["linux-64"] == b""
    assert held.upstreams["linux-64"].fetched.body is None
    held.restore(indexes)
    assert index.body == body and held.new_bodies["linux-64"] == body
    assert held.upstreams["linux-64"].fetched.body == body
    assert index.views(["p7-1-0.conda", "nope-1-0.conda"]) == {"p7-1-0.conda": Lite(size=8)}
    assert index.count() == 50


def test_an_index_file_replaced_during_the_solve_is_an_error(tmp_path: Path) -> None:
    held, indexes, path, body = _held_index(tmp_path)
    other = tmp_path / "other"
    other.write_bytes(body.replace(b'"size": 8', b'"size": 9'))
    os.replace(other, path)  # same size, another file
    with pytest.raises(SelectionError, match="changed during the solve"):
        held.restore(indexes)


def _solve() -> Solve:
    return Solve("solve:linux-64", "linux-64", ["python"], {}, [])


def test_a_solver_that_does_not_answer_in_time_is_an_error() -> None:
    with pytest.raises(SelectionError, match="did not finish within"):
        run_solves([_solve()], 0.001)


def test_a_solver_process_that_dies_is_an_error() -> None:
    died = SolverProcess(
        [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]
    )
    with pytest.raises(SelectionError, match=r"died \(exit code 3\): boom"):
        run_solves([_solve()], 30, died)
