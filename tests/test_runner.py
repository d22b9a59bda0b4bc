"""A pipeline value bound once: nothing prepared per search, many bindings of one value, one thread owner.

Real stages throughout (BM25, a tiny dense model, a tiny cross-encoder: the real loading code with
kilobytes of weights); the counters wrap the real functions, so a count of zero means the code path
was not taken, not that a fake was called.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tiny_models import WORDS, make_tiny_cross_encoder, make_tiny_sentence_transformer

import stagegraph.indexes.encoder as encoder_module
import stagegraph.stages.rerank.cross_encoder as ce_module
import stagegraph.stages.rerank.model as ce_model
from stagegraph.corpora.types import Corpus
from stagegraph.errors import ConfigError, StageError
from stagegraph.pipeline import runner as runner_module
from stagegraph.pipeline import stage as stage_module
from stagegraph.pipeline import threads
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.graph import PipelineError
from stagegraph.pipeline.runner import Runner
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.base import StageBase
from stagegraph.stages.fusion.pool import CandidatePool
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker
from stagegraph.stages.retrieve.bm25 import BM25Retriever
from stagegraph.stages.retrieve.dense import DenseRetriever


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("models")
    return (str(make_tiny_sentence_transformer(root / "st")), str(make_tiny_cross_encoder(root / "ce")))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))) for _ in range(80)]
    metadata = [{"tenant": "a" if i % 2 else "b", "year": 2020 + i % 6} for i in range(80)]
    return Corpus([f"d{i}" for i in range(80)], [""] * 80, texts, metadata=metadata)


def hybrid(models: tuple[str, str]) -> Pipeline:
    st, ce = models
    return ((BM25Retriever(k=30, name="bm25") | DenseRetriever(k=30, name="dense", model=st))
            >> CandidatePool("rrf", k=30, name="pool")
            >> CrossEncoderReranker(ce, max_length=128, depth=20, k=5, name="rerank"))


QUERIES = ["cancer cells protein", "wing pressure shock", "dense vector index", "blood risk study"]


class Counter:
    """Wraps a module attribute (a real function) and counts its calls."""

    def __init__(self, monkeypatch, owner, name):
        self.n = 0
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            self.n += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_nothing_is_prepared_again_across_100_searches(models, corpus, tmp_path, monkeypatch):
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    runner = hybrid(models).bind(env)
    counters = {
        "model loads (cross-encoder)": Counter(monkeypatch, ce_model, "load_cross_encoder"),
        "scoring loads": Counter(monkeypatch, ce_module, "load_scoring"),
        "model locator (dense)": Counter(monkeypatch, encoder_module, "locate_model"),
        "model locator (cross-encoder)": Counter(monkeypatch, ce_model, "locate"),
        "model loads (dense)": Counter(monkeypatch, encoder_module, "_load_sentence_transformer"),
        "bindings": Counter(monkeypatch, runner_module, "bind_stage"),
        "warm-ups": Counter(monkeypatch, StageBase, "warm_up"),
        "fingerprints": Counter(monkeypatch, StageBase, "fingerprint"),
        "stage binds": Counter(monkeypatch, stage_module, "bind_stage"),
    }
    for i in range(100):
        result = runner.search(QUERIES[i % len(QUERIES)], k=5, filter={"tenant": "a"} if i % 3 else None)
        assert len(result.hits) == 5
    assert {name: c.n for name, c in counters.items()} == dict.fromkeys(counters, 0)
    runner.close()


def test_a_value_bound_twice_is_two_independent_runners_and_the_value_is_unchanged(models, corpus, tmp_path):
    pipe = hybrid(models)
    before = pipe.to_config()
    fingerprint = pipe.fingerprint()
    half = Corpus(corpus.ids[:40], corpus.titles[:40], corpus.texts[:40], metadata=corpus.metadata[:40])
    with pipe.bind(Environment(corpus, work_dir=tmp_path, progress=False)) as whole, \
            pipe.bind(Environment(half, work_dir=tmp_path, progress=False)) as part:
        assert whole.bound("bm25") is not part.bound("bm25")
        assert len(whole.bound("bm25").corpus) == 80 and len(part.bound("bm25").corpus) == 40
        hits_whole = {h.id for q in QUERIES for h in whole.search(q, k=5).hits}
        hits_part = {h.id for q in QUERIES for h in part.search(q, k=5).hits}
        assert all(int(h[1:]) < 40 for h in hits_part)  # each runner searches its own documents
        assert any(int(h[1:]) >= 40 for h in hits_whole)
    assert pipe.to_config() == before and pipe.fingerprint() == fingerprint
    assert "_direct" not in pipe.step("bm25").stage.__dict__  # binding never writes to the stage value


def test_concurrent_searches_on_bindings_of_one_value_equal_one_search_at_a_time(models, corpus, tmp_path):
    pipe = hybrid(models)
    runners = [pipe.bind(Environment(corpus, work_dir=tmp_path, progress=False)) for _ in range(2)]
    expected = {q: [(h.id, h.score) for h in runners[0].search(q, k=5).hits] for q in QUERIES}
    seen, errors = [], []

    def worker(runner: Runner, q: str) -> None:
        try:
            for _ in range(5):
                seen.append((q, [(h.id, h.score) for h in runner.search(q, k=5).hits]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(r, q)) for r in runners for q in QUERIES]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors and len(seen) == len(pool) * 5
    assert all(got == expected[q] for q, got in seen)  # ids and scores bit for bit
    for runner in runners:
        runner.close()


def test_rebind_shares_the_loaded_model_and_binds_the_new_corpus(models, corpus, tmp_path, monkeypatch):
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    first = hybrid(models).bind(env)
    loads = Counter(monkeypatch, ce_module, "load_scoring")
    dense_loads = Counter(monkeypatch, encoder_module, "Encoder")
    half = Corpus(corpus.ids[:40], corpus.titles[:40], corpus.texts[:40], metadata=corpus.metadata[:40])
    second = first.rebind(Environment(half, work_dir=tmp_path, progress=False))
    assert (loads.n, dense_loads.n) == (0, 0)
    assert second.bound("rerank").scoring is first.bound("rerank").scoring
    assert second.bound("dense").encoder is first.bound("dense").encoder
    assert len(second.bound("bm25").corpus) == 40
    assert all(int(h.id[1:]) < 40 for h in second.search("cancer cells", k=5).hits)
    first.close(), second.close()


# -- one owner for threads ------------------------------------------------------------------------
def test_thread_counts_are_per_calling_thread_in_this_build():
    """What the policy rests on: torch's and FAISS's counts set in one thread are not seen in another."""
    import faiss
    import torch

    seen = {}
    barrier = threading.Barrier(2)

    def set_and_read(n: int) -> None:
        threads.apply(n)
        barrier.wait()  # both have set their count before either reads
        seen[n] = (torch.get_num_threads(), faiss.omp_get_max_threads())

    workers = [threading.Thread(target=set_and_read, args=(n,)) for n in (1, 3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert seen == {1: (1, 1), 3: (3, 3)}


def test_each_stage_runs_with_the_policys_threads_whatever_its_neighbours_want(models, corpus, tmp_path, monkeypatch):
    import torch

    pipe = hybrid(models)
    runner = pipe.bind(Environment(corpus, work_dir=tmp_path, progress=False))
    observed: dict[str, set[int]] = {"dense": set(), "rerank": set(), "bm25": set()}
    for name in observed:
        bound = runner.bound(name)
        real = bound.run

        def spy(queries, inputs, real=real, name=name):
            observed[name].add(torch.get_num_threads())
            return real(queries, inputs)

        monkeypatch.setattr(bound, "run", spy)
    workers = [threading.Thread(target=lambda q=q: [runner.search(q, k=5) for _ in range(3)]) for q in QUERIES]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    cores = threads.usable_cores()
    assert observed["dense"] == {1}  # its own count: scores independent of the machine
    assert observed["bm25"] == {max(1, cores // 2)}  # beside dense: half the cores
    assert observed["rerank"] == {cores}  # alone at its level: every core
    runner.close()


def test_dense_scores_do_not_depend_on_the_callers_thread_count(models, corpus, tmp_path):
    runner = Pipeline(DenseRetriever(k=10, model=models[0])).bind(Environment(corpus, work_dir=tmp_path, progress=False))
    threads.apply(1)
    one = runner.run(QUERIES)
    threads.apply(4)  # a caller that left another count behind
    four = runner.run(QUERIES)
    for a, b in zip(one, four):
        np.testing.assert_array_equal(a.doc_rows, b.doc_rows)
        np.testing.assert_array_equal(a.scores, b.scores)
    threads.apply(threads.threads_for(1))
    runner.close()


# -- checked at build time, across stages ---------------------------------------------------------
def test_a_reranker_asked_for_more_than_its_upstream_gives_is_refused_at_the_operator(models):
    with pytest.raises(PipelineError, match=r"'rerank'.*returns k=50 documents but 'bm25' gives it at most 20; "
                                            r"set rerank's k <= 20, or raise bm25's k"):
        BM25Retriever(k=20) >> CrossEncoderReranker(models[1], depth=20, k=50, name="rerank")
    with pytest.raises(PipelineError, match=r"depth=100 candidates are to be reranked but 'bm25' returns at most 20; "
                                            r"set depth <= 20"):
        BM25Retriever(k=20) >> CrossEncoderReranker(models[1], depth=100, k=10, name="rerank")
    with pytest.raises(PipelineError, match=r"returns at most 7"):
        BM25Retriever(k=20) % 7 >> CrossEncoderReranker(models[1], depth=10, k=5)
    # the fixes the messages name work
    assert (BM25Retriever(k=20) >> CrossEncoderReranker(models[1], depth=20, k=20)).names == ["bm25", "cross_encoder"]


def test_pool_weights_are_checked_against_the_branches_at_the_operator():
    with pytest.raises(PipelineError, match=r"pool 'pool' has 3 weights but 2 inputs \(bm25, b2\)"):
        (BM25Retriever() | BM25Retriever(name="b2")) >> CandidatePool("wsum", weights=[1, 2, 3])
    with pytest.raises(PipelineError, match=r"unknown: \['splade'\]"):
        (BM25Retriever() | BM25Retriever(name="b2")) >> CandidatePool("wsum", weights={"bm25": 1, "splade": 2})
    fixed = (BM25Retriever() | BM25Retriever(name="b2")) >> CandidatePool("wsum", weights={"bm25": 1, "b2": 2})
    assert fixed.output == "pool"


def test_max_length_beyond_the_models_positions_is_refused_at_bind_with_the_fix(models, corpus, tmp_path):
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    too_long = BM25Retriever(k=20) >> CrossEncoderReranker(models[1], max_length=512, depth=20, k=5)
    with pytest.raises(StageError, match=r"max_length 512 exceeds the 128 token positions the cross-encoder .* has; "
                                         r"set max_length <= 128"):
        too_long.bind(env)
    fixed = BM25Retriever(k=20) >> CrossEncoderReranker(models[1], max_length=128, depth=20, k=5)
    with fixed.bind(env) as runner:
        long_query = " ".join(["cancer cells protein"] * 100)  # far beyond 128 tokens: truncated, not a torch error
        assert len(runner.search(long_query, k=5).hits) == 5


def test_python_constructors_raise_the_same_one_line_error_as_yaml():
    with pytest.raises(ConfigError) as python:
        BM25Retriever(kk=3)
    with pytest.raises(ConfigError) as yaml_error:
        Pipeline.from_config({"pipeline": [{"type": "bm25", "kk": 3}]}, source="p.yaml")
    assert str(python.value) == "stage type 'bm25' is invalid: kk: unknown field; allowed fields: " + ", ".join(
        BM25Retriever.Config.model_fields)
    assert str(yaml_error.value) == ("p.yaml: pipeline[0] (type 'bm25') is invalid: pipeline[0].kk: unknown field; "
                                     "allowed fields: " + ", ".join(BM25Retriever.Config.model_fields))
    with pytest.raises(ConfigError, match=r"^stage type 'dense' is invalid: k: Input should be greater than or equal to 1$"):
        DenseRetriever(k=0)


def test_yaml_settings_are_validated_once(monkeypatch):
    calls = Counter(monkeypatch, BM25Retriever.Config, "model_validate")
    Pipeline.from_config({"pipeline": [{"type": "bm25", "k": 7}]})
    assert calls.n == 1


# -- every setting written, and shown where it matters --------------------------------------------
def test_to_config_writes_every_setting_with_defaults_and_reads_back_equal(models):
    pipe = hybrid(models)
    config = pipe.to_config()
    bm25 = config["pipeline"][0]["parallel"][0]
    assert bm25 == {"type": "bm25", **BM25Retriever(k=30, name="bm25").config.settings()}
    assert {"k1", "b", "variant", "k", "tokenizer"} <= set(bm25)
    rerank = config["pipeline"][-1]
    assert rerank["max_length"] == 128 and rerank["batch_size"] == 16 and rerank["backend"] == "torch"
    back = Pipeline.from_config(config)
    assert back.to_config() == config and back.fingerprint() == pipe.fingerprint()


def test_print_shows_models_and_k_and_repr_shows_parallel_blocks(models):
    pipe = hybrid(models)
    text = str(pipe)
    assert f"dense [dense: k=30, model={models[0]}]" in text
    assert f"rerank [cross_encoder: model={models[1]}, max_length=128, depth=20, k=5]" in text
    assert repr(pipe) == "Pipeline((bm25 | dense) >> pool >> rerank)"
    assert repr(BM25Retriever() % 10) == "Pipeline(bm25 % 10)"
