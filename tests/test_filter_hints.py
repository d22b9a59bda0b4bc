"""A filtered search that finds nothing says why (`stagegraph.corpora.filter_hints.explain_empty`).

One real collection (BM25, one chunk per document: 6 `md`, 3 `html`, 2 `txt`, years 2019 to 2024)
is searched in Python (`stagegraph.open`), by the CLI (`stagegraph search`) and over HTTP. Each hint
is checked word for word, and every fix a hint names is run: the value it suggests finds hits.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import stagegraph
from stagegraph.cli.app import main
from stagegraph.collection import Collection
from stagegraph.corpora.filters import FilterError, parse_cli
from stagegraph.serve.app import create_app
from stagegraph.serve.service import Service
from stagegraph.serve.settings import ServeSettings

CONFIG = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 20}]}
QUERY = "memory"  # every document holds it: any filter that lets a chunk through finds hits
EXTS = ["md"] * 6 + ["html"] * 3 + ["txt"] * 2
YEARS = [2024, 2024, 2023, 2023, 2022, 2021, 2019, 2019, 2019, 2020, 2020]  # html: 2019 only

HTML_HINT = ('the filter matches no chunk: ext = ".html" matches nothing; ext has md (6), html (3), txt (2); '
             'did you mean "html"?')


def documents() -> list[dict]:
    return [{"id": f"d{i:02d}", "text": f"note {i} about gpu memory and quantisation",
             "metadata": {"ext": ext, "year": year}} for i, (ext, year) in enumerate(zip(EXTS, YEARS))]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("hints") / "notes.sg"
    collection = Collection.create(path, CONFIG)
    collection.upsert(documents())
    collection.close()
    return path


@pytest.fixture(scope="module")
def stack(root):
    with stagegraph.open(CONFIG, collection=root, watch=None) as s:
        yield s


def exts(result) -> set[str]:
    return {h.metadata["ext"] for h in result.hits}


def test_a_wrong_value_names_the_values_that_exist_and_the_suggested_one_finds_hits(stack):
    result = stack.search(QUERY, k=20, filter={"ext": ".html"})
    assert result.hits == []
    assert result.hint == HTML_HINT
    fixed = stack.search(QUERY, k=20, filter={"ext": "html"})  # the value the hint suggests
    assert len(fixed.hits) == 3 and exts(fixed) == {"html"}
    assert fixed.hint is None  # hits: no hint
    assert stack.search(QUERY, k=20).hint is None


def test_case_and_in_lists_are_matched_and_each_suggestion_is_run(stack):
    result = stack.search(QUERY, k=20, filter={"ext": {"$in": [".HTML", "TXT"]}})
    assert result.hint == ('the filter matches no chunk: ext in [".HTML", "TXT"] matches nothing; '
                           'ext has md (6), html (3), txt (2); did you mean ["html", "txt"]?')
    fixed = stack.search(QUERY, k=20, filter={"ext": {"$in": ["html", "txt"]}})
    assert len(fixed.hits) == 5 and exts(fixed) == {"html", "txt"}


def test_a_range_that_matches_nothing_gives_the_fields_smallest_and_largest(stack):
    result = stack.search(QUERY, k=20, filter={"year": {"$gte": 2030}})
    assert result.hits == []
    assert result.hint == "the filter matches no chunk: year >= 2030 matches nothing; year runs from 2019 to 2024"
    assert {h.metadata["year"] for h in stack.search(QUERY, k=20, filter={"year": {"$gte": 2024}}).hits} == {2024}
    assert {h.metadata["year"] for h in stack.search(QUERY, k=20, filter={"year": {"$lte": 2019}}).hits} == {2019}


def test_values_are_counted_where_the_rest_of_the_filter_holds(stack):
    result = stack.search(QUERY, k=20, filter={"ext": ".html", "year": 2019})
    assert result.hint == ('the filter matches no chunk: ext = ".html" matches nothing; where the rest of the '
                           'filter holds, ext has html (3); did you mean "html"?')
    assert len(stack.search(QUERY, k=20, filter={"ext": "html", "year": 2019}).hits) == 3


def test_conditions_that_each_match_but_not_together_are_named_with_their_counts(stack):
    result = stack.search(QUERY, k=20, filter={"ext": "html", "year": 2024})
    assert result.hint == ('the filter matches no chunk, though each of its conditions matches some: '
                           'ext = "html" (3 chunks), year = 2024 (2 chunks); no chunk meets them all')


def test_a_filter_that_lets_chunks_through_says_the_query_matched_none(stack):
    result = stack.search("zebra", k=20, filter={"ext": "md"})
    assert result.hits == []
    assert result.hint == "6 chunks pass the filter; none matches the query"
    assert stack.search("zebra", k=20).hint is None  # no filter: no hint
    assert [r.hint for r in stack.search_batch(["zebra", QUERY], k=20, filter={"ext": "txt"})] == [
        "2 chunks pass the filter; none matches the query", None]


def test_the_pipelines_own_filter_bounds_what_a_hint_names(root):
    scoped = {**CONFIG, "filter": {"ext": {"$in": ["md", "html"]}}}
    with stagegraph.open(scoped, collection=root, watch=None) as s:
        result = s.search(QUERY, k=20, filter={"ext": ".txt"})
        assert result.hint == 'the filter matches no chunk: ext = ".txt" matches nothing; ext has md (6), html (3)'


def test_an_empty_collection_says_so(tmp_path):
    Collection.create(tmp_path / "empty.sg", CONFIG).close()
    with stagegraph.open(CONFIG, collection=tmp_path / "empty.sg", watch=None) as s:
        assert s.search(QUERY, filter={"ext": "md"}).hint == "the collection holds no chunks yet"
        assert s.search(QUERY).hint is None


def test_double_equals_is_equality_and_any_other_operator_is_refused_in_one_line(stack):
    assert parse_cli(["ext==html"]) == {"ext": "html"} == parse_cli(["ext=html"])
    assert exts(stack.search(QUERY, k=20, filter=parse_cli(["ext==html"]))) == {"html"}
    with pytest.raises(FilterError) as caught:
        parse_cli(["ext=>md"])
    assert str(caught.value) == (
        "cannot read --filter 'ext=>md': '=>' is not an operator; write FIELD=VALUE (or FIELD==VALUE), FIELD!=VALUE, "
        "FIELD>=N (or > < <=), 'FIELD in A,B', 'FIELD notin A,B', or a JSON object "
        '(quote a value that starts with = < > or !: FIELD="=x")')
    for bad in ("year=<2020", "ext===md", "ext<>md", "ext!==md"):
        with pytest.raises(FilterError, match="is not an operator"):
            parse_cli([bad])
    assert parse_cli(['op="=x"']) == {"op": "=x"}  # the quoting the message names


def search_cli(capsys, root, tmp_path, *filters: str, query: str = QUERY) -> tuple[int, str, str]:
    """`stagegraph search` over the collection: its exit code, stdout and stderr."""
    config = tmp_path / "bm25.yaml"
    config.write_text("pipeline:\n  - {type: bm25, name: bm25, k: 20}\n")
    args = ["--quiet", "search", str(config), query, "--collection", str(root), "--top", "20"]
    for f in filters:
        args += ["--filter", f]
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_prints_the_hint_instead_of_the_stopwords_guess(root, tmp_path, capsys):
    code, out, _ = search_cli(capsys, root, tmp_path, "ext=.html")
    assert code == 0
    assert f"no results: {HTML_HINT}\n" in out
    assert "stopwords" not in out
    code, out, _ = search_cli(capsys, root, tmp_path, 'ext="html"')  # the suggestion, as the hint writes it
    assert code == 0 and out.count("d0") == 3 and "no results" not in out  # d06, d07, d08
    code, out, _ = search_cli(capsys, root, tmp_path, "ext==html")
    assert code == 0 and out.count("d0") == 3
    code, out, _ = search_cli(capsys, root, tmp_path, query="zebra")  # no filter: the old guess
    assert "no results (is the query all stopwords?)" in out
    code, _, err = search_cli(capsys, root, tmp_path, "ext=>md")
    assert code == 2 and "'=>' is not an operator" in err


def test_http_sends_the_hint_only_when_there_is_one(root):
    service = Service.open(CONFIG, root, ServeSettings())
    try:
        with TestClient(create_app(service)) as client:
            body = client.post("/v1/search", json={"query": QUERY, "k": 20, "filter": {"ext": ".html"}}).json()
            assert body["hits"] == [] and body["hint"] == HTML_HINT
            body = client.post("/v1/search", json={"query": QUERY, "k": 20, "filter": {"ext": "html"}}).json()
            assert len(body["hits"]) == 3 and "hint" not in body
            batch = client.post("/v1/search/batch", json={"queries": ["zebra", QUERY], "k": 20,
                                                          "filter": {"ext": "md"}}).json()
            assert [r.get("hint") for r in batch["results"]] == ["6 chunks pass the filter; none matches the query", None]
    finally:
        service.close()


def test_a_field_of_mixed_kinds_and_long_values_give_a_hint_whose_suggestion_matches():
    from stagegraph.corpora.filter_hints import explain_empty
    from stagegraph.corpora.filters import MetadataIndex
    from stagegraph.corpora.types import Corpus

    metadata = [{"mix": [1, 2]}, {"mix": "Draft"}, {"mix": "Draft"}, {"mix": 5}]
    ids = [f"r{i}" for i in range(len(metadata))]
    corpus = Corpus(ids, [""] * 4, ["x"] * 4, doc_ids=ids, metadata=metadata)
    hint = explain_empty({"mix": [1, 3]}, corpus)
    assert hint == 'the filter matches no chunk: mix = [1, 3] matches nothing; mix has Draft (2), [1, 2] (1), 5 (1); did you mean [1, 2]?'
    assert MetadataIndex.of(corpus).mask({"mix": [1, 2]}).sum() == 1
    assert explain_empty({"mix": "draft"}, corpus).endswith('did you mean "Draft"?')
    long = explain_empty({"mix": {"$in": ["y" * 5000] * 50}}, corpus)  # cut short, and no suggestion for it
    assert long.startswith('the filter matches no chunk: mix in ["yyyy') and '..."]' not in long and "...]" in long
    assert "did you mean" not in long
