"""Numeric backends: CPU features read from the machine, torch bf16 autocast, and `backend: auto`
choosing on a held-out calibration set (and saying why)."""

import json
import shutil
import time

import numpy as np
import pytest
from test_rerank import make_spread_cross_encoder

from stagegraph.corpora.types import Corpus, Qrels, Queries
from stagegraph.evaluation.scoring import score_run
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.rerank.blend import BlendSpec
from stagegraph.stages.rerank.calibration import (
    CALIBRATION_FILE, CalibrationQuery, CalibrationSet, choose_backend, ndcg_at, save_calibration,
)
from stagegraph.stages.rerank.cpu import CpuFeatures, _read_flags, backend_support, cpu_features
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker

WORDS = "the cell protein gene cancer retrieval search query document index dense sparse vector rank score".split()


def test_features_come_from_the_cpuinfo_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n")
    flags, source = _read_flags(info)
    features = CpuFeatures(flags=flags, source=source)
    assert flags == ("avx2", "fma", "avx512f", "avx512_vnni") and features.vnni and not features.bf16
    assert backend_support("torch-bf16", features)[0] is False
    assert "neither AVX-512 BF16 nor AMX" in backend_support("torch-bf16", features)[1]
    amx = CpuFeatures(flags=("amx_bf16", "amx_tile", "amx_int8"))
    assert amx.bf16 and amx.vnni and backend_support("torch-bf16", amx) == (True, "the CPU has AMX")
    assert _read_flags(tmp_path / "missing") == ((), "unavailable")
    nothing = CpuFeatures()  # flags unreadable: nothing is assumed
    assert not nothing.bf16 and backend_support("torch-bf16", nothing)[0] is False
    here = cpu_features()  # this machine: the same reading of its own /proc/cpuinfo
    assert (here.flags, here.source) == _read_flags()


def test_ndcg_of_the_calibration_matches_the_trec_eval_scorer():
    rng = np.random.default_rng(0)
    corpus = Corpus([f"d{i}" for i in range(30)], [""] * 30, [f"t{i}" for i in range(30)])
    for q in range(20):
        judged = {f"d{j}": int(rng.integers(0, 3)) for j in rng.choice(30, 8, replace=False)}
        judged[f"d{rng.integers(30)}"] = 2
        order = rng.permutation(30)[:12]
        grades = [judged.get(f"d{r}", 0) for r in order]
        want = score_run([Ranking(order, np.arange(12, 0, -1, dtype=np.float32))], Queries(["q"], ["x"]),
                         Qrels({"q": judged}), corpus, ["ndcg@10"]).means["ndcg@10"]
        assert ndcg_at(grades, [g for g in judged.values() if g > 0]) == pytest.approx(want, abs=1e-9)


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory):
    return make_spread_cross_encoder(tmp_path_factory.mktemp("backends") / "ce", seed=5)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))) for _ in range(40)]
    return Corpus([f"d{i}" for i in range(40)], [""] * 40, texts)


def test_bf16_autocast_scores_track_fp32(tiny_ce, corpus, tmp_path):
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    queries = Queries(["a", "b"], ["dense protein", "cancer gene rank"])
    pools = [Ranking.from_scores(np.arange(40), np.linspace(1, 0, 40)) for _ in range(2)]
    runs = {}
    for backend in ("torch", "torch-bf16"):
        stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=40, k=40, blend=1.0, backend=backend)
        stage.warm_up(env)
        assert stage.backend == backend and stage.bound.scoring.scorer.backend == backend
        runs[backend] = [dict(zip(r.doc_rows.tolist(), r.provenance[stage.name].model_score.tolist()))
                         for r in stage.run(queries, [pools])]
    for fp32, bf16 in zip(runs["torch"], runs["torch-bf16"]):
        rows = sorted(fp32)
        a, b = np.array([fp32[r] for r in rows]), np.array([bf16[r] for r in rows])
        assert np.abs(a - b).max() > 0  # it is the bf16 path that ran
        assert np.corrcoef(a, b)[0, 1] > 0.99
    assert CrossEncoderReranker(str(tiny_ce), backend="torch-bf16").scorer_key() != CrossEncoderReranker(str(tiny_ce)).scorer_key()


class _Timed:
    """A scorer standing in for a backend whose speed and error the test fixes (real speeds are not controllable)."""

    def __init__(self, delay, noise, seed):
        self.delay, self.noise, self.rng = delay, noise, np.random.default_rng(seed)

    def score(self, queries, docs):
        time.sleep(self.delay)
        truth = np.array([float(d.split()[-1]) for d in docs])
        return (truth + self.rng.normal(scale=self.noise, size=len(docs))).astype(np.float32)


def _calibration(n=8, depth=10):
    rng = np.random.default_rng(1)
    queries = []
    for q in range(n):
        grades = [int(g) for g in rng.integers(0, 3, size=depth)]
        queries.append(CalibrationQuery(text=f"q{q}", docs=[f"doc {g + rng.random()}" for g in grades],
                                        upstream=list(np.linspace(1, 0, depth)), grades=grades,
                                        judged=[g for g in grades if g > 0]))
    return CalibrationSet(source="test", depth=depth, queries=queries)


def test_auto_picks_the_fastest_backend_within_tolerance_and_rejects_a_faster_worse_one():
    scorers = {"torch": _Timed(0.004, 0.0, 0), "torch-bf16": _Timed(0.002, 0.0, 1), "onnx": _Timed(0.006, 0.0, 2),
               "onnx-int8": _Timed(0.0, 5.0, 3)}
    supported = [("torch", True, "fp32"), ("torch-bf16", True, "bf16 here"), ("onnx", True, "fp32"),
                 ("onnx-int8", True, "int8 here")]
    choice, built = choose_backend(lambda b: scorers[b], supported, _calibration(), BlendSpec(alpha=1.0))
    trials = {t.backend: t for t in choice.trials}
    assert choice.chosen == "torch-bf16" and set(built) == set(scorers)
    assert trials["onnx-int8"].within_tolerance is False and trials["onnx-int8"].ms_per_query < trials["torch-bf16"].ms_per_query
    assert "onnx-int8" in choice.reason and "faster but rejected on quality" in choice.reason
    assert trials["torch"].delta == 0.0 and trials["torch-bf16"].ndcg == trials["torch"].ndcg
    line = choice.line()
    assert "backend auto picked torch-bf16" in line and "\n" not in line
    unsupported = [("torch", True, "fp32"), ("torch-bf16", False, "no AVX-512 BF16 here")]
    choice, _ = choose_backend(lambda b: scorers[b], unsupported, _calibration(), BlendSpec(alpha=1.0))
    assert choice.chosen == "torch" and "torch-bf16 not tried: no AVX-512 BF16 here" in choice.line()


def _calibrated_copy(tiny_ce, corpus, tmp_path):
    model = tmp_path / "calibrated"
    shutil.copytree(tiny_ce, model)
    rng = np.random.default_rng(4)
    queries = []
    for q in ("dense protein", "cancer gene", "rank fusion", "sparse index"):
        rows = rng.choice(len(corpus), 10, replace=False)
        grades = [int(g) for g in rng.integers(0, 2, size=10)]
        queries.append(CalibrationQuery(text=q, docs=[corpus.doc_text(int(r)) for r in rows], upstream=list(np.linspace(1, 0, 10)),
                                        grades=grades, judged=[g for g in grades if g] or [1]))
    save_calibration(model, CalibrationSet(source="test", depth=10, queries=queries))
    return model


def test_auto_resolves_at_warm_up_says_why_and_remembers_the_decision(tiny_ce, corpus, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    model = _calibrated_copy(tiny_ce, corpus, tmp_path)
    env = Environment(corpus, work_dir=tmp_path / "work", progress=False)
    stage = CrossEncoderReranker(str(model), max_length=64, depth=10, k=5, backend="auto")
    stage.warm_up(env)
    choice = stage.backend_choice
    assert choice is not None and not choice.cached and stage.backend == choice.chosen
    assert [t.backend for t in choice.trials] == ["torch", "torch-bf16", "onnx", "onnx-int8"]
    tried = {t.backend: t for t in choice.trials if t.tried}
    assert "torch" in tried and "onnx" in tried and choice.calibration_queries == 4
    assert tried[choice.chosen].within_tolerance and tried[choice.chosen].ms_per_query == min(
        t.ms_per_query for t in tried.values() if t.within_tolerance)
    assert ("torch-bf16" in tried) == cpu_features().bf16  # tried exactly where the CPU has bf16 in hardware
    assert stage.scorer_key() == CrossEncoderReranker(str(model), max_length=64, backend=choice.chosen).scorer_key()
    assert len(stage.run(Queries(["q"], ["dense protein"]), [[Ranking.from_scores(np.arange(10), np.ones(10))]])[0]) == 5
    # a second warm-up on this machine reads the decision back instead of measuring again
    monkeypatch.setattr("stagegraph.stages.rerank.scorers.choose_backend",
                        lambda *a, **k: pytest.fail("the decision should have been read back"))
    again = CrossEncoderReranker(str(model), max_length=64, depth=10, k=5, backend="auto")
    again.warm_up(env)
    assert again.backend_choice.cached and again.backend == stage.backend
    assert (tmp_path / "work" / "rerank_backend").is_dir()
    assert again.fingerprint() != CrossEncoderReranker(str(model), max_length=64, depth=10, k=5).fingerprint()


def test_auto_without_a_calibration_set_keeps_fp32_and_says_so(tiny_ce, corpus, tmp_path):
    assert not (tiny_ce / CALIBRATION_FILE).exists()
    stage = CrossEncoderReranker(str(tiny_ce), max_length=64, backend="auto")
    stage.warm_up(Environment(corpus, work_dir=tmp_path, progress=False))
    assert stage.backend == "torch" and "no calibration set" in stage.backend_choice.reason
    json.loads(stage.backend_choice.model_dump_json())  # a record the report can carry
