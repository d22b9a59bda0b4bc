"""The dense stage with a tiny random sentence-transformer; the SciFact pin is slow and dataset-gated."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.indexes.dense import DenseIndex
from stagegraph.indexes.encoder import Encoder
from stagegraph.errors import ConfigError, StageError
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.retrieve.bm25 import EmptyQueryWarning
from stagegraph.stages.retrieve.dense import DenseRetriever, DenseRetrieverConfig
from stagegraph.pipeline.registry import stage_class
from tiny_models import WORDS, make_tiny_sentence_transformer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st"))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(60)]
    return Corpus([f"doc{i}" for i in range(60)], [""] * 60, texts)


@pytest.fixture()
def env(corpus: Corpus, tmp_path: Path) -> Environment:
    return Environment(corpus, work_dir=tmp_path / "work", progress=False)


QUERIES = Queries(["q1", "q2", "q3"], ["protein cancer cell", "heat flow over a wing", "dense vector rank"])


def stage(model: str, **kwargs) -> DenseRetriever:
    kwargs.setdefault("k", 10)
    return DenseRetriever(model=model, **kwargs)


def test_flat_rankings_are_exact_cosine_top_k(tiny_model: str, env: Environment, corpus: Corpus) -> None:
    retriever = stage(tiny_model, max_seq_length=64)
    retriever.warm_up(env)
    rankings = retriever.run(QUERIES, [])
    reference = Encoder(tiny_model, max_seq_length=64, progress=False)
    docs = reference.encode(corpus.doc_texts())
    for text, ranking in zip(QUERIES.texts, rankings):
        assert isinstance(ranking, Ranking) and len(ranking) == 10
        scores = docs @ reference.encode_query(text)[0]
        expected = Ranking.from_scores(np.arange(len(corpus)), scores, k=10)
        np.testing.assert_array_equal(ranking.doc_rows, expected.doc_rows)
        np.testing.assert_allclose(ranking.scores, expected.scores, atol=1e-5)
        assert np.all(np.diff(ranking.scores) <= 0)


def test_single_query_matches_the_batch(tiny_model: str, env: Environment) -> None:
    retriever = stage(tiny_model)
    retriever.warm_up(env)
    batch = retriever.run(QUERIES, [])
    for i in range(len(QUERIES)):
        one = retriever.run(QUERIES.select([i]), [])[0]
        np.testing.assert_array_equal(one.doc_rows, batch[i].doc_rows)
        np.testing.assert_allclose(one.scores, batch[i].scores, atol=1e-5)


def test_empty_query_gives_an_empty_ranking_and_a_warning(tiny_model: str, env: Environment) -> None:
    retriever = stage(tiny_model)
    retriever.warm_up(env)
    queries = Queries(["a", "b", "c"], ["cell protein", "   ", "wing"])
    with pytest.warns(EmptyQueryWarning, match="'b'"):
        out = retriever.run(queries, [])
    assert [len(r) for r in out] == [10, 0, 10]
    np.testing.assert_array_equal(out[2].doc_rows, retriever.run(queries.select([2]), [])[0].doc_rows)
    with pytest.warns(EmptyQueryWarning):
        assert len(retriever.run(Queries.single(""), [])[0]) == 0


def test_k_above_corpus_size_returns_every_document(tiny_model: str, env: Environment, corpus: Corpus) -> None:
    retriever = stage(tiny_model, k=500, index="HNSW32")
    retriever.warm_up(env)
    ranking = retriever.run(Queries.single("cell"), [])[0]
    assert sorted(ranking.doc_rows.tolist()) == list(range(len(corpus)))


def test_run_before_warm_up_is_a_clear_error(tiny_model: str) -> None:
    with pytest.raises(StageError, match="warm_up"):
        stage(tiny_model).run(QUERIES, [])


def test_fingerprint_before_warm_up_and_what_changes_it(tiny_model: str, env: Environment) -> None:
    base = stage(tiny_model)
    before = base.fingerprint()
    base.warm_up(env)
    assert base.fingerprint() == before
    assert stage(tiny_model, batch_size=7, device="cpu").fingerprint() == before
    with pytest.raises(ConfigError, match="`query_threads` is no longer a setting.*executor sets torch and FAISS threads"):
        stage(tiny_model, query_threads=2)
    assert stage(tiny_model, name="other").fingerprint() == before
    for changed in ({"k": 11}, {"index": "HNSW32"}, {"ef_search": 64}, {"max_seq_length": 32}):
        assert stage(tiny_model, **changed).fingerprint() != before, changed
    missing = stage("nobody/missing-model")
    assert missing.fingerprint() != before  # computable even when the model cannot be found


def test_fingerprint_follows_model_content(tiny_model: str, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(tiny_model, tmp_path / "copy"))
    assert stage(str(copy)).artefact_fingerprint() == stage(tiny_model).artefact_fingerprint()
    other = make_tiny_sentence_transformer(tmp_path / "other", seed=1)
    assert stage(str(other)).artefact_fingerprint() != stage(tiny_model).artefact_fingerprint()


def test_registered_and_built_from_config(tiny_model: str) -> None:
    assert stage_class("dense") is DenseRetriever
    config = DenseRetrieverConfig(name="dense", k=5, model=tiny_model, index="HNSW32", ef_search=200)
    built = DenseRetriever.from_config(config)
    assert built.config == config and built.name == "dense"
    entry = built.to_config()  # every setting, defaults included
    assert entry == {"type": "dense", **config.model_dump(mode="json")}
    assert (entry["k"], entry["index"], entry["ef_search"], entry["max_seq_length"], entry["batch_size"]) == (5, "HNSW32", 200, 256, 32)
    assert DenseRetriever(index_factory="IVF64,Flat").config.index == "IVF64,Flat"
    assert DenseRetriever("PQ16").config.index == "PQ16"
    with pytest.raises(ConfigError, match="^stage type 'dense' is invalid: flat: unknown field; allowed fields: name, k, model"):
        DenseRetriever(flat=True)


def test_changing_only_the_factory_reuses_the_embeddings(tiny_model: str, env: Environment, monkeypatch) -> None:
    calls: list[int] = []
    real = Encoder.encode

    def counting(self, texts, **kwargs):
        calls.append(len(texts))
        return real(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", counting)
    stage(tiny_model, index="Flat").warm_up(env)
    assert calls == [60]
    hnsw = stage(tiny_model, index="HNSW32")
    hnsw.warm_up(env)
    ivf = stage(tiny_model, index="IVF1,Flat")
    ivf.warm_up(env)
    assert calls == [60]  # no document was encoded again
    assert len(list((env.work_dir / "dense").iterdir())) == 3  # one index per factory
    assert len(list((env.work_dir / "embeddings").iterdir())) == 1  # one set of embeddings
    assert hnsw.bound.index.factory == "HNSW32" and ivf.bound.index.factory == "IVF1,Flat"


def test_a_second_stage_loads_the_saved_index(tiny_model: str, env: Environment, monkeypatch) -> None:
    stage(tiny_model, index="HNSW32").warm_up(env)

    def no_build(*args, **kwargs):
        raise AssertionError("the index should have been loaded, not rebuilt")

    monkeypatch.setattr(DenseIndex, "build", no_build)
    again = stage(tiny_model, index="HNSW32")
    again.warm_up(env)
    assert again.bound.index.ntotal == 60


def test_a_damaged_saved_index_is_rebuilt_not_served(tiny_model: str, env: Environment, caplog) -> None:
    first = stage(tiny_model)
    first.warm_up(env)
    expected = first.run(QUERIES, [])
    (index_dir,) = (env.work_dir / "dense").iterdir()
    (index_dir / "index.faiss").write_bytes(b"garbage")
    again = stage(tiny_model)
    with caplog.at_level(logging.WARNING, logger="stagegraph.stages.retrieve.dense"):
        again.warm_up(env)
    assert "Rebuilding" in caplog.text and "damaged" in caplog.text
    for a, b in zip(expected, again.run(QUERIES, [])):
        np.testing.assert_array_equal(a.doc_rows, b.doc_rows)


def test_given_index_object(tiny_model: str, env: Environment, corpus: Corpus) -> None:
    encoder = Encoder(tiny_model, max_seq_length=64, progress=False)
    built = DenseIndex.build(
        encoder.encode(corpus.doc_texts()),
        "Flat",
        corpus_fingerprint=corpus.fingerprint,
        model=tiny_model,
        model_identity=encoder.identity,
        max_seq_length=64,
        progress=False,
    )
    retriever = DenseRetriever(built, k=5)
    assert retriever.config.model == tiny_model and retriever.config.max_seq_length == 64
    assert retriever.artefact_fingerprint() == built.identity
    retriever.warm_up(env)
    assert len(retriever.run(QUERIES, [])[0]) == 5
    with pytest.raises(StageError, match="max_seq_length=128"):
        DenseRetriever(built, max_seq_length=128)
    other = Environment(Corpus(["x"], [""], ["cell"]), work_dir=env.work_dir, progress=False)
    with pytest.raises(StageError, match="another corpus"):
        DenseRetriever(built).warm_up(other)


def test_missing_model_fails_at_warm_up_naming_the_ways(env: Environment, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("STAGEGRAPH_MODELS", raising=False)
    with pytest.raises(StageError, match="nobody/missing-model.*STAGEGRAPH_MODELS"):
        stage("nobody/missing-model").warm_up(env)


# ------------------------------------------------------------------ real model, real data (slow)


def _trec_scores(rankings, queries, qrels, corpus) -> dict[str, dict[str, float]]:
    import pytrec_eval

    run = {
        qid: {corpus.ids[r]: float(s) for r, s in zip(rk.doc_rows, rk.scores)} for qid, rk in zip(queries.ids, rankings)
    }
    evaluator = pytrec_eval.RelevanceEvaluator(qrels.judgments, {"ndcg_cut.10", "recall.100"})
    per_query = evaluator.evaluate(run)
    n = len(qrels.judgments)
    return {
        "ndcg@10": sum(v["ndcg_cut_10"] for v in per_query.values()) / n,
        "recall@100": sum(v["recall_100"] for v in per_query.values()) / n,
    }


@pytest.mark.slow
@pytest.mark.dataset
def test_scifact_pin_and_approximate_indexes_keep_recall() -> None:
    """MiniLM + Flat on SciFact test = the pinned nDCG@10; HNSW32/IVF defaults keep >= 0.98 of Flat's recall@100.

    Embeddings are cached under $STAGEGRAPH_HOME (default: the repo's .stagegraph), so only the first
    run encodes the corpus (minutes on a laptop CPU)."""
    pytest.importorskip("pytrec_eval")
    import yaml

    from stagegraph.corpora.beir import load_beir

    from conftest import shared_dataset

    folder = shared_dataset("scifact")
    pins = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/expectations/dense.yaml").read_text())
    pin = next(p for p in pins if p["id"] == "dense-scifact-test")["metrics"]
    dataset = load_beir(folder, progress=False)
    queries, qrels = dataset.split("test")
    work = Path(os.environ.get("STAGEGRAPH_HOME", Path(__file__).resolve().parents[1] / ".stagegraph"))
    env = Environment(dataset.corpus, work_dir=work, progress=False)
    figures = {}
    for factory in ("Flat", "HNSW32", "IVF1024,Flat"):
        retriever = DenseRetriever(index=factory, k=100)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            retriever.warm_up(env)
        figures[factory] = _trec_scores(retriever.run(queries, []), queries, qrels, dataset.corpus)
    flat = figures["Flat"]
    for metric, want in pin.items():
        assert flat[metric] == pytest.approx(want["expected"], abs=want["tolerance"]), metric
    assert flat["ndcg@10"] == pytest.approx(0.645, abs=0.01)  # the published MTEB figure
    for factory in ("HNSW32", "IVF1024,Flat"):
        assert figures[factory]["recall@100"] >= 0.98 * flat["recall@100"], (factory, figures)


def test_two_dense_branches_with_different_settings_run_concurrently_with_their_own(tiny_model: str, tmp_path: Path) -> None:
    from stagegraph.pipeline.compose import Pipeline
    from stagegraph.stages.fusion import CandidatePool

    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(500)]
    env = Environment(Corpus([f"d{i}" for i in range(500)], [""] * 500, texts), work_dir=tmp_path, progress=False)
    narrow = stage(tiny_model, index="IVF8,Flat", nprobe=1, k=20, name="narrow")
    wide = stage(tiny_model, index="IVF8,Flat", nprobe=8, k=20, name="wide")
    pipe = Pipeline((narrow | wide) >> CandidatePool("rrf", k=20, name="pool"))
    queries = Queries([f"q{i}" for i in range(30)], [f"{WORDS[i % len(WORDS)]} {WORDS[(7 * i) % len(WORDS)]}" for i in range(30)])
    alone = {s.name: s for s in (narrow, wide)}
    for s in alone.values():
        s.warm_up(env)
    expected = {name: s.run(queries, []) for name, s in alone.items()}
    differ = sum(not np.array_equal(a.doc_rows, b.doc_rows) for a, b in zip(expected["narrow"], expected["wide"]))
    assert differ > 0  # the two settings rank differently, so a mix-up would show
    for _ in range(3):
        result = pipe.execute(queries, env=env, mode="online")
        for name in alone:
            for got, want in zip(result.stages[name].rankings, expected[name]):
                np.testing.assert_array_equal(got.doc_rows, want.doc_rows)
