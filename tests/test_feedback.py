"""Pseudo-relevance feedback (`expand:` of the BM25 stage): RM3 and Rocchio weights by hand, the second
pass equal to a direct weighted search, filters, collections, YAML, errors, cache keys and sweeps.
Parity with Pyserini 0.25 is measured by benchmarks/prf_parity.py and pinned in
configs/expectations/bm25-rm3.yaml (docs/feedback.md)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import stagegraph as sg
from stagegraph.corpora.types import Corpus, Queries
from stagegraph.errors import ConfigError, StageError
from stagegraph.indexes.bm25 import BM25Index, BM25Settings
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.retrieve.bm25 import BM25Retriever
from stagegraph.stages.retrieve.feedback import Expansion

PLAIN = {"stemmer": None}  # no stemming: the hand computations read the words as written
CORPUS = Corpus(["d0", "d1", "d2", "d3"], [""] * 4,
                ["apple banana apple cherry", "apple date", "egg fig", "grape egg fig"])


def bound(tmp_path, corpus=CORPUS, **expand):
    stage = BM25Retriever(k=10, tokenizer=PLAIN, expand={"max_df": 1.0, **expand})
    return stage, stage.bind(Environment(corpus=corpus, work_dir=tmp_path, progress=False))


def test_rm3_weights_equal_a_hand_computation(tmp_path):
    _, search = bound(tmp_path, fb_docs=2, fb_terms=10, original_query_weight=0.5)
    first = search.index.search_terms(["apple"], 10)
    assert list(first.rows) == [0, 1]
    s0, s1 = map(float, first.scores)
    # d0 = {apple 2, banana 1, cherry 1} (total 4), d1 = {apple 1, date 1} (total 2); each count / total x score
    model = {"apple": 2 / 4 * s0 + 1 / 2 * s1, "banana": s0 / 4, "cherry": s0 / 4, "date": s1 / 2}
    total = sum(model.values())
    want = {t: 0.5 * (t == "apple") + 0.5 * w / total for t, w in model.items()}
    got = search.expanded_query("apple")
    assert got.keys() == want.keys()
    for term in want:
        assert math.isclose(got[term], want[term], rel_tol=1e-9), term


def test_rm3_cuts_each_document_then_the_model_to_fb_terms(tmp_path):
    _, search = bound(tmp_path, fb_docs=2, fb_terms=1, original_query_weight=0.0)
    # d0 keeps apple (2), d1 keeps apple (tie with date: by term); the model is apple alone
    assert search.expanded_query("apple") == {"apple": 1.0}


def test_rm3_drops_frequent_terms_and_keeps_anserinis_term_filter(tmp_path):
    corpus = Corpus([f"d{i}" for i in range(12)], [""] * 12,
                    ["apple zeta x_y"] + ["apple"] + [f"filler{i} zeta" for i in range(10)])
    stage = BM25Retriever(k=10, tokenizer=PLAIN, expand={"fb_docs": 1, "original_query_weight": 0.0})
    search = stage.bind(Environment(corpus=corpus, work_dir=tmp_path, progress=False))
    # zeta is in 11 of 12 documents (> 10%), x_y fails [a-z0-9]+, apple (2 of 12 = 16.7%) is too frequent too
    assert search.expanded_query("apple") == {}
    stage = BM25Retriever(k=10, tokenizer=PLAIN, expand={"fb_docs": 1, "original_query_weight": 0.0, "max_df": 0.2})
    search = stage.bind(Environment(corpus=corpus, work_dir=tmp_path, progress=False))
    assert search.expanded_query("apple") == {"apple": 1.0}


def test_rocchio_weights_equal_a_hand_computation(tmp_path):
    _, search = bound(tmp_path, method="rocchio", fb_docs=2, fb_terms=10, alpha=1.0, beta=0.75)
    # each document's counts over their L2 norm, averaged: d0 = (2, 1, 1) / sqrt(6), d1 = (1, 1) / sqrt(2)
    r6, r2 = math.sqrt(6), math.sqrt(2)
    mean = {"apple": (2 / r6 + 1 / r2) / 2, "banana": 1 / r6 / 2, "cherry": 1 / r6 / 2, "date": 1 / r2 / 2}
    length = math.sqrt(sum(w * w for w in mean.values()))
    want = {t: (t == "apple") * 1.0 + 0.75 * w / length for t, w in mean.items()}
    got = search.expanded_query("apple")
    assert got.keys() == want.keys()
    for term in want:
        assert math.isclose(got[term], want[term], rel_tol=1e-9), term


def test_rocchio_subtracts_the_bottom_documents(tmp_path):
    _, search = bound(tmp_path, method="rocchio", fb_docs=1, fb_terms=10, alpha=1.0, beta=0.0, gamma=1.0,
                      bottom_fb_docs=1)
    # the bottom of the first pass is d1 (apple date): apple keeps 1 - 1/sqrt(2), date goes negative and is dropped
    got = search.expanded_query("apple")
    assert list(got) == ["apple"] and math.isclose(got["apple"], 1 - 1 / math.sqrt(2), rel_tol=1e-9)


def test_the_second_pass_is_a_direct_weighted_bm25_search(tmp_path):
    stage, search = bound(tmp_path, fb_docs=2, fb_terms=5)
    (ranking,) = search.run(Queries(["q"], ["apple"]))
    direct = search.index.search_weighted(search.expanded_query("apple"), 10)
    np.testing.assert_array_equal(ranking.doc_rows, direct.rows)
    np.testing.assert_array_equal(ranking.scores, direct.scores)
    assert set(ranking.doc_rows) == {0, 1}  # banana, cherry, date: only in the feedback documents


def test_weights_equal_to_counts_give_the_unweighted_search():
    index = BM25Index.build(CORPUS, BM25Settings(tokenizer=PLAIN))
    plain = index.search_terms(["apple", "apple", "egg"], 10)
    weighted = index.search_weighted({"apple": 2.0, "egg": 1.0}, 10)
    np.testing.assert_array_equal(plain.rows, weighted.rows)
    np.testing.assert_array_equal(plain.scores, weighted.scores)


def test_a_filter_applies_to_both_passes(tmp_path):
    corpus = Corpus(["d0", "d1", "d2"], [""] * 3, ["apple banana", "apple banana", "banana kiwi"],
                    metadata=[{"lang": "en"}, {"lang": "de"}, {"lang": "en"}])
    stage = BM25Retriever(k=10, tokenizer=PLAIN, filter={"lang": "en"}, expand={"max_df": 1.0, "fb_docs": 3})
    (ranking,) = stage.bind(Environment(corpus=corpus, work_dir=tmp_path, progress=False)).run(Queries(["q"], ["apple"]))
    assert set(ranking.doc_rows) == {0, 2}  # d1 neither fed back nor returned


def test_yaml_round_trip_and_pipeline_equality(tmp_path):
    text = """
pipeline:
  - type: bm25
    k: 10
    tokenizer: {stemmer: null}
    expand: {method: rm3, fb_docs: 2, fb_terms: 5, original_query_weight: 0.3, max_df: 1.0}
"""
    pipe = Pipeline.from_yaml(text)
    again = Pipeline.from_yaml(pipe.to_yaml())
    assert again.to_config() == pipe.to_config()
    (step,) = again.steps
    assert step.stage.config.expand == Expansion(fb_docs=2, fb_terms=5, original_query_weight=0.3, max_df=1.0)
    python = BM25Retriever(k=10, tokenizer=PLAIN, expand=Expansion(fb_docs=2, fb_terms=5, original_query_weight=0.3,
                                                                  max_df=1.0))
    assert python.fingerprint() == step.stage.fingerprint()
    assert python.fingerprint() != BM25Retriever(k=10, tokenizer=PLAIN).fingerprint()
    assert python.fingerprint() != BM25Retriever(k=10, tokenizer=PLAIN, expand={"fb_docs": 3, "fb_terms": 5,
                                                  "original_query_weight": 0.3, "max_df": 1.0}).fingerprint()


@pytest.mark.parametrize("entry, message", [
    ({"type": "bm25", "expand": {"fb_doc": 3}}, "expand.fb_doc: unknown field"),
    ({"type": "bm25", "expand": {"method": "bo1"}}, "expand.method"),
    ({"type": "bm25", "backend": "rank_bm25", "expand": {}}, "expand (query expansion) needs backend: sparse"),
    ({"type": "rm3"}, "'rm3' is not a stage type: query expansion is a setting of the BM25 stage"),
])
def test_errors_are_one_line_with_the_fix(entry, message):
    with pytest.raises(ConfigError) as info:
        Pipeline.from_config({"pipeline": [entry]})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_sweep_sets_a_nested_setting():
    from stagegraph.evaluation.sweep import SweepError, with_setting

    pipe = Pipeline.from_config({"pipeline": [{"type": "bm25", "expand": {"fb_docs": 10}}]})
    swept = with_setting(pipe, "bm25", "expand.fb_docs", 5)
    assert swept.steps[0].stage.config.expand.fb_docs == 5
    with pytest.raises(SweepError, match="expand.fb_docs, expand.fb_terms"):
        with_setting(pipe, "bm25", "expand.nope", 5)
    plain = Pipeline.from_config({"pipeline": [{"type": "bm25"}]})
    with pytest.raises(SweepError, match="set 'expand' in the config first"):
        with_setting(plain, "bm25", "expand.fb_docs", 5)


def test_a_collection_expands_like_an_index_over_its_live_chunks(tmp_path):
    from stagegraph.collection import Collection
    from stagegraph.collection.merges import MergePolicy
    from stagegraph.corpora.ingest import ChunkerConfig

    config = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 20, "expand": {"fb_docs": 3, "fb_terms": 5,
                                                                                  "max_df": 0.5}}]}
    # 40 words: few exact ties at the feedback cutoff, which an index breaks by row and a collection by
    # chunk key (checked below: each query's first pass has no tie at rank fb_docs)
    words = [f"{a}{b}" for a in ("alpha", "beta", "gamma", "delta", "omega") for b in "bcdfghjk"]
    rng = random.Random(5)
    docs = {f"d{i:02d}": {"id": f"d{i:02d}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))}
            for i in range(30)}
    store = Collection.create(tmp_path / "c", config, chunker=ChunkerConfig(kind="none"))
    store.merge_policy = MergePolicy(segments_per_tier=1000, deletes_pct_allowed=100.0)
    store.upsert(list(docs.values())[:15])
    store.upsert(list(docs.values())[15:])
    gone = [f"d{i:02d}" for i in range(0, 30, 4)]
    store.delete(gone)
    ids = sorted(d for d in docs if d not in gone)
    plain = Corpus([f"{d}#0" for d in ids], [""] * len(ids), [docs[d]["text"] for d in ids])
    single = BM25Retriever(k=20, expand={"fb_docs": 3, "fb_terms": 5, "max_df": 0.5}).bind(
        Environment(corpus=plain, work_dir=tmp_path / "w", progress=False))
    with sg.open(config, collection=tmp_path / "c") as stack:
        untied = [q for q in (f"{a} {b}" for a, b in zip(words, words[7:]))
                  if len(set(single.index.search(q, 4).scores[2:4].tolist())) == 2]
        assert len(untied) >= 10
        for query in untied:
            (ranking,) = single.run(Queries(["q"], [query]))
            want = {plain.ids[r]: float(s) for r, s in zip(ranking.doc_rows, ranking.scores)}
            got = {h.id: h.score for h in stack.search(query, k=20).hits}
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-6)
        # a shard of a sharded collection scores with given statistics: expansion refuses, in one line
        with pytest.raises(StageError, match="over one shard would expand from that shard's feedback documents"):
            stack.runner.bound("bm25").run(Queries(["q"], ["alphab"]), given=[(10, 100, {"alphab": 1})])
    store.close()


def test_a_sharded_collection_read_in_one_process_expands_as_one_collection(tmp_path):
    """Two shards read as one collection (what `serve` does without `--executor ray`): the feedback
    documents and statistics are the whole collection's, so every hit and score equals an unsharded
    collection's (on Ray: tests/test_shards_ray.py)."""
    from stagegraph.collection import Collection
    from stagegraph.collection.sharded import ShardedCollection
    from stagegraph.corpora.ingest import ChunkerConfig

    config = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 20, "expand": {"fb_docs": 3, "fb_terms": 5}}]}
    rng = random.Random(9)
    words = [f"{a}{b}" for a in ("alpha", "beta", "gamma") for b in "bcdfg"]
    docs = [{"id": f"d{i:02d}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 10)))} for i in range(24)]
    with Collection.create(tmp_path / "one", config, chunker=ChunkerConfig(kind="none")) as one, \
            ShardedCollection.create(tmp_path / "split", config, shards=2, chunker=ChunkerConfig(kind="none")) as split:
        one.upsert(docs)
        split.upsert(docs)
    with sg.open(config, collection=tmp_path / "one") as a, sg.open(config, collection=tmp_path / "split") as b:
        for query in ("alphab betac", "gammad", "alphag gammab betaf"):
            want = [(h.id, h.score) for h in a.search(query, k=10).hits]
            got = [(h.id, h.score) for h in b.search(query, k=10).hits]
            assert want and [i for i, _ in got] == [i for i, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-6)
