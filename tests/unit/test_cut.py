"""Records located in an index's own bytes (Index.records) and cut out of them (cut.cut):
the located JSON must be each record's, and the cut document must parse to the document
without those records. When the bytes do not line up, both must refuse, and the engine then
parses the whole document."""

from __future__ import annotations

import json
import random

import pytest

from condasync.channel.bigindex import parse_index
from condasync.channel.cut import cut


def _rec(i: int, **extra: object) -> dict[str, object]:
    return {"name": f"p{i}", "version": "1.0", "build": "0", "build_number": 0,
            "depends": [f"dep{i} >=1", "x []:,\\\""], "sha256": f"{i:064x}", "size": 100 + i,
            **extra}  # fmt: skip


def _doc(n_tar: int, n_conda: int) -> dict[str, object]:
    return {
        "info": {"subdir": "noarch"},
        "packages": {f"p{i}-1.0-0.tar.bz2": _rec(i) for i in range(n_tar)},
        "packages.conda": {f"p{i}-1.0-0.conda": _rec(i) for i in range(n_conda)},
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


def _records(doc: dict[str, object]) -> dict[str, object]:
    return {fn: r for key in ("packages", "packages.conda") for fn, r in doc[key].items()}  # type: ignore[attr-defined]


FORMATS = {
    "indented": lambda d: json.dumps(d, indent=2, sort_keys=True).encode(),
    "compact": lambda d: json.dumps(d, separators=(",", ":")).encode(),
    "spaced": lambda d: json.dumps(d, indent=1, separators=(" , ", " : ")).encode(),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("seed", range(12))
def test_located_records_and_cut_document(fmt: str, seed: int) -> None:
    rng = random.Random(seed)
    doc = _doc(rng.randint(0, 6), rng.randint(1, 6))
    data = FORMATS[fmt](doc)
    index = parse_index(data, "noarch")
    names = [fn for section in index.order.values() for fn in section]
    # first, last, all, none, runs: random subsets hit every shape of cut
    skip = set(rng.sample(names, rng.randint(0, len(names))))
    found = index.records(skip)
    assert {fn: json.loads(body) for fn, body in found.items()} == {
        fn: r for fn, r in _records(doc).items() if fn in skip
    }
    assert index.spans.keys() == skip
    assert index._sections is None  # nothing parsed the whole document again
    parts = cut(data, index.spans, skip)
    assert parts is not None
    assert json.loads(b"".join(parts)) == _without(doc, skip)


def test_cut_of_every_record_leaves_empty_sections() -> None:
    data = FORMATS["indented"](_doc(3, 3))
    index = parse_index(data, "noarch")
    skip = {fn for section in index.order.values() for fn in section}
    index.records(skip)
    parts = cut(data, index.spans, skip)
    assert parts is not None
    out = json.loads(b"".join(parts))
    assert out["packages"] == {} and out["packages.conda"] == {}


def test_cut_refuses_names_it_was_not_given_spans_for() -> None:
    data = FORMATS["compact"](_doc(2, 2))
    index = parse_index(data, "noarch")
    index.records({"p0-1.0-0.conda"})
    assert cut(data, index.spans, {"p0-1.0-0.conda", "p1-1.0-0.conda"}) is None


def _refused(data: bytes, names: set[str]) -> None:
    index = parse_index(data, "noarch")
    found = index.records(names)
    assert index.spans == {}
    for fn, body in found.items():  # the whole-document parse answered instead
        assert bytes(body) == bytes(index.raw(fn) or b"")


def test_escaped_key_is_refused() -> None:
    data = FORMATS["compact"](_doc(0, 2)).replace(b'"p1-1.0-0.conda"', b'"p\\u0031-1.0-0.conda"')
    _refused(data, {"p1-1.0-0.conda"})


@pytest.mark.parametrize("same", [True, False])
@pytest.mark.parametrize("where", [0, 1])
def test_key_listed_twice_is_refused(same: bool, where: int) -> None:
    """A repeated key (the copy right after it, or as the section's last entry): its
    entry would not be one JSON value, so the bytes do not line up, identical copy or not."""
    doc = _doc(0, 2)
    data = FORMATS["compact"](doc)
    name = f"p{where}-1.0-0.conda"
    entry = f'"{name}":'.encode() + json.dumps(_rec(where), separators=(",", ":")).encode()
    assert entry in data
    copy = entry if same else entry.replace(b'"size":10', b'"size":99')
    data = data.replace(entry, entry + b"," + copy)
    _refused(data, {name})


def test_name_as_a_string_value_is_not_taken_for_its_key() -> None:
    """A record naming another file (say a `fn` field) comes before that file's key."""
    doc = _doc(0, 3)
    section = doc["packages.conda"]
    assert isinstance(section, dict)
    section["p0-1.0-0.conda"]["fn"] = "p2-1.0-0.conda"
    section["p1-1.0-0.conda"]["p2-1.0-0.conda"] = 1  # even as a key inside another record
    data = FORMATS["indented"](doc)
    index = parse_index(data, "noarch")
    skip = {"p1-1.0-0.conda", "p2-1.0-0.conda"}
    found = index.records(skip)
    assert {fn: json.loads(bytes(body)) for fn, body in found.items()} == {
        fn: r for fn, r in _records(doc).items() if fn in skip
    }
    if index.spans:  # located (else the whole-document parse answered): the cut is right
        parts = cut(data, index.spans, skip)
        assert parts is not None
        assert json.loads(b"".join(parts)) == _without(doc, skip)


def test_many_records_take_the_whole_document_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past LOCATE_MAX, finding each record costs more than one raw pass (measured)."""
    import condasync.channel.bigindex as bigindex

    data = FORMATS["compact"](_doc(3, 3))
    index = parse_index(data, "noarch")
    monkeypatch.setattr(bigindex, "LOCATE_MAX", 2)
    names = {"p0-1.0-0.conda", "p1-1.0-0.conda", "p2-1.0-0.conda"}
    found = index.records(names)
    assert index.spans == {} and index._sections is not None
    assert {fn: json.loads(bytes(raw)) for fn, raw in found.items()} == {
        fn: _rec(int(fn[1])) for fn in names
    }


def test_a_key_listed_twice_apart_or_a_section_listed_twice_is_not_located() -> None:
    """The copies need not be neighbours: msgspec decodes both and keeps one; the count of
    records it decoded gives that away, and nothing is then taken from the bytes."""
    a, b = _rec(0), _rec(1)
    apart = (
        '{"info":{"subdir":"noarch"},"packages.conda":{'
        f'"a-1-0.conda":{json.dumps(a)},"b-1-0.conda":{json.dumps(b)},"a-1-0.conda":{json.dumps(a)}'
        "}}"
    ).encode()
    twice = (
        f'{{"packages.conda":{{"a-1-0.conda":{json.dumps(a)}}},'
        f'"packages.conda":{{"a-1-0.conda":{json.dumps(a)}}}}}'
    ).encode()
    for data in (apart, twice):
        index = parse_index(data, "noarch")
        assert not index.unique
        _refused(data, {"a-1-0.conda"})
    assert parse_index(FORMATS["compact"](_doc(2, 2)), "noarch").unique


@pytest.mark.parametrize("where", ["info", "zz_unknown_first"])
def test_a_copy_of_a_record_elsewhere_is_not_taken_for_it(where: str) -> None:
    """A copy under another top-level key (hashes and all), before the section or after it:
    it adds a "{" the document's structure does not account for, so nothing is located."""
    doc = _doc(0, 3)
    records = doc["packages.conda"]
    assert isinstance(records, dict)
    decoy = {
        "p0-1.0-0.conda": records["p0-1.0-0.conda"],  # the section's first key: a false start
        "p1-1.0-0.conda": records["p1-1.0-0.conda"],
        "p2-1.0-0.conda": {"size": 1},
    }
    if where == "info":
        doc["info"] = {"subdir": "noarch", **decoy}
    else:
        doc = {where: decoy, **doc}
    data = json.dumps(doc).encode()  # the decoy is written before "packages.conda"
    assert data.index(b'"p1-1.0-0.conda"') < data.index(b'"packages.conda"')
    _refused(data, {"p1-1.0-0.conda", "p2-1.0-0.conda"})
    assert not parse_index(data, "noarch").plain


def _entries(names: list[str], escape: str = "") -> str:
    """A packages.conda section of records 0..n; the key `escape` written with \\u002e."""
    out = []
    for i, name in enumerate(names):
        key = json.dumps(name)
        if name == escape:
            key = key.replace(".conda", "\\u002econda")
        out.append(f"{key}:{json.dumps(_rec(i))}")
    return "{" + ",".join(out) + "}"


N = [f"p{i}-1.0-0.conda" for i in range(4)]
EVIL = json.dumps(_rec(1, depends=["evil"]))  # the size and hashes of record 1
REAL = json.dumps(_rec(2))
FAKE = f'"{N[0]}":{json.dumps(_rec(0))},"{N[1]}":{EVIL}'  # a fake section's entries
NESTED = f'"build_number": 0, "x": {{"a": 1, "{N[2]}": {REAL}, "{N[3]}": 1}}'
HOSTILE = {
    # a fake section, in info, before the real one
    "fake section in info": (
        f'{{"info":{{"subdir":"noarch","packages.conda":{{{FAKE}}}}},"packages":{{}},'
        f'"packages.conda":{_entries(N)}}}',
        N[0],  # the copy of record 0 is exact: the cut would drop it from info instead
    ),
    # the real key escaped, a copy after the section (or in an info written after it)
    "escaped key, copy after": (
        f'{{"info":{{"subdir":"noarch"}},"packages.conda":{_entries(N, N[2])},'
        f'"zz":{{"a":1,"{N[2]}":{REAL},"{N[3]}":1}}}}',
        N[2],
    ),
    "escaped key, copy in a later info": (
        f'{{"packages.conda":{_entries(N, N[2])},'
        f'"info":{{"subdir":"noarch","a":1,"{N[2]}":{REAL},"{N[3]}":1}}}}',
        N[2],
    ),
    # the real section's name escaped, a fake one in info
    "escaped section, fake in info": (
        f'{{"info":{{"subdir":"noarch","packages.conda":{{{FAKE}}}}},'
        f'"packages\\u002econda":{_entries(N)}}}',
        N[0],
    ),
    # a copy nested in an earlier record of the same section
    "copy nested in an earlier record": (
        '{"info":{"subdir":"noarch"},"packages.conda":'
        + _entries(N).replace('"build_number": 0', NESTED, 1)
        + "}",
        N[2],
    ),
}


HOSTILE["a record named info, escaped, before the real info"] = (
    '{"packages.conda":{"a":{"size":1},"\\u0069nfo":{"size":1,"depends":["evil"]}},'
    '"info":{"size":1}}',
    "info",
)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_document_is_read_by_the_whole_parse(case: str) -> None:
    """Documents built so that the first key found in the bytes is a decoy: nothing is
    located, and the records read are those a JSON parser reads."""
    text, name = HOSTILE[case]
    data = text.encode()
    truth = json.loads(data)["packages.conda"]
    index = parse_index(data, "noarch")
    assert not index.plain or name == "info"
    found = index.records({name})
    assert json.loads(bytes(found[name])) == truth[name]
    assert index.spans == {}


def test_a_brace_in_a_string_only_costs_the_whole_parse() -> None:
    doc = _doc(0, 3)
    doc["packages.conda"]["p1-1.0-0.conda"]["license"] = "LicenseRef-{x}"  # type: ignore[index]
    data = FORMATS["compact"](doc)
    index = parse_index(data, "noarch")
    assert index.unique and not index.plain
    _refused(data, {"p1-1.0-0.conda"})
    assert parse_index(FORMATS["compact"](_doc(2, 2)), "noarch").plain


def test_a_name_json_escapes_is_not_located() -> None:
    doc = _doc(0, 3)
    section = doc["packages.conda"]
    assert isinstance(section, dict)
    section['p"1-1.0-0.conda'] = section.pop("p1-1.0-0.conda")
    data = FORMATS["compact"](doc)
    assert parse_index(data, "noarch").plain
    _refused(data, {'p"1-1.0-0.conda'})


def test_a_record_nesting_an_object_is_read_by_the_whole_parse() -> None:
    """anaconda.org's records carry `"binstar": {...}`: not plain, so nothing is located, and
    `info` (named once, nothing \\u-escaped) still lets the document be published as it is."""
    doc = _doc(1, 3)
    binstar = {"channel": "main", "owner_id": "5859", "package_id": "59ea"}
    doc["packages.conda"]["p1-1.0-0.conda"]["binstar"] = binstar  # type: ignore[index]
    data = FORMATS["indented"](doc)
    index = parse_index(data, "noarch")
    assert index.unique and not index.plain and index.info_once()
    _refused(data, {"p1-1.0-0.conda", "p2-1.0-0.conda"})
    twice = data.replace(b'"info":', b'"\\u0069nfo": {"base_url": "x"}, "info":', 1)
    assert json.loads(twice)["info"] == {"subdir": "noarch"}
    assert not parse_index(twice, "noarch").info_once()


def _fuzz_document(rng: random.Random) -> str:
    """A small index with decoys: filename keys (some \\u-escaped) in info, at the top level
    and inside records, with values that are or are not copies of records; odd whitespace; a
    record named like a section; sometimes a first `info` with a base_url."""
    names = [f"p{i}-1.0-0.conda" for i in range(rng.randint(1, 6))]
    if rng.random() < 0.3:
        names[rng.randrange(len(names))] = "packages.conda"
    recs = {name: _rec(i) for i, name in enumerate(names)}

    def key(name: str) -> str:
        text, roll = json.dumps(name), rng.random()
        if roll < 0.1:
            return text.replace(".", "\\u002e", 1)
        return text.replace("p", "\\u0070", 1) if roll < 0.15 else text

    def decoy() -> str:
        name = rng.choice(names)
        if rng.random() < 0.7:
            return json.dumps(rng.choice([1, "x", None, [name], True]))
        return json.dumps(recs[name])

    def obj(items: list[tuple[str, str]]) -> str:
        ws = lambda: rng.choice(["", "", " ", "\n ", "\t"])  # noqa: E731
        return "{" + ws() + f",{ws()}".join(f"{k}{ws()}:{ws()}{v}" for k, v in items) + ws() + "}"

    entries = []
    for name in names:
        fields = [(json.dumps(k), json.dumps(v)) for k, v in recs[name].items()]
        if rng.random() < 0.3:
            fields.insert(rng.randint(0, len(fields)), (key(rng.choice(names)), decoy()))
        entries.append((key(name), obj(fields)))
    info = [('"subdir"', '"noarch"')]
    for _ in range(rng.randint(0, 2)):
        info.append((key(rng.choice([*names, "packages.conda"])), decoy()))
    top = [('"info"', obj(info)), ('"packages"', rng.choice(["{}", "null"]))]
    section = '"packages.conda"' if rng.random() > 0.1 else '"packages\\u002econda"'
    top.append((section, obj(entries)))
    for _ in range(rng.randint(0, 2)):
        top.insert(rng.randint(0, len(top)), (key(rng.choice([*names, "info"])), decoy()))
    if rng.random() < 0.2:
        top.insert(0, ('"info"', '{"subdir": "noarch", "base_url": "http://upstream.invalid"}'))
    if rng.random() < 0.3:
        rng.shuffle(top)
    return obj(top)


def test_random_hostile_documents_are_read_as_a_json_parser_reads_them() -> None:
    """Located records are the parser's records, a cut drops exactly the cut entries, and a
    document published as it is has no base_url. (60,000 such documents passed by hand.)"""
    from condasync.engine.publish import publishable_as_is as _publishable_as_is

    located = as_is = 0
    for seed in range(3000):
        rng = random.Random(seed)
        data = _fuzz_document(rng).encode()
        truth = json.loads(data)
        try:
            index = parse_index(data, "noarch")
        except ValueError:  # e.g. a later "info": 1: refused with a clear error
            continue
        sections = {k: truth.get(k) or {} for k in ("packages", "packages.conda")}
        listed = {**sections["packages.conda"], **sections["packages"]}  # "packages" wins
        if not listed:
            continue
        skip = set(rng.sample(sorted(listed), rng.randint(1, len(listed))))
        found = index.records(skip)
        assert {fn: json.loads(bytes(body)) for fn, body in found.items()} == {
            fn: listed[fn] for fn in skip
        }, seed
        if index.spans:
            located += 1
            parts = cut(data, index.spans, skip)
            assert parts is not None, seed
            expected = {**truth}
            for key in ("packages", "packages.conda"):
                if isinstance(truth.get(key), dict):
                    expected[key] = {fn: r for fn, r in truth[key].items() if fn not in skip}
            assert json.loads(b"".join(parts)) == expected, seed
        if _publishable_as_is(index, "noarch"):
            as_is += 1
            assert b"base_url" not in data, seed
    assert located > 100 and as_is > 100  # both paths were taken, not only the fallback


def _lite_truth(record: object) -> tuple[object, object, object]:
    assert isinstance(record, dict)
    return (record.get("size"), record.get("sha256"), record.get("md5"))


def test_a_parse_by_name_types_only_those_names_and_agrees_with_the_whole_parse() -> None:
    """`parse_index(..., names)`, as a filtered run parses: the typed views of exactly the
    records of those names, each the one a JSON parser reads; a document it cannot trust
    (not plain, a key twice, a record that nests an object) is parsed whole instead."""
    partial = whole = 0
    for seed in range(3000):
        rng = random.Random(seed)
        data = _fuzz_document(rng).encode()
        truth = json.loads(data)
        names = set(rng.sample(["p0", "p1", "p2", "p3", "packages.conda"], rng.randint(1, 3)))
        try:
            index = parse_index(data, "noarch", names)
        except ValueError:
            continue
        sections = {k: truth.get(k) or {} for k in ("packages", "packages.conda")}
        listed = {**sections["packages.conda"], **sections["packages"]}
        assert index.count() == sum(len(s) for s in sections.values()), seed
        if not index.partial:
            whole += 1
            assert index.lite.keys() | index.rejected.keys() == listed.keys(), seed
            continue
        partial += 1
        wanted = {fn for fn in listed if fn.startswith(tuple(f"{n}-" for n in names))}
        assert index._views.keys() == wanted, seed  # typed only those
        assert index.named(names).keys() == wanted, seed
        for fn, view in index.named(names).items():
            assert (view.size, view.sha256, view.md5) == _lite_truth(listed[fn]), seed
        found = index.records(wanted)
        assert {fn: json.loads(bytes(b)) for fn, b in found.items()} == {
            fn: listed[fn] for fn in wanted
        }, seed
    assert partial > 100 and whole > 100


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_document_is_not_parsed_by_name(case: str) -> None:
    text, name = HOSTILE[case]
    data = text.encode()
    truth = json.loads(data)["packages.conda"]
    package = name.split("-")[0]
    index = parse_index(data, "noarch", {package})
    assert not index.partial or not any(fn.startswith(f"{package}-") for fn in truth)
    found = index.records({name})
    assert json.loads(bytes(found[name])) == truth[name]


def test_a_parse_by_name_keeps_other_top_level_keys_for_publishing() -> None:
    doc = {**_doc(2, 3), "zz_extra": ["kept", 1]}
    data = FORMATS["compact"](doc)
    index = parse_index(data, "noarch", {"p1"})
    assert index.partial and index.named({"p1"}).keys() == {"p1-1.0-0.tar.bz2", "p1-1.0-0.conda"}
    assert json.loads(bytes(index.extra["zz_extra"])) == ["kept", 1]
    assert parse_index(FORMATS["compact"](_doc(2, 3)), "noarch", {"p1"})._extra == {}


def test_a_lazy_index_types_on_demand_and_agrees_with_the_whole_parse() -> None:
    """`parse_index(..., lazy=True)`, as a solve parses: views of any filenames (listed or
    not) equal the whole parse's, records cut from the bytes equal the parser's, and `lite`
    (every record) makes it whole."""
    lazy_seen = 0
    for seed in range(2000):
        rng = random.Random(seed)
        data = _fuzz_document(rng).encode()
        try:
            whole = parse_index(data, "noarch")
            index = parse_index(data, "noarch", lazy=True)
        except ValueError:
            continue
        truth = json.loads(data)
        listed = {**(truth.get("packages.conda") or {}), **(truth.get("packages") or {})}
        asked = set(rng.sample(sorted(listed), len(listed) // 2)) | {"nope-1-0.conda"}
        lazy_seen += index.partial
        views = index.views(asked)
        assert views == {fn: v for fn, v in whole.lite.items() if fn in asked}, seed
        assert {fn: json.loads(bytes(b)) for fn, b in index.records(set(views)).items()} == {
            fn: listed[fn] for fn in views
        }, seed
        assert index.lite == whole.lite and not index.partial, seed
    assert lazy_seen > 100
