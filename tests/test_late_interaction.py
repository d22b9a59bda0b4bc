"""The late-interaction (ColBERT MaxSim) rerank stage on a tiny random model: scores equal to an
independent numpy MaxSim, provenance, composition checks, YAML, the passage token cache."""

import json

import numpy as np
import pytest
from stubs import StubRetriever
from tiny_models import rerank_corpus, rerank_pools, rerank_queries

from stagegraph.corpora.types import Queries
from stagegraph.errors import ConfigError, InputError
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.registry import stage_class
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.rerank.late_interaction import LateInteractionReranker
from stagegraph.stages.rerank.token_encoder import maxsim, write_random_colbert



@pytest.fixture(scope="module")
def tiny_colbert(tmp_path_factory):
    return write_random_colbert(tmp_path_factory.mktemp("colbert") / "tiny-colbert", layers=2, hidden=32, dim=16)


@pytest.fixture(scope="module")
def corpus():
    return rerank_corpus()


def _queries():
    return rerank_queries()


def _env(corpus, tmp_path):
    return Environment(corpus, work_dir=tmp_path, progress=False)


def reference_scores(path, query, texts, query_length=32, document_length=180):
    """ColBERT MaxSim written independently: transformers' BERT, the projection read by hand, numpy loops."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = BertModel.from_pretrained(str(path)).eval()
    weight = load_file(str(path / "1_Dense" / "model.safetensors"))["linear.weight"].astype(np.float64)

    def tokens(text, length):
        enc = tokenizer(text, truncation=True, max_length=length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0].double().numpy()
        projected = hidden @ weight.T
        return projected / np.linalg.norm(projected, axis=1, keepdims=True)

    q = tokens(query, query_length)
    out = []
    for text in texts:
        d = tokens(text, document_length)
        out.append(sum(max(float(qi @ dj) for dj in d) for qi in q))
    return np.array(out)


def test_scores_equal_an_independent_maxsim(tiny_colbert, corpus, tmp_path):
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    stage = LateInteractionReranker(str(tiny_colbert), depth=20, k=20, batch_size=4, token_dtype="float32")
    stage.warm_up(_env(corpus, tmp_path))
    for text, pool, got in zip(queries.texts, upstream, stage.run(queries, [upstream])):
        rows = pool.doc_rows[:20]
        ref = reference_scores(tiny_colbert, text, [corpus.doc_text(int(r)) for r in rows])
        ours = dict(zip(got.doc_rows.tolist(), got.provenance["late_interaction"].model_score.tolist()))
        np.testing.assert_allclose([ours[int(r)] for r in rows], ref, rtol=1e-4, atol=1e-4)
        assert len(np.unique(np.round(ref, 6))) == len(ref)
        np.testing.assert_array_equal(got.doc_rows, rows[np.argsort(-ref, kind="stable")])


def test_maxsim_of_hand_made_vectors():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    docs = [np.array([[1.0, 0.0]], dtype=np.float32), np.array([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)]
    np.testing.assert_allclose(maxsim(q, docs), [1.0, 2.0])
    assert maxsim(q, []).shape == (0,)


def test_provenance_blend_and_k(tiny_colbert, corpus, tmp_path):
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    stage = LateInteractionReranker(str(tiny_colbert), depth=10, k=4, name="li")
    stage.warm_up(_env(corpus, tmp_path))
    for pool, ranking in zip(upstream, stage.run(queries, [upstream])):
        assert len(ranking) == 4
        own = ranking.provenance["li"]
        np.testing.assert_allclose(own.model_score, ranking.scores, atol=1e-6)
        upstream_of = dict(zip(pool.doc_rows.tolist(), pool.scores.tolist()))
        np.testing.assert_allclose(own.blended_with, [upstream_of[r] for r in ranking.doc_rows.tolist()])
    keep = LateInteractionReranker(str(tiny_colbert), depth=10, k=10, blend=0.0)
    keep.warm_up(_env(corpus, tmp_path))
    for pool, ranking in zip(upstream, keep.run(queries, [upstream])):
        np.testing.assert_array_equal(ranking.doc_rows, pool.doc_rows[:10])


def test_token_cache_encodes_each_passage_once(tiny_colbert, corpus, tmp_path):
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    cold = LateInteractionReranker(str(tiny_colbert), depth=20, k=5, token_cache="off")
    cold.warm_up(_env(corpus, tmp_path))
    expected = cold.run(queries, [upstream])
    assert cold.stats.encoded == 60 and cold.stats.cached == 0
    stage = LateInteractionReranker(str(tiny_colbert), depth=20, k=5, document_length=179)  # own cache key
    stage.warm_up(_env(corpus, tmp_path))
    stage.run(queries, [upstream])
    distinct = len({int(r) for p in upstream for r in p.doc_rows[:20]})
    assert stage.stats.encoded == distinct
    again = stage.run(queries, [upstream])
    assert stage.stats.encoded == distinct and stage.stats.cached == 120 - distinct
    for a, b in zip(expected, again):  # the same passages at one token shorter: same text, cache is exact
        assert len(a) == len(b)
    assert cold.fingerprint() == LateInteractionReranker(str(tiny_colbert), depth=20, k=5).fingerprint()
    assert stage.fingerprint() != cold.fingerprint()


def test_graph_yaml_batch_equals_online_and_depth_check(tiny_colbert, corpus, tmp_path):
    queries = _queries()
    results = {}
    for mode in ("batch", "online"):
        stage = LateInteractionReranker(str(tiny_colbert), depth=25, k=10, name="li")
        graph = Pipeline(StubRetriever("first", k=30) >> stage)
        results[mode] = graph.execute(queries, env=_env(corpus, tmp_path), mode=mode, warmup=0).final
    for a, b in zip(results["batch"], results["online"]):
        np.testing.assert_array_equal(a.doc_rows, b.doc_rows)
    with pytest.raises(InputError, match="set depth <= 30"):
        Pipeline(StubRetriever("first", k=30) >> LateInteractionReranker(str(tiny_colbert), depth=100))
    cls = stage_class("late_interaction")
    assert cls is LateInteractionReranker
    stage = cls.from_config(cls.Config(model=str(tiny_colbert), depth=50, k=5, name="li"))
    again = cls.from_config(cls.Config(**{k: v for k, v in stage.to_config().items() if k != "type"}))
    assert again.fingerprint() == stage.fingerprint()
    text = ("name: li\npipeline:\n  - {type: bm25, name: bm25, k: 100}\n"
            f"  - {{type: late_interaction, name: li, model: {json.dumps(str(tiny_colbert))}, depth: 100, k: 10}}\n")
    pipe = Pipeline.from_yaml(text)
    assert "late_interaction" in pipe.to_yaml()


def test_config_errors_are_one_line_with_the_fix(tiny_colbert):
    with pytest.raises(ConfigError) as err:
        LateInteractionReranker(str(tiny_colbert), depth=0)
    assert "depth" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="model"):
        LateInteractionReranker()
    with pytest.raises(ConfigError, match="allowed fields"):
        Pipeline.from_yaml("name: x\npipeline:\n  - {type: bm25, k: 100}\n  - {type: late_interaction, model: m, max_length: 9}\n")


def test_sweep_over_depth_times_the_stage_and_reports_it(tiny_colbert, tmp_path):
    from stubs import tiny_corpus

    from stagegraph.corpora.types import Dataset, Qrels
    from stagegraph.evaluation.sweep import sweep

    corpus = tiny_corpus(60)
    qids = [f"q{i}" for i in range(4)]
    dataset = Dataset("tiny", corpus, Queries(qids, [f"query {i}" for i in range(4)]),
                      {"test": Qrels({q: {f"d{r}": 1 for r in range(60) if r % 10 == i} for i, q in enumerate(qids)})})
    graph = StubRetriever("first", k=40) >> LateInteractionReranker(str(tiny_colbert), depth=10, k=10, name="li")
    result = sweep(graph, dataset, "li", "depth", "5,40", out=tmp_path, progress=False, warmup=0)
    assert [p.value for p in result.points] == [5, 40]
    assert all(p.stage_p95_ms > 0 for p in result.points)
    report = json.loads((tmp_path / "depth=40" / "report.json").read_text())
    assert "li" in report["stages"]


def test_float16_tokens_stay_within_their_rounding_bound(tiny_colbert, corpus, tmp_path):
    """float16 passage tokens (the default) move a unit vector by at most 2**-11 of its length, so each
    query token's best dot product by at most that: a score by at most (query tokens) x 2**-11."""
    queries, upstream = _queries(), rerank_pools(len(corpus), 3)
    scores = {}
    for dtype in ("float16", "float32"):
        stage = LateInteractionReranker(str(tiny_colbert), depth=20, k=20, token_dtype=dtype, token_cache="off")
        stage.warm_up(_env(corpus, tmp_path))
        scores[dtype] = [stage.score_rows(text, pool.doc_rows[:20]) for text, pool in zip(queries.texts, upstream)]
    model = stage.bound.model
    for text, half, full in zip(queries.texts, scores["float16"], scores["float32"]):
        bound = len(model.encode([text], 32, 1, model.query_prefix)[0]) * 2.0 ** -11
        assert 0 < np.abs(half - full).max() <= bound
    assert stage.fingerprint() != LateInteractionReranker(str(tiny_colbert), depth=20, k=20).fingerprint()


STORED_CHECK = """
import json, sys
import stagegraph as sg
config, root = json.loads(sys.argv[1]), sys.argv[2]
queries = sg.Queries(["q1", "q2", "q3"], ["dense protein retrieval", "cancer gene", "rank fusion of sparse vectors"])
with sg.open(config, collection=root) as stack:
    run = stack.runner.execute(queries, mode="batch").stages["li"].rankings
    corpus, stats = stack.collection.corpus, stack.runner.bound("li").stats
    print(json.dumps({"hits": [[[corpus.ids[int(r)], corpus.doc_text(int(r)), float(s)]
                                for r, s in zip(rk.doc_rows, rk.provenance["li"].model_score)] for rk in run],
                      "stats": [stats.pairs, stats.encoded, stats.stored]}))
"""


def test_a_collection_stores_token_embeddings_per_segment_and_a_new_process_encodes_none(tiny_colbert, tmp_path,
                                                                                          monkeypatch):
    """The writer builds each segment's token store at commit; a new process (a server restart)
    reranks from the stores alone, with the scores of an independent MaxSim; a compacted segment's
    store is built from the collection's text cache, encoding nothing; a damaged store reads as
    missing and its candidates are encoded instead, with the same scores."""
    import subprocess
    import sys

    from stagegraph.collection import Collection
    from stagegraph.collection.sources import PYTHON
    from stagegraph.corpora.ingest import ChunkerConfig
    from stagegraph.stages.rerank import token_encoder

    corpus = rerank_corpus()
    docs = [{"id": corpus.ids[i], "text": corpus.texts[i]} for i in range(len(corpus))]
    config = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 20},
                           {"type": "late_interaction", "name": "li", "model": str(tiny_colbert), "depth": 20,
                            "k": 10, "token_dtype": "float32"}]}
    root = tmp_path / "c"
    store = Collection.create(root, config, chunker=ChunkerConfig(kind="none"))
    store.upsert(docs[:25])
    with store.writer() as w:
        w.upsert(docs[25:], source=PYTHON)
        w.delete([docs[3]["id"]])
        w.commit()
    store.refresh()
    stores = root / "artefacts" / "late_interaction"
    assert len(store.generation.manifest.segments) == 2 and len(list(stores.iterdir())) == 2

    def in_a_new_process():
        done = subprocess.run([sys.executable, "-c", STORED_CHECK, json.dumps(config), str(root)], capture_output=True,
                              text=True, timeout=300, env={**__import__("os").environ, "TQDM_DISABLE": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = in_a_new_process()
    pairs, encoded, stored = first["stats"]
    assert pairs == stored > 0 and encoded == 0  # every candidate's tokens read from the stores
    for text, hits in zip(_queries().texts, first["hits"]):
        assert hits and docs[3]["id"] not in {h[0] for h in hits}
        ref = reference_scores(tiny_colbert, text, [h[1] for h in hits])
        np.testing.assert_allclose([h[2] for h in hits], ref, rtol=1e-4, atol=1e-4)

    texts_encoded: list[int] = []
    real = token_encoder.TokenEncoder.encode
    monkeypatch.setattr(token_encoder.TokenEncoder, "encode",
                        lambda self, texts, *a, **kw: (texts_encoded.append(len(texts)), real(self, texts, *a, **kw))[1])
    store.compact()
    assert len(store.generation.manifest.segments) == 1 and texts_encoded == []  # all from the text cache
    monkeypatch.undo()
    assert in_a_new_process() == first

    (merged,) = [d for d in stores.iterdir() if (d / "tokens.npy").exists() and
                 json.loads((d / "info.json").read_text())["rows"] == len(docs) - 1]
    (merged / "tokens.npy").write_bytes(b"damaged")
    damaged = in_a_new_process()
    assert damaged["stats"][0] == pairs and damaged["stats"][1] > 0 and damaged["stats"][2] == 0  # encoded instead
    for a, b in zip(damaged["hits"], first["hits"]):
        assert [h[0] for h in a] == [h[0] for h in b]
        np.testing.assert_allclose([h[2] for h in a], [h[2] for h in b], rtol=1e-5)
    store.close()
