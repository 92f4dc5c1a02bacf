"""channel/shardruns.py: the names whose records changed, found in the document's bytes, are
those grouping the parsed records finds, their records are the parsed ones, their shards are
byte for byte the same, and any document where the bytes could mislead gets no runs."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from condasync.channel.bigindex import parse_index
from condasync.channel.shardencode import build_shard
from condasync.channel.shardruns import index_groups
from condasync.channel.shards import group_by_name

SHA = "ab" * 32
MD5 = "cd" * 16


def rec(name: str, version: str, **extra: Any) -> dict[str, Any]:
    doc = {
        "name": name,
        "version": version,
        "build": "h1_0",
        "build_number": 0,
        "size": 10,
        "sha256": SHA,
        "md5": MD5,
        "depends": ["dep >=1"],
        "timestamp": 1700000000000,
    }
    return {**doc, **extra}


def document(packages: dict[str, Any], conda: dict[str, Any], indent: int | None = None,
             **top: Any) -> bytes:  # fmt: skip
    doc = {"info": {"subdir": "linux-64"}, "packages": packages, "packages.conda": conda,
           "removed": [], "repodata_version": 1, **top}  # fmt: skip
    return json.dumps(doc, indent=indent).encode()


def channel(seed: int, names: int = 12) -> tuple[dict[str, Any], dict[str, Any]]:
    """Records of several names, some of them prefixes of others ("foo", "foo-bar"), a name
    in both sections, and names not adjacent in the document."""
    rng = random.Random(seed)
    pool = ["foo", "foo-bar", "foo-bar-baz", "x", "x_y", "lib.z", *(f"n{i}" for i in range(names))]
    packages: dict[str, Any] = {}
    conda: dict[str, Any] = {}
    for i in range(rng.randint(20, 60)):
        name = rng.choice(pool)
        ext, target = rng.choice([(".tar.bz2", packages), (".conda", conda)])
        fn = f"{name}-{i}.{rng.randint(0, 3)}-h{i}_0{ext}"
        target[fn] = rec(name, str(i), depends=[f"{rng.choice(pool)} >={i}"])
    return packages, conda


def groups_of(body: bytes) -> Any:
    index = parse_index(body, "linux-64")
    return index, index_groups(index, index.order)


def same_as_parsed(body: bytes) -> None:
    index, groups = groups_of(body)
    assert groups is not None
    parsed = group_by_name(index.sections, index.removed)
    assert set(groups) == set(parsed)
    for name, group in parsed.items():
        assert build_shard(groups[name]).data == build_shard(group).data, name
        again = groups_of(body)[1]  # records decoded straight from the bytes: same shard
        assert build_shard(again[name]).data == build_shard(group).data, name
        assert {fn: bytes(r) for fn, r in groups[name].conda.items()} == {
            fn: bytes(r) for fn, r in group.conda.items()
        }
        assert list(groups[name].packages) == list(group.packages)


@pytest.mark.parametrize("indent", [None, 1, 4])
@pytest.mark.parametrize("seed", range(6))
def test_runs_hold_the_parsed_records(seed: int, indent: int | None) -> None:
    same_as_parsed(document(*channel(seed), indent=indent))


def test_changed_names_are_those_whose_records_changed() -> None:
    packages = {f"x-{i}-h_0.tar.bz2": rec("x", str(i)) for i in range(3)}
    packages.update({f"foo-bar-{i}-h_0.tar.bz2": rec("foo-bar", str(i)) for i in range(2)})
    conda = {f"foo-{i}-h_0.conda": rec("foo", str(i)) for i in range(3)}
    conda.update({f"foo-bar-baz-{i}-h_0.conda": rec("foo-bar-baz", str(i)) for i in range(2)})
    conda["x-9-h_0.conda"] = rec("x", "9")  # x in both sections, not adjacent
    before = groups_of(document(packages, conda))[1].digests()
    assert set(before) == {"x", "foo", "foo-bar", "foo-bar-baz"}
    conda["foo-bar-baz-1-h_0.conda"] = rec("foo-bar-baz", "1", depends=["patched"])  # hotfix
    del packages["x-1-h_0.tar.bz2"]
    body = document(packages, conda, removed=["x-1-h_0.tar.bz2", "gone-1-0.conda"])
    groups = groups_of(body)[1]
    after = groups.digests()
    assert {name for name in after if after[name] != before[name]} == {"foo-bar-baz", "x"}
    assert groups["x"].removed == ["x-1-h_0.tar.bz2"] and "gone" not in groups
    same_as_parsed(body)
    # the same records written with other whitespace hash otherwise (encoded again, harmless)
    indented = document(packages, conda, indent=2, removed=["x-1-h_0.tar.bz2", "gone-1-0.conda"])
    assert groups_of(indented)[1].digests()["foo"] != after["foo"]


def test_digests_never_equal_a_parsed_groups_digest() -> None:
    index, groups = groups_of(document(*channel(2)))
    assert groups is not None
    parsed = group_by_name(index.sections, index.removed)
    for name, digest in groups.digests().items():
        assert digest.startswith("runs:") and digest != parsed[name].digest().hex()


@pytest.mark.parametrize(
    "body",
    [
        # a record nesting an object, with a key like the next filename: not plain
        b'{"packages": {"a-1-0.tar.bz2": {"size": 1, "x": {"b-1-0.tar.bz2": {}}},'
        b' "b-1-0.tar.bz2": {"size": 2}}}',
        # a "{" in a string: not plain
        b'{"packages": {"a-1-0.tar.bz2": {"size": 1, "l": "{"}, "b-1-0.tar.bz2": {"size": 2}}}',
        # a key listed twice
        b'{"packages": {"a-1-0.tar.bz2": {"size": 1}, "a-1-0.tar.bz2": {"size": 2}}}',
        # a filename in both sections
        b'{"packages": {"a-1-0.conda": {"size": 1}},'
        b' "packages.conda": {"a-1-0.conda": {"size": 1}}}',
        # a key written escaped: not found as written
        b'{"packages": {"a-1-0.tar.bz2": {"size": 1}, "b\\u002d1-0.tar.bz2": {"size": 2}}}',
        # a filename with a quote in it (then ending like the next one)
        b'{"packages": {"a-1-0.tar.bz2": {"size": 1}, "z\\"b-1-0.tar.bz2": {"size": 3},'
        b' "b-1-0.tar.bz2": {"size": 2}}}',
        # a section written twice
        b'{"packages": {"a-1-0.tar.bz2": {"size": 1}}, "packages": {"b-1-0.tar.bz2": {"size": 2}}}',
    ],
)
def test_odd_documents_get_no_runs(body: bytes) -> None:
    index = parse_index(body, "linux-64")
    assert index_groups(index, index.order) is None


@pytest.mark.parametrize(
    "body",
    [
        # a record with a key that is the next filename (a number, not an object)
        b'{"packages": {"a-1-0.tar.bz2": {"size": 1, "b-1-0.tar.bz2": 1},'
        b' "b-1-0.tar.bz2": {"size": 2}}}',
        # the next filename in a string, escaped quotes and all
        b'{"packages": {"a-1-0.tar.bz2": {"size": 1, "l": "\\"b-1-0.tar.bz2\\": "},'
        b' "b-1-0.tar.bz2": {"size": 2}}}',
        # the first filename in `info` before the section
        b'{"info": {"a-1-0.tar.bz2": "x"}, "packages": {"a-1-0.tar.bz2": {"size": 1},'
        b' "b-1-0.tar.bz2": {"size": 2}}}',
        # whitespace everywhere
        b'{ "packages" :\n{\n"a-1-0.tar.bz2"\t:\r\n{ "size" : 1 } ,\n'
        b' "b-1-0.tar.bz2" : {"size":2}\n}\n}',
    ],
)
def test_decoys_in_plain_documents_do_not_mislead(body: bytes) -> None:
    assert groups_of(body)[1] is not None
    same_as_parsed(body)


def test_a_run_that_does_not_decode_as_expected_is_refused() -> None:
    groups = groups_of(document(*channel(3)))[1]
    assert groups is not None
    name = next(iter(groups))
    runs = groups.runs[name]
    groups.runs[name] = [type(runs[0])(runs[0].section, runs[0].first, runs[0].count + 1,
                                       runs[0].start, runs[0].end)]  # fmt: skip
    with pytest.raises(ValueError):
        build_shard(groups[name])


def test_a_filename_in_both_sections_gets_no_runs_even_when_parsed_lazily() -> None:
    # the .conda section's key written escaped, and the same filename raw in "packages"
    body = (
        b'{"packages.conda": {"a-1-0.conda": {"size": 1}, "b-1-0\\u002econda": {"size": 2}},'
        b' "packages": {"c-1-0.tar.bz2": {"size": 3}, "b-1-0.conda": {"size": 4}}}'
    )
    index = parse_index(body, "linux-64", lazy=True)
    assert index_groups(index, index.order) is None
    # and find_runs alone refuses the overlap it would find
    from condasync.channel.shardruns import find_runs

    assert find_runs(body, index.order) is None
