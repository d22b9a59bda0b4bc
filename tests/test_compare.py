"""compare(): paired tests, Holm correction, effect size, latency deltas, and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from eval_fixtures import OracleRetriever, tiny_dataset
from stagegraph.cli.app import main
from stagegraph.evaluation.compare import CompareError, cohen_d, compare, holm, paired_t_test, randomisation_test
from stagegraph.evaluation.evaluate import evaluate
from stagegraph.evaluation.writer import save_report
from stubs import StubRerank, StubRetriever


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    dataset = tiny_dataset(n_queries=30)
    qrels = dataset.qrels["test"]
    base = evaluate(StubRetriever("r", k=20, seed=1), dataset, progress=False)
    same = evaluate(StubRetriever("r", k=20, seed=1), dataset, progress=False)
    better = evaluate(OracleRetriever("r", k=20, noise=0.3, qrels=qrels), dataset, progress=False)
    root = tmp_path_factory.mktemp("reports")
    for name, report in (("base", base), ("same", same), ("better", better)):
        save_report(report, root / name)
    return {"base": base, "same": same, "better": better, "root": root}


def test_known_difference_is_significant_identical_is_not(reports):
    result = compare([reports["base"], reports["same"], reports["better"]], labels=["base", "same", "better"])
    assert result.baseline == "base" and result.systems == ["same", "better"]
    # every system x every default metric but recall@100, which a 20-document run does not reach
    assert len(result.metrics) == 2 * 4
    assert [(s.system, s.metric) for s in result.skipped] == [("same", "recall@100"), ("better", "recall@100")]
    for c in result.metrics:
        if c.system == "same":
            assert c.delta == 0 and c.p_t == 1.0 and c.p_rand == 1.0 and c.cohen_d == 0.0 and not c.significant
        else:
            assert c.delta > 0 and c.significant and c.p_t_holm < 0.05 and c.cohen_d > 0.5, c
    ndcg = next(c for c in result.metrics if c.system == "better" and c.metric == "ndcg@10")
    assert ndcg.system_mean == pytest.approx(reports["better"].stages["r"].metrics["ndcg@10"])
    lat = [d for d in result.latency if d.system == "better"]
    assert {d.stage for d in lat} == {"r", "end to end"}
    assert lat[0].delta_p95 == pytest.approx(lat[0].system_p95 - lat[0].baseline_p95)


def test_holm_hand_example_and_order():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, 0.001, 0.5, 0.01])
    order = np.argsort([0.2, 0.001, 0.5, 0.01])
    assert np.all(np.diff(adjusted[order]) >= 0)  # step-down keeps the order of the raw p-values
    assert holm([0.9, 0.8]).max() <= 1.0


def test_holm_is_applied_across_all_comparisons(reports):
    result = compare([reports["base"], reports["better"]], labels=["base", "better"], permutations=500)
    raw = [c.p_t for c in result.metrics]
    assert [c.p_t_holm for c in result.metrics] == pytest.approx(holm(raw).tolist())
    assert all(c.p_rand_holm >= c.p_rand for c in result.metrics)


def test_randomisation_test_matches_exact_enumeration():
    rng = np.random.default_rng(3)
    a, b = rng.random(10), rng.random(10) + 0.15
    d = a - b
    flips = np.array(list(itertools.product([-1, 1], repeat=10)))
    exact = np.mean(np.abs(flips @ d) / 10 >= abs(d.mean()) - 1e-12)
    assert randomisation_test(a, b, permutations=20_000, seed=1) == pytest.approx(exact, abs=0.015)
    assert randomisation_test(a, b, seed=5) == randomisation_test(a, b, seed=5)  # seeded


def test_t_test_and_effect_size():
    rng = np.random.default_rng(0)
    a, b = rng.random(40), rng.random(40)
    assert paired_t_test(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    d = a - b
    assert cohen_d(a, b) == pytest.approx(d.mean() / d.std(ddof=1))
    assert paired_t_test(a + 0.1, a) == 0.0 and cohen_d(a + 0.1, a) is None  # a constant shift


def test_reports_of_other_datasets_or_stages_are_refused(reports):
    other = evaluate(StubRetriever("r", k=20), tiny_dataset(n_docs=50), progress=False)
    with pytest.raises(CompareError, match="one dataset split"):
        compare([reports["base"], other])
    with pytest.raises(CompareError, match="no stage"):
        compare([reports["base"], reports["same"]], stage="nope")
    with pytest.raises(CompareError, match="at least two"):
        compare([reports["base"]])


def test_compare_on_a_named_inner_stage():
    dataset = tiny_dataset()
    a = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5), dataset, progress=False)
    b = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5, flip=True), dataset, progress=False)
    inner = compare([a, b], stage="r", permutations=200)
    assert all(c.delta == 0 for c in inner.metrics)
    outer = compare([a, b], permutations=200)
    assert {c.stage for c in outer.metrics} == {"rr"}


def _cli(argv):
    return main(argv)


def test_cli_writes_json_and_csv(reports, tmp_path, capsys):
    root = reports["root"]
    out = tmp_path / "cmp"
    code = _cli(["compare", str(root / "better" / "report.json"), str(root / "same"),
                 "--baseline", str(root / "base"), "--permutations", "300", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "ΔP95" in printed
    assert max(len(line) for line in printed.splitlines() if "written to" not in line) <= 100
    data = json.loads((out / "compare.json").read_text())
    assert data["baseline"] == "base" and data["systems"] == ["better", "same"]
    csv_lines = (out / "compare.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 2 * 4 and csv_lines[0].startswith("system,stage,metric")  # recall@100: n/a


def test_cli_bad_input_exit_code(reports, tmp_path, capsys):
    assert _cli(["compare", str(reports["root"] / "base")]) == 2
    assert _cli(["compare", str(tmp_path / "missing"), str(reports["root"] / "base")]) == 2
    assert "error:" in capsys.readouterr().err
