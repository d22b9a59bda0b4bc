"""The learned-sparse (SPLADE-style) stage with a tiny random masked-language model built here."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.errors import ConfigError, StageError
from stagegraph.pipeline.registry import stage_class
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.base import EmptyQueryWarning
from stagegraph.stages.retrieve.sparse import SparseRetriever, SparseRetrieverConfig
from tiny_models import WORDS, _bert_config, _write_tokenizer

QUERIES = Queries(["q1", "q2", "q3"], ["protein cancer cell", "heat flow over a wing", "dense vector rank"])


def make_tiny_splade(path: Path, *, inference_free: bool = False, seed: int = 0) -> str:
    """A tiny SPLADE model (random BertForMaskedLM + SpladePooling), or a Router one whose query side
    is the library's inference-free `SparseStaticEmbedding`."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import Router, SparseStaticEmbedding, SpladePooling, Transformer
    from transformers import BertForMaskedLM

    hf = path.parent / (path.name + "_hf")
    tokenizer = _write_tokenizer(hf, 128)
    torch.manual_seed(seed)
    BertForMaskedLM(_bert_config(len(tokenizer), 128)).save_pretrained(str(hf))
    document = [Transformer(str(hf), transformer_task="fill-mask", max_seq_length=128), SpladePooling("max")]
    if inference_free:
        static = SparseStaticEmbedding(tokenizer=tokenizer, frozen=False)
        with torch.no_grad():
            static.weight.copy_(torch.rand(static.weight.shape, generator=torch.Generator().manual_seed(1)) + 0.5)
        modules = [Router.for_query_document(query_modules=[static], document_modules=document)]
    else:
        modules = document
    SparseEncoder(modules=modules, device="cpu").save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def splade(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_splade(tmp_path_factory.mktemp("models") / "tiny-splade")


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(40)]
    return Corpus([f"doc{i}" for i in range(40)], [""] * 40, texts)


@pytest.fixture()
def env(corpus: Corpus, tmp_path: Path) -> Environment:
    return Environment(corpus, work_dir=tmp_path / "work", progress=False)


def dense_matrix(bound) -> np.ndarray:
    import scipy.sparse as sp

    s = bound.scores
    return sp.csc_matrix((s.data, s.indices, s.indptr), shape=(s.n_docs, len(s.indptr) - 1)).toarray()


def check_brute_force(bound, corpus: Corpus, rankings, k: int) -> None:
    docs = dense_matrix(bound)
    for text, ranking in zip(QUERIES.texts, rankings):
        ids, weights = bound.query_weights(text)
        q = np.zeros(docs.shape[1], dtype=np.float32)
        q[ids] = weights
        brute = docs.astype(np.float64) @ q
        expected = np.sort(brute[brute > 0])[::-1][:k]
        assert len(ranking) == len(expected) > 0
        np.testing.assert_allclose(ranking.scores, expected, rtol=1e-5)
        np.testing.assert_allclose(brute[ranking.doc_rows], ranking.scores, rtol=1e-5)  # each row's own score
        assert np.all(np.diff(ranking.scores) <= 0)


def test_weights_equal_the_library_and_top_k_equals_brute_force(splade: str, env: Environment, corpus: Corpus) -> None:
    from sentence_transformers import SparseEncoder

    stage = SparseRetriever(model=splade, k=7)
    bound = stage.bind(env)
    reference = SparseEncoder(splade, device="cpu")
    expected_docs = reference.encode_document(corpus.doc_texts(), convert_to_sparse_tensor=True).to_dense().numpy()
    np.testing.assert_allclose(dense_matrix(bound), expected_docs, rtol=1e-6, atol=1e-7)
    for text in QUERIES.texts:
        expected_q = reference.encode_query([text], convert_to_sparse_tensor=True).to_dense().numpy()[0]
        ids, weights = bound.query_weights(text)
        got = np.zeros_like(expected_q)
        got[ids] = weights
        np.testing.assert_allclose(got, expected_q, rtol=1e-6, atol=1e-7)
    rankings = bound.run(QUERIES, [])
    check_brute_force(bound, corpus, rankings, 7)


def test_inference_free_plain_model_is_token_ids_weight_one(splade: str, env: Environment, corpus: Corpus) -> None:
    from sentence_transformers import SparseEncoder

    bound = SparseRetriever(model=splade, k=5, query_mode="inference_free").bind(env)
    assert not bound.static_query
    tokenizer = SparseEncoder(splade, device="cpu").tokenizer
    for text in QUERIES.texts:
        ids, weights = bound.query_weights(text)
        assert sorted(ids.tolist()) == sorted(set(tokenizer(text, add_special_tokens=False)["input_ids"]))
        assert np.all(weights == 1.0)
    check_brute_force(bound, corpus, bound.run(QUERIES, []), 5)


def test_inference_free_router_model_uses_the_library_static_weights(tmp_path: Path, env: Environment,
                                                                     corpus: Corpus) -> None:
    from sentence_transformers import SparseEncoder

    model = make_tiny_splade(tmp_path / "tiny-if", inference_free=True)
    bound = SparseRetriever(model=model, k=5, query_mode="inference_free").bind(env)
    assert bound.static_query
    reference = SparseEncoder(model, device="cpu")
    for text in QUERIES.texts:
        expected = reference.encode_query([text], convert_to_sparse_tensor=True).to_dense().numpy()[0]
        ids, weights = bound.query_weights(text)
        got = np.zeros_like(expected)
        got[ids] = weights
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert len(set(weights.tolist())) > 1  # the static embedding's weights, not 1 each
    docs = reference.encode_document(corpus.doc_texts(), convert_to_sparse_tensor=True).to_dense().numpy()
    np.testing.assert_allclose(dense_matrix(bound), docs, rtol=1e-6, atol=1e-7)
    check_brute_force(bound, corpus, bound.run(QUERIES, []), 5)


def test_weights_are_cached_and_filters_select_before_top_k(splade: str, env: Environment, corpus: Corpus,
                                                            monkeypatch) -> None:
    import stagegraph.stages.retrieve.sparse as module

    first = SparseRetriever(model=splade, k=40).bind(env)
    monkeypatch.setattr(module, "document_weights", lambda *a, **kw: pytest.fail("re-encoded a cached corpus"))
    again = SparseRetriever(model=splade, k=40, query_mode="inference_free").bind(env)
    np.testing.assert_array_equal(again.scores.data, first.scores.data)
    rebound = first.rebind(env)  # another generation or corpus: the model is reused, not loaded again
    assert rebound.model is first.model and rebound is not first
    full = first.run(QUERIES, [])
    rows = [f"doc{i}" for i in range(0, 40, 2)]
    filtered_corpus = Corpus(corpus.ids, corpus.titles, corpus.texts,
                             metadata=[{"even": i % 2 == 0} for i in range(40)])
    filtered = SparseRetriever(model=splade, k=3, filter={"even": True}).bind(
        Environment(filtered_corpus, work_dir=env.work_dir, progress=False))
    for whole, some in zip(full, filtered.run(QUERIES, [])):
        keep = [r for r in whole.doc_rows.tolist() if r % 2 == 0][:3]
        assert some.doc_rows.tolist() == keep and all(f"doc{r}" in rows for r in keep)


def test_config_yaml_fingerprint_and_errors(splade: str, env: Environment) -> None:
    assert stage_class("sparse") is SparseRetriever
    config = SparseRetrieverConfig(name="sparse", k=5, model=splade, query_mode="inference_free")
    built = SparseRetriever.from_config(config)
    assert built.to_config() == {"type": "sparse", **config.model_dump(mode="json")}
    assert built.fingerprint() != SparseRetriever(model=splade, k=5).fingerprint()
    assert SparseRetriever(model=splade, batch_size=4).fingerprint() == SparseRetriever(model=splade).fingerprint()
    with pytest.raises(ConfigError) as bad:
        SparseRetriever(model=splade, query_mode="idf")
    assert "query_mode" in str(bad.value) and "\n" not in str(bad.value)
    with pytest.raises(ConfigError, match="model"):
        SparseRetriever(k=5)
    with pytest.raises(StageError, match="max_seq_length 4096 is more than model .* takes \\(128 tokens\\)"):
        SparseRetriever(model=splade, max_seq_length=4096).bind(env)
    assert SparseRetriever(model=splade, max_seq_length=16).bind(env).model.max_seq_length == 16
    with pytest.raises(StageError, match="device"):
        SparseRetriever(model=splade, device="tpu").bind(env)
    with pytest.raises(StageError, match="no sparse document weights at .* may not build one"):
        SparseRetriever(model=splade).bind(Environment(env.corpus, work_dir=env.work_dir / "empty", read_only=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = SparseRetriever(model=splade).bind(env).run(Queries(["e"], ["  "]), [])
    assert len(out[0]) == 0 and any(issubclass(w.category, EmptyQueryWarning) for w in caught)


def test_fused_beside_bm25_in_an_rrf_pool(splade: str, env: Environment) -> None:
    from stagegraph.pipeline.compose import Pipeline
    from stagegraph.stages.fusion import CandidatePool
    from stagegraph.stages.retrieve.bm25 import BM25Retriever

    pipe = Pipeline((BM25Retriever(k=10, name="bm25") | SparseRetriever(model=splade, k=10, name="sparse"))
                    >> CandidatePool("rrf", k=10, name="pool"))
    result = pipe.execute(QUERIES, env=env, mode="batch")
    assert len(result.stages["sparse"].rankings) == 3 and all(len(r) for r in result.stages["pool"].rankings)


def test_yaml_composition_and_sweep_setting(splade: str, tmp_path: Path) -> None:
    from stagegraph.evaluation.sweep import SweepError, with_setting
    from stagegraph.pipeline.compose import Pipeline

    path = tmp_path / "p.yaml"
    path.write_text("pipeline:\n  - parallel:\n      - {type: bm25, name: bm25, k: 100}\n"
                    f"      - {{type: sparse, name: sparse, k: 100, model: {splade}, query_mode: inference_free}}\n"
                    "  - {type: pool, name: pool, method: rrf, k: 100}\n")
    graph = Pipeline.from_yaml(path)
    assert graph.step("sparse").stage.config.query_mode == "inference_free"
    assert with_setting(graph, "sparse", "query_mode", "model").step("sparse").stage.config.query_mode == "model"
    with pytest.raises(SweepError, match="refused"):
        with_setting(graph, "sparse", "query_mode", "idf")
    path.write_text(f"pipeline:\n  - {{type: sparse, name: sparse, model: {splade}, query_mode: idf}}\n")
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.query_mode: Input should be 'model' or 'inference_free'") as bad:
        Pipeline.from_yaml(path)
    assert "\n" not in str(bad.value)


def test_a_collection_ranks_like_a_fresh_single_segment_build(splade: str, tmp_path: Path) -> None:
    """Adds, updates and deletes over several commits (many segments, deleted rows in old ones): the
    sparse stage's rankings, filtered or not, equal those of one segment built from the final documents."""
    import random

    from collection_support import rankings

    from stagegraph.collection import Collection
    from stagegraph.collection.merges import MergePolicy
    from stagegraph.collection.sources import PYTHON
    from stagegraph.corpora.ingest import ChunkerConfig

    config = {"pipeline": [{"type": "sparse", "name": "sparse", "k": 15, "model": splade}]}
    chunker = ChunkerConfig(kind="none")
    rng = random.Random(3)

    def doc(i: int) -> dict:
        return {"id": f"d{i:02d}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))),
                "metadata": {"group": "even" if i % 2 == 0 else "odd"}}

    live: dict[str, dict] = {}
    store = Collection.create(tmp_path / "live", config, chunker=chunker)
    store.merge_policy = MergePolicy(segments_per_tier=1000, deletes_pct_allowed=100.0)
    for step in range(3):
        with store.writer() as w:
            for i in range(step * 8, step * 8 + 8):
                live[f"d{i:02d}"] = doc(i)
                w.upsert([live[f"d{i:02d}"]], source=PYTHON)
            if step:
                gone = sorted(live)[step]
                del live[gone]
                w.delete([gone])
            w.commit()
        store.refresh()
    assert len(store.generation.manifest.segments) >= 3
    fresh = Collection.create(tmp_path / "fresh", config, chunker=chunker)
    fresh.upsert(list(live.values()))
    for flt in (None, {"group": "even"}):
        a, b = rankings(tmp_path / "live", config, flt), rankings(tmp_path / "fresh", config, flt)
        for q in a["sparse"]:
            assert [i for i, _ in a["sparse"][q]] == [i for i, _ in b["sparse"][q]], (flt, q)
            np.testing.assert_allclose([s for _, s in a["sparse"][q]], [s for _, s in b["sparse"][q]], rtol=1e-6)
            found = [i.split("#")[0] for i, _ in a["sparse"][q]]
            assert found and all(i in live for i in found)  # no deleted document
            if flt:
                assert all(int(i[1:]) % 2 == 0 for i in found)
    store.close()
    fresh.close()


def test_the_text_cache_keeps_weights_per_text(splade: str, tmp_path: Path, corpus: Corpus, monkeypatch) -> None:
    from sentence_transformers import SparseEncoder

    import stagegraph.stages.retrieve.sparse as module
    from stagegraph.indexes.text_cache import TextCache

    model = SparseEncoder(splade, device="cpu")
    cache = TextCache(tmp_path / "texts.sqlite")
    texts = corpus.doc_texts()
    first = module.cached_document_weights(model, texts[:25], cache, "id")
    encoded: list[int] = []
    real = module.document_weights
    monkeypatch.setattr(module, "document_weights", lambda m, t, **kw: (encoded.append(len(t)), real(m, t, **kw))[1])
    both = module.cached_document_weights(model, texts, cache, "id")
    assert encoded == [15]  # only the texts the cache lacked
    whole = real(model, texts)
    assert (both.vocab_size, both.n_docs) == (whole.vocab_size, 40) and first.vocab_size == whole.vocab_size
    np.testing.assert_array_equal(both.indptr, whole.indptr)
    np.testing.assert_array_equal(both.indices, whole.indices)
    np.testing.assert_allclose(both.data, whole.data, rtol=1e-5, atol=1e-6)
    cache.close()
