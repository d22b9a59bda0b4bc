"""`tune_rerank` and `stagegraph tune-rerank`: every configuration's ranking is the one the stage
gives, each pair is scored once per scorer, the run resumes, and the recommendation is a pipeline."""

import json

import numpy as np
import pytest
from stubs import StubRetriever, register_stubs
from test_rerank import make_spread_cross_encoder

from stagegraph.corpora.types import Corpus, Dataset, Qrels, Queries
from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker
from stagegraph.evaluation import tune_report
from stagegraph.evaluation.tune_rerank import TuneError, ninety_point, pareto, recommend, tune_rerank
from stagegraph.evaluation.tune_result import TunePoint, TuneSettings

WORDS = "the cell protein gene cancer retrieval search query document index dense sparse vector rank score".split()
SETTINGS = dict(depths=(10, 20, 30), cascade_depths=(30,), cascade_ks=(20,), backends=("torch",), calibration_queries=3,
                margins=(-0.5, 0.0, 1.0), warmup=1)


def make_larger_cross_encoder(path, seed=3):
    """A cross-encoder four times as wide as the tiny one (same vocabulary): measurably slower."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    make_spread_cross_encoder(path, seed=seed)
    small = BertForSequenceClassification.from_pretrained(str(path))
    config = BertConfig(**{**small.config.to_dict(), "hidden_size": 128, "intermediate_size": 512,
                           "num_attention_heads": 4, "num_hidden_layers": 4})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() > 1 and "LayerNorm" not in name:
                weight.normal_(0, 0.08)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    return str(make_spread_cross_encoder(root / "small", seed=1)), str(make_larger_cross_encoder(root / "large"))


@pytest.fixture(scope="module")
def dataset(models):
    """Judgments the small model mostly agrees with (its own top 3 of the first stage's 30, one swapped
    for a random document), so that reranking beats the random first stage and configurations differ."""
    rng = np.random.default_rng(5)
    n = 50
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for _ in range(n)]
    corpus = Corpus([f"d{i}" for i in range(n)], [""] * n, texts)
    queries = Queries([f"q{i}" for i in range(8)], [" ".join(rng.choice(WORDS, 3)) for _ in range(8)])
    first = StubRetriever("first", k=40)
    first.warm_up(Environment(corpus, progress=False))
    judge = CrossEncoderReranker(models[0], max_length=64)
    judged = {}
    for qid, text, pool in zip(queries.ids, queries.texts, first.run(queries, [])):
        rows = pool.doc_rows[:30]
        best = rows[np.argsort(-judge.predict([(text, corpus.doc_text(int(r))) for r in rows]), kind="stable")[:3]]
        picked = [*best[:2].tolist(), int(rng.choice(rows))]
        judged[qid] = {f"d{r}": g for r, g in zip(picked, (2, 1, 1))}
    return Dataset("toy", corpus, queries, {"train": Qrels(judged)})


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One work directory for the tests that may reuse each other's measurements (the cache is tested apart)."""
    return tmp_path_factory.mktemp("shared-work")


def _graph(small, large):
    return StubRetriever("first", k=40) >> CrossEncoderReranker(small, max_length=64, depth=30, k=10, blend=1.0, name="rerank")


def _run(models, dataset, tmp_path, verify=0, **extra):
    small, large = models
    settings = TuneSettings(**{**SETTINGS, "models": (large,), **extra})
    env = Environment(dataset.corpus, work_dir=tmp_path / "work", progress=False)
    return tune_rerank(_graph(small, large), dataset, split="train", settings=settings, env=env, progress=False,
                       say=lambda _: None, verify=verify)


def _as_pipeline(point, small, large):
    """The pipeline a point stands for, built by hand from its steps."""
    pipe = StubRetriever("first", k=40)
    for i, s in enumerate(point.steps):
        adaptive = None if s.margin is None else {"block": 10, "min_depth": 10, "margin": s.margin}
        pipe = pipe >> CrossEncoderReranker(s.model, max_length=64, depth=s.depth, k=s.k, blend=1.0, backend=s.backend,
                                            adaptive_depth=adaptive, name=f"r{i}")
    return Pipeline(pipe)


def test_every_kind_of_configuration_ranks_exactly_as_its_pipeline(models, dataset, shared):
    from stagegraph.evaluation.evaluate import evaluate

    small, large = models
    result = _run(models, dataset, shared)
    kinds = {p.kind for p in result.points}
    assert kinds == {"pool", "fixed", "adaptive", "cascade"}
    labels = {p.label for p in result.points}
    assert {"small torch depth 10", "large torch depth 30", "small torch depth 30 -> 20 >> large torch -> 10"} <= labels
    env = Environment(dataset.corpus, work_dir=shared / "work", progress=False)
    checked = [p for p in result.points if p.kind != "pool"]
    one_of_each = [next(p for p in checked if p.kind == kind and p.label.startswith(model))
                   for kind, model in (("fixed", "large"), ("cascade", "small"))]
    shallowest = min((p for p in checked if p.kind == "adaptive"), key=lambda p: p.pairs)
    assert shallowest.pairs < 30  # the rule did stop early somewhere
    one_of_each.append(shallowest)
    for point in one_of_each:
        report = evaluate(_as_pipeline(point, small, large), dataset, split="train", metrics=["ndcg@10"], mode="batch",
                          env=env, progress=False)
        assert report.stages[report.output].metrics["ndcg@10"] == pytest.approx(point.ndcg, abs=1e-4), point.label
    # adaptive points score fewer pairs than the deepest fixed depth, never more
    deepest = next(p for p in result.points if p.label == "small torch depth 30")
    for p in result.points:
        if p.kind == "adaptive" and p.label.startswith("small"):
            assert 20 <= p.pairs <= deepest.pairs
    assert all(p.mean_ms > 0 and p.p95_ms >= 0 for p in checked)


def test_each_pair_is_scored_once_per_scorer_and_a_stopped_run_resumes(models, dataset, tmp_path, monkeypatch):
    calls = []
    original = CrossEncoderReranker.score_rows

    def counting(self, query, rows):
        calls.append((self.name, query, tuple(int(r) for r in rows)))
        return original(self, query, rows)

    monkeypatch.setattr(CrossEncoderReranker, "score_rows", counting)
    early = _run(models, dataset, tmp_path, time_limit_s=1e-9, warmup=0)
    assert early.stopped_early or early.queries < early.queries_total
    first_calls = len(calls)
    full = _run(models, dataset, tmp_path, warmup=0)
    assert not full.stopped_early and full.queries == full.queries_total == 8
    pairs = {}
    for name, query, rows in calls:
        for r in rows:
            pairs[(name, query, r)] = pairs.get((name, query, r), 0) + 1
    assert max(pairs.values()) == 1  # across both runs: every (scorer, query, document) scored once
    assert len(pairs) == 2 * 8 * 30 and first_calls < len(calls)
    before = len(calls)
    again = _run(models, dataset, tmp_path, warmup=0)  # everything from the cache: nothing scored
    assert len(calls) == before
    assert [(p.label, p.ndcg, p.mean_ms) for p in again.points] == [(p.label, p.ndcg, p.mean_ms) for p in full.points]


def test_the_recommendation_fits_the_budget_and_is_written_as_a_pipeline(models, dataset, shared, tmp_path):
    register_stubs()
    result = _run(models, dataset, shared)
    ordered = sorted(p.p95_ms for p in result.points if p.kind != "pool")
    budget = ordered[len(ordered) // 2]
    tight = _run(models, dataset, shared, budget_ms=budget, verify=4)
    best = tight.point(tight.recommended)
    # re-run as real pipelines on 4 queries: the same rankings, and a measured time of its own
    assert {v.label for v in tight.verifications} == {best.label, tight.naive}
    for v in tight.verifications:
        assert v.queries == 4 and v.ndcg_measured == pytest.approx(v.ndcg_estimated, abs=1e-4) and v.mean_ms_measured > 0
    assert best.kind != "pool" and best.ndcg > tight.pool_ndcg
    assert best.p95_ms <= budget
    assert best.ndcg == max(p.ndcg for p in tight.points if p.p95_ms <= budget)
    pipe = Pipeline.from_yaml(tight.recommended_yaml)
    rerankers = [s.stage for s in pipe.steps if s.stage.type_name == "cross_encoder"]
    assert [(r.config.model, r.config.backend, r.config.depth, r.config.k) for r in rerankers] == [
        (s.model, s.backend, s.depth, s.k) for s in best.steps
    ]
    out = tune_report.save(tight, tmp_path / "out")
    svg = (out / "frontier.svg").read_text()
    assert svg.startswith("<svg xmlns=") and "recommended" in svg and f"budget {budget:g} ms" in svg
    assert "90% of max gain" in svg or tight.ninety is None
    assert json.loads((out / "tune.json").read_text())["recommended"] == best.label
    assert len((out / "tune.csv").read_text().splitlines()) == len(tight.points) + 1


def test_frontier_helpers():
    def pt(label, ndcg, p95):
        return TunePoint(label=label, kind="fixed", ndcg=ndcg, mean_ms=p95 / 2, p95_ms=p95)

    points = [pt("pool", 0.50, 0.0), pt("a", 0.60, 10), pt("b", 0.58, 20), pt("c", 0.70, 30), pt("d", 0.71, 90), pt("e", 0.69, 95)]
    assert [p.label for p in pareto(points)] == ["pool", "a", "c", "d"]
    assert ninety_point(points, 0.50).label == "c"  # gain .20 >= 0.9 * .21 at the lowest P95
    assert recommend(points, 25).label == "a" and recommend(points, 100).label == "d"
    assert recommend(points, -1) is None


def test_bad_settings_are_one_line_errors(models, dataset, tmp_path):
    with pytest.raises(TuneError, match="multiples of the block"):
        _run(models, dataset, tmp_path, depths=(10, 25))
    with pytest.raises(TuneError, match="unknown backend"):
        _run(models, dataset, tmp_path, backends=("fp8",))
    env = Environment(dataset.corpus, work_dir=tmp_path / "work", progress=False)
    with pytest.raises(TuneError, match="no cross_encoder stage"):
        tune_rerank(Pipeline(StubRetriever("first", k=40)), dataset, split="train", env=env, progress=False, say=lambda _: None)


def test_the_command_writes_the_report_and_a_loadable_recommendation(models, dataset, shared, tmp_path, capsys):
    from stagegraph.cli.app import main

    register_stubs()
    small, large = models
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    corpus = dataset.corpus
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                               for i, t in zip(corpus.ids, corpus.texts)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in dataset.queries))
    qrels = dataset.qrels["train"]
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q in qrels.query_ids for d, g in qrels.for_query(q).items()))
    config = tmp_path / "p.yaml"
    config.write_text("pipeline:\n  - {type: stub_retriever, name: first, k: 40}\n"
                      f"  - {{type: cross_encoder, name: rerank, model: {small}, depth: 30, k: 10, max_length: 64, blend: 1.0}}\n")
    out = tmp_path / "out"
    code = main(["--quiet", "--work-dir", str(shared / "work"), "tune-rerank", str(config), "--dataset", str(root),
                 "--budget-ms", "1000", "--depths", "10,20,30", "--backends", "torch", "--models", large, "--out", str(out)])
    assert code == 0
    for name in ("tune.json", "tune.csv", "tune.html", "frontier.svg", "recommended.yaml"):
        assert (out / name).is_file(), name
    recommended = Pipeline.from_yaml(out / "recommended.yaml")
    assert recommended.output in {"rerank", "large"} and recommended.names[0] == "first"
    code = main(["--quiet", "tune-rerank", str(config), "--dataset", str(root), "--depths", "10,15"])
    assert code == 2 and "multiples of the block" in capsys.readouterr().err
