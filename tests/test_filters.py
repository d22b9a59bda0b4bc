"""Metadata filters: the expression language, and every retriever applying it before its top k."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tiny_models import WORDS, make_tiny_sentence_transformer

import stagegraph as sg
import stagegraph.indexes.dense as dense_index
from stagegraph.collection import Collection
from stagegraph.corpora.filters import FilterError, MetadataIndex, parse_cli
from stagegraph.corpora.types import Corpus, Queries
from stagegraph.pipeline.stage import Environment

META = [
    {"ext": "md", "year": 2023, "tags": ["gpu"], "date": "2024-02-01"},
    {"ext": "txt", "year": 2024, "tags": ["cuda", "llama"], "date": "2024-06-30"},
    {"ext": "md", "year": 2025, "draft": True},
    {},
]


def index() -> MetadataIndex:
    return MetadataIndex(META)


@pytest.mark.parametrize(
    ("expression", "rows"),
    [
        ({"ext": "md"}, [0, 2]),
        ({"ext": {"$ne": "md"}}, [1, 3]),  # a document without the field matches $ne (Mongo's reading)
        ({"year": {"$gte": 2024}}, [1, 2]),
        ({"year": {"$gt": 2023, "$lt": 2025}}, [1]),
        ({"ext": "md", "year": {"$gte": 2024}}, [2]),
        ({"tags": "gpu"}, [0]),  # equality on a list field: contains
        ({"tags": {"$in": ["gpu", "cuda"]}}, [0, 1]),
        ({"tags": {"$nin": ["gpu"]}}, [1, 2, 3]),
        ({"date": {"$lt": "2024-03-01"}}, [0]),
        ({"date": {"$gte": "2024-06-30T00:00:00"}}, [1]),
        ({"draft": True}, [2]),
        ({"tags": {"$exists": False}}, [2, 3]),
        ({"$or": [{"ext": "txt"}, {"year": 2025}]}, [1, 2]),
        ({"$and": [{"ext": "md"}, {"$or": [{"year": 2023}, {"draft": True}]}]}, [0, 2]),
        ({"nowhere": {"$exists": False}}, [0, 1, 2, 3]),
        ({"ext": {"$in": []}}, []),
    ],
)
def test_each_operator_selects_the_rows_it_names(expression, rows):
    assert np.flatnonzero(index().mask(expression)).tolist() == rows


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ({"extension": "md"}, r"^unknown filter field 'extension': no document has it; check its spelling"),
        ({"ext": {"$gt": "a"}}, r"\$gt does not fit field ext \(text\): comparisons take numbers or dates"),
        ({"year": {"$gte": "recent"}}, r"field 'year' holds numbers: give a number, not 'recent'"),
        ({"date": {"$lt": 5}}, r"field 'date' holds dates: compare it with an ISO date"),
        ({"ext": {"$like": "m%"}}, r"unknown operator '\$like' on field 'ext'"),
        ({"$or": {"ext": "md"}}, r"\$or takes a non-empty list of filters"),
        ({"tags": {"$in": "gpu"}}, r"\$in on 'tags' takes a list of values"),
    ],
)
def test_a_filter_that_does_not_fit_the_metadata_is_one_clear_error(expression, message):
    with pytest.raises(FilterError, match=message):
        index().mask(expression)


def test_the_command_line_short_form():
    assert parse_cli(["ext=md"]) == {"ext": "md"}
    assert parse_cli(["year>=2024", "tags in gpu,cuda"]) == {"$and": [{"year": {"$gte": 2024}}, {"tags": {"$in": ["gpu", "cuda"]}}]}
    assert parse_cli(["ext != md"]) == {"ext": {"$ne": "md"}}
    assert parse_cli(['{"draft": true}']) == {"draft": True}
    assert parse_cli([]) is None
    with pytest.raises(FilterError, match="cannot read --filter 'year~2024'"):
        parse_cli(["year~2024"])


# -- inside the retrievers ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st"))


def random_corpus(n: int = 400, seed: int = 0) -> Corpus:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) for _ in range(n)]
    meta = [{"ext": rng.choice(["md", "txt", "pdf"]), "year": rng.choice([2021, 2022, 2023, 2024]),
             "tags": rng.sample(["gpu", "cuda", "cpu", "llama"], k=rng.randint(0, 2))} for _ in range(n)]
    return Corpus([f"d{i}" for i in range(n)], [""] * n, texts, metadata=meta)


QUERIES = ["protein cancer cell", "heat flow wing", "dense vector rank", "query document index", "the risk of disease"]
FILTERS = [{"ext": "md"}, {"year": {"$gte": 2024}, "tags": {"$in": ["gpu"]}}, {"$or": [{"ext": "pdf"}, {"year": 2021}]},
           {"ext": "md", "year": 2022, "tags": "llama"}]


def _allowed(corpus: Corpus, expression) -> set[int]:
    return set(np.flatnonzero(MetadataIndex.of(corpus).mask(expression)).tolist())


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,Flat", "IVF8,PQ8x4"])
@pytest.mark.parametrize("path", ["exact over the allowed rows", "FAISS selector"])
def test_every_dense_index_type_returns_only_allowed_rows_even_when_k_exceeds_them(tiny_model, tmp_path, monkeypatch, factory, path):
    if path == "FAISS selector":
        monkeypatch.setattr(dense_index, "BRUTE_FORCE_MAX", 0)
    corpus = random_corpus()
    retriever = sg.DenseRetriever(model=tiny_model, index=factory, k=100, name="dense")
    retriever.warm_up(Environment(corpus, work_dir=tmp_path, progress=False))
    for expression in FILTERS:
        allowed = _allowed(corpus, expression)
        queries = Queries([f"q{i}" for i in range(len(QUERIES))], QUERIES, [expression] * len(QUERIES))
        for ranking in retriever.run(queries, []):
            rows = set(ranking.doc_rows.tolist())
            assert rows <= allowed, (factory, expression)  # no disallowed row, no score-0 padding
            if len(allowed) <= 100 and factory in ("Flat", "IVF8,Flat"):
                assert rows == allowed  # k beyond the allowed rows: every allowed one, nothing else


def test_bm25_filters_before_its_top_k_and_scores_with_the_whole_index(tmp_path):
    corpus = random_corpus()
    retriever = sg.BM25Retriever(k=50, name="bm25")
    retriever.warm_up(Environment(corpus, work_dir=tmp_path, progress=False))
    plain = sg.BM25Retriever(k=len(corpus), name="all")
    plain.warm_up(Environment(corpus, work_dir=tmp_path, progress=False))
    for expression in FILTERS:
        allowed = _allowed(corpus, expression)
        queries = Queries(["q"] * 1, [QUERIES[0]], [expression])
        got = retriever.run(queries, [])[0]
        everything = plain.run(Queries(["q"], [QUERIES[0]]), [])[0]
        keep = np.isin(everything.doc_rows, list(allowed))
        # the best 50 among allowed documents: the unfiltered ranking, restricted, cut (Lucene's filter)
        np.testing.assert_array_equal(got.doc_rows, everything.doc_rows[keep][:50])
        np.testing.assert_array_equal(got.scores, everything.scores[keep][:50])


def test_a_filter_matching_nothing_returns_no_hits_not_an_error(tmp_path, tiny_model):
    corpus = random_corpus()
    pipe = (sg.BM25Retriever(k=20, name="bm25") | sg.DenseRetriever(model=tiny_model, k=20, name="dense")) \
        >> sg.CandidatePool("rrf", k=20, name="pool")
    pipe.warm_up(Environment(corpus, work_dir=tmp_path, progress=False))
    assert pipe.search("protein cancer", filter={"year": 1999}).hits == []
    with pytest.raises(FilterError, match="unknown filter field 'yeer'"):
        pipe.search("protein cancer", filter={"yeer": 2024})


def test_a_hybrid_pipeline_never_returns_a_disallowed_document_from_either_leg(tmp_path, tiny_model):
    corpus = random_corpus(seed=3)
    pipe = (sg.BM25Retriever(k=30, name="bm25") | sg.DenseRetriever(model=tiny_model, k=30, name="dense")) \
        >> sg.CandidatePool("rrf", k=30, name="pool")
    pipe.warm_up(Environment(corpus, work_dir=tmp_path, progress=False))
    rng = random.Random(5)
    for trial in range(20):
        expression = rng.choice(FILTERS + [{"tags": {"$nin": ["gpu", "cpu"]}}, {"ext": {"$ne": "txt"}}])
        allowed = {corpus.ids[r] for r in _allowed(corpus, expression)}
        result = pipe.search(rng.choice(QUERIES), k=30, filter=expression)
        assert {h.id for h in result.hits} <= allowed, (trial, expression)
        for hit in result.hits:  # and no leg put a disallowed document into the pool
            assert hit.stages["bm25"].rank is not None or hit.stages["dense"].rank is not None


def test_filtered_exact_search_equals_a_collection_of_only_the_allowed_documents(tmp_path, tiny_model):
    """For exact dense search: the same ids in the same order as searching a collection that holds
    only the allowed documents. (BM25 scores with the whole collection's statistics, as Lucene does,
    so its equal-order check is the restricted ranking of the test above.)"""
    rng = random.Random(2)
    docs = [{"id": f"doc{i:03d}", "text": " ".join(rng.choice(WORDS) for _ in range(12)),
             "metadata": {"ext": rng.choice(["md", "txt"]), "year": rng.choice([2023, 2024])}} for i in range(80)]
    config = {"pipeline": [{"type": "dense", "name": "dense", "k": 100, "model": tiny_model}]}
    expression = {"ext": "md", "year": 2024}
    everything = Collection.create(tmp_path / "all", config)
    everything.upsert(docs)
    only = Collection.create(tmp_path / "only", config)
    only.upsert([d for d in docs if all(d["metadata"][k] == v for k, v in expression.items())])
    with sg.open(collection=tmp_path / "all") as a, sg.open(collection=tmp_path / "only") as b:
        for query in QUERIES:
            filtered = a.search(query, k=100, filter=expression).hits
            alone = b.search(query, k=100).hits
            assert [h.id for h in filtered] == [h.id for h in alone] and filtered
            np.testing.assert_allclose([h.score for h in filtered], [h.score for h in alone], rtol=0, atol=1e-5)
    everything.close(), only.close()


def test_filters_in_yaml_stage_and_pipeline_settings_and_on_the_command_line(tmp_path, capsys):
    from stagegraph.cli.app import main

    corpus_dir = tmp_path / "notes"
    corpus_dir.mkdir()
    for i, (ext, year) in enumerate([("md", 2024), ("md", 2022), ("txt", 2024)]):
        (corpus_dir / f"n{i}.{ext}").write_text(f"---\nyear: {year}\n---\nheat flow note {i}\n" if ext == "md" else f"heat flow note {i}\n")
    assert main(["ingest", str(corpus_dir), "--collection", str(tmp_path / "c"), "--config", "bm25", "-q"]) == 0
    assert main(["search", "bm25", "heat flow", "--collection", str(tmp_path / "c"), "--filter", "ext=md",
                 "--filter", "year>=2024", "-q"]) == 0
    out = capsys.readouterr().out
    assert "n0.md#0" in out and "n1.md#0" not in out and "n2.txt#0" not in out
    assert main(["search", "bm25", "heat", "--collection", str(tmp_path / "c"), "--filter", "yeer=1"]) == 2
    assert "unknown filter field 'yeer'" in capsys.readouterr().err
    staged = sg.Pipeline.from_yaml("pipeline:\n  - {type: bm25, name: bm25, k: 10, filter: {ext: txt}}\n")
    whole = sg.Pipeline.from_yaml("filter: {ext: md}\npipeline:\n  - {type: bm25, name: bm25, k: 10}\n")
    assert whole.filter == {"ext": "md"} and sg.Pipeline.from_yaml(whole.to_yaml()).filter == {"ext": "md"}
    with sg.open(staged, collection=tmp_path / "c") as s1, sg.open(whole, collection=tmp_path / "c") as s2:
        assert [h.doc_id for h in s1.search("heat flow").hits] == ["n2.txt"]
        assert sorted(h.doc_id for h in s2.search("heat flow").hits) == ["n0.md", "n1.md"]
        assert [h.doc_id for h in s2.search("heat flow", filter={"year": 2022}).hits] == ["n1.md"]
