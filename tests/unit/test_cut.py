"""cut_records: an index minus some records, cut from its own bytes, must parse to the same
document that re-encoding without those records gives, or refuse (None)."""

from __future__ import annotations

import json
import random

import msgspec
import pytest

from condasync.cut import cut_records
from condasync.repodata import parse_index


def _doc(n_tar: int, n_conda: int) -> dict[str, object]:
    def rec(i: int) -> dict[str, object]:
        return {"name": f"p{i}", "version": "1.0", "build": "0", "build_number": 0,
                "depends": [f"dep{i} >=1"], "sha256": f"{i:064x}", "size": 100 + i}  # fmt: skip

    return {
        "info": {"subdir": "noarch"},
        "packages": {f"p{i}-1.0-0.tar.bz2": rec(i) for i in range(n_tar)},
        "packages.conda": {f"p{i}-1.0-0.conda": rec(i) for i in range(n_conda)},
        "removed": ["gone-1.0-0.tar.bz2"],
        "repodata_version": 1,
    }


def _without(doc: dict[str, object], skip: set[str]) -> dict[str, object]:
    out = dict(doc)
    for key in ("packages", "packages.conda"):
        section = doc[key]
        assert isinstance(section, dict)
        out[key] = {fn: r for fn, r in section.items() if fn not in skip}
    return out


FORMATS = {
    "indented": lambda d: json.dumps(d, indent=2, sort_keys=True).encode(),
    "compact": lambda d: json.dumps(d, separators=(",", ":")).encode(),
    "spaced": lambda d: json.dumps(d, indent=1, separators=(" , ", " : ")).encode(),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("seed", range(12))
def test_cut_parses_as_the_document_without_those_records(fmt: str, seed: int) -> None:
    rng = random.Random(seed)
    doc = _doc(rng.randint(0, 6), rng.randint(1, 6))
    data = FORMATS[fmt](doc)
    index = parse_index(data, "noarch")
    names = [fn for section in index.sections.values() for fn in section]
    # first, last, all, none, runs: random subsets hit every shape of cut
    skip = set(rng.sample(names, rng.randint(0, len(names))))
    parts = cut_records(data, index.sections, skip)
    assert parts is not None
    assert json.loads(b"".join(parts)) == _without(doc, skip)


def test_cut_of_every_record_leaves_empty_sections() -> None:
    doc = _doc(3, 3)
    data = FORMATS["indented"](doc)
    index = parse_index(data, "noarch")
    skip = {fn for section in index.sections.values() for fn in section}
    parts = cut_records(data, index.sections, skip)
    assert parts is not None
    out = json.loads(b"".join(parts))
    assert out["packages"] == {} and out["packages.conda"] == {}


def test_escaped_key_is_refused() -> None:
    data = FORMATS["compact"](_doc(0, 2)).replace(b'"p1-1.0-0.conda"', b'"p\\u0031-1.0-0.conda"')
    index = parse_index(data, "noarch")
    assert cut_records(data, index.sections, {"p1-1.0-0.conda"}) is None


def test_key_listed_twice_with_different_records_is_refused() -> None:
    """msgspec keeps the last record at the first key's place: the bytes there differ."""
    data = FORMATS["compact"](_doc(0, 2))
    first = b'"p0-1.0-0.conda":'
    at = data.index(first)
    end = data.index(b"}", at) + 1
    dup = data[at:end].replace(b'"size":100', b'"size":999')
    data = data[:end] + b"," + dup + data[end:]
    index = parse_index(data, "noarch")
    assert (
        msgspec.json.decode(bytes(index.sections["packages.conda"]["p0-1.0-0.conda"]))["size"]
        == 999
    )
    assert cut_records(data, index.sections, {"p0-1.0-0.conda"}) is None


def test_name_as_a_string_value_is_not_taken_for_its_key() -> None:
    """A record naming another file (say a `fn` field) comes before that file's key."""
    doc = _doc(0, 3)
    section = doc["packages.conda"]
    assert isinstance(section, dict)
    section["p0-1.0-0.conda"]["fn"] = "p2-1.0-0.conda"
    data = FORMATS["indented"](doc)
    index = parse_index(data, "noarch")
    parts = cut_records(data, index.sections, {"p2-1.0-0.conda"})
    assert parts is not None
    assert json.loads(b"".join(parts)) == _without(doc, {"p2-1.0-0.conda"})
