"""compare(): every pair, paired tests with Holm and BH over the family, bootstrap CIs, effect size, the
minimum detectable difference (checked against scipy and statsmodels), latency honest under the cache,
Judged@10 warnings, tables to paste, and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy import stats

from eval_fixtures import OracleRetriever, tiny_dataset
from stagegraph.cli.app import main
from stagegraph.evaluation.compare import CompareError, compare, to_latex, to_markdown
from stagegraph.evaluation.statistics import (
    benjamini_hochberg, bootstrap_ci, cohen_d, detectable_effect, holm, minimum_detectable_difference, paired_t_test,
    randomisation_test,
)
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
    result = compare([reports["base"], reports["same"], reports["better"]], labels=["base", "same", "better"],
                     baseline=0)
    assert result.baseline == "base" and result.systems == ["same", "better"]
    # every system x every default metric but recall@100, which a 20-document run does not reach
    assert len(result.metrics) == 2 * 5 == result.family.size
    assert result.family.pairs == [("base", "same"), ("base", "better")]
    assert [(s.system, s.metric) for s in result.skipped] == [("same", "recall@100"), ("better", "recall@100")]
    for c in result.metrics:
        if c.system == "same":
            assert c.delta == 0 and c.p_t == 1.0 and c.p_rand == 1.0 and c.cohen_d == 0.0 and not c.significant
            assert (c.ci_low, c.ci_high) == (0.0, 0.0)
        elif c.metric != "judged@10":
            assert c.delta > 0 and c.significant and c.p_t_holm < 0.05 and c.cohen_d > 0.5, c
            assert c.ci_low < c.delta < c.ci_high and c.ci_low > 0  # a real gain: the interval excludes 0
            assert 0 < c.mdd < c.delta  # 30 queries could detect it
    ndcg = next(c for c in result.metrics if c.system == "better" and c.metric == "ndcg@10")
    assert ndcg.system_mean == pytest.approx(reports["better"].stages["r"].metrics["ndcg@10"])
    assert ndcg.measure == "nDCG@10"
    lat = [d for d in result.latency if d.system == "better"]
    assert {d.stage for d in lat} == {"r", "end to end"} and all(d.comparable for d in lat)
    assert lat[0].delta_p95 == pytest.approx(lat[0].system_p95 - lat[0].baseline_p95)


def test_without_a_baseline_every_pair_is_compared_and_raw_p_values_do_not_depend_on_the_others(reports):
    two = compare([reports["base"], reports["better"]], labels=["base", "better"], permutations=400)
    three = compare([reports["base"], reports["same"], reports["better"]], labels=["base", "same", "better"],
                    permutations=400)
    assert three.baseline is None and three.family.pairs == [("base", "same"), ("base", "better"), ("same", "better")]
    assert three.family.size == 3 * 5 and two.family.size == 5
    for c in two.metrics:
        same_pair = next(x for x in three.metrics if (x.baseline, x.system, x.metric) == (c.baseline, c.system, c.metric))
        assert (same_pair.p_t, same_pair.p_rand, same_pair.ci_low, same_pair.ci_high) == (c.p_t, c.p_rand, c.ci_low, c.ci_high)
        assert same_pair.p_rand_holm >= c.p_rand_holm  # a bigger family: corrected p-values only grow


def test_holm_hand_example_and_order():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, 0.001, 0.5, 0.01])
    order = np.argsort([0.2, 0.001, 0.5, 0.01])
    assert np.all(np.diff(adjusted[order]) >= 0)  # step-down keeps the order of the raw p-values
    assert holm([0.9, 0.8]).max() <= 1.0


def test_holm_and_bh_are_applied_across_the_family(reports):
    result = compare([reports["base"], reports["better"]], labels=["base", "better"], permutations=500)
    raw = [c.p_t for c in result.metrics]
    assert [c.p_t_holm for c in result.metrics] == pytest.approx(holm(raw).tolist())
    assert [c.p_t_bh for c in result.metrics] == pytest.approx(benjamini_hochberg(raw).tolist())
    assert all(c.p_rand_holm >= c.p_rand_bh >= c.p_rand for c in result.metrics)


# -- against statsmodels and scipy, fixed inputs -------------------------------------------------------
FIXED_P = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216, 0.3, 0.9, 1.0]


def test_holm_and_bh_equal_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    for p in (FIXED_P, FIXED_P[::-1], [0.5], [0.01, 0.01, 0.02]):
        assert holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1], abs=1e-9)
        assert benjamini_hochberg(p) == pytest.approx(multitest.multipletests(p, method="fdr_bh")[1], abs=1e-9)


@pytest.mark.parametrize("n", [5, 30, 116, 300])
def test_minimum_detectable_difference_equals_statsmodels_power(n):
    power = pytest.importorskip("statsmodels.stats.power")
    ours = detectable_effect(n, 0.05, 0.8)
    # statsmodels' own power function gives 80% at our effect, to 1e-9 ...
    assert power.TTestPower().power(ours, nobs=n, alpha=0.05, alternative="two-sided") == pytest.approx(0.8, abs=1e-9)
    # ... and its solver lands next to it (it stops at a power within ~5e-5 of 80%: a looser tolerance)
    solved = power.TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
    assert ours == pytest.approx(solved, rel=1e-4)
    rng = np.random.default_rng(n)
    a, b = rng.random(n), rng.random(n)
    assert minimum_detectable_difference(a, b) == pytest.approx(ours * (a - b).std(ddof=1), abs=1e-12)


def test_bootstrap_ci_is_scipys_percentile_interval_seeded_and_reproducible():
    rng = np.random.default_rng(7)
    a, b = rng.random(50), rng.random(50) - 0.05
    low, high = bootstrap_ci(a, b, resamples=2000, seed=3)
    again = bootstrap_ci(a, b, resamples=2000, seed=3)
    assert (low, high) == again
    d = a - b
    theirs = stats.bootstrap((d,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(3))
    assert (low, high) == pytest.approx((theirs.confidence_interval.low, theirs.confidence_interval.high), abs=1e-9)
    # and it means what it says: the percentile interval of resampled means, by hand
    idx = np.random.default_rng(11).integers(0, d.size, size=(20000, d.size))
    by_hand = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    assert low == pytest.approx(by_hand[0], abs=0.01) and high == pytest.approx(by_hand[1], abs=0.01)
    assert low < d.mean() < high


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
    # the hand-computed d_z of a fixed pair of runs
    assert cohen_d(np.array([0.5, 0.7, 0.9]), np.array([0.4, 0.4, 0.6])) == pytest.approx(0.2333333333 / 0.1154700538, abs=1e-8)


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


def test_cli_writes_json_csv_and_tables_to_paste(reports, tmp_path, capsys):
    root = reports["root"]
    out = tmp_path / "cmp"
    code = _cli(["compare", str(root / "better" / "report.json"), str(root / "same"),
                 "--baseline", str(root / "base"), "--permutations", "300", "--bootstrap", "500", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "ΔP95" in printed and "corrected over 10 comparisons (2 pairs x 5 measures)" in printed
    assert "t raw" in printed and "rand Holm" in printed and "rand BH" in printed
    assert max(len(line) for line in printed.splitlines() if "written to" not in line) <= 100
    data = json.loads((out / "compare.json").read_text())
    assert data["baseline"] == "base" and data["systems"] == ["better", "same"] and data["family"]["size"] == 10
    csv_lines = (out / "compare.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 2 * 5 and csv_lines[0].startswith("baseline,system,stage,metric,measure")  # recall@100: n/a
    markdown = (out / "compare.md").read_text()
    assert markdown.count("\n| base | better | ") == 5 and "Holm (family-wise) and Benjamini-Hochberg" in markdown
    latex = (out / "compare.tex").read_text()
    assert latex.startswith("\\begin{table}") and "\\toprule" in latex and latex.count(r" \\") == 1 + 10
    assert _cli(["compare", str(root / "base"), str(root / "better"), "--table", "latex", "--permutations", "100"]) == 0
    assert capsys.readouterr().out.startswith("\\begin{table}")


def test_tables_to_paste_carry_every_comparison(reports):
    result = compare([reports["base"], reports["better"]], labels=["base", "better"], permutations=100, bootstrap=200)
    md, tex = to_markdown(result), to_latex(result)
    for c in result.metrics:
        assert f"| base | better | {c.measure} | {c.baseline_mean:.4f} | {c.system_mean:.4f} | {c.delta:+.4f}" in md
        assert f"base & better & {c.measure.replace('@', '@')} & {c.baseline_mean:.4f}" in tex


def test_cached_latency_is_never_set_against_a_measured_one(tmp_path):
    dataset = tiny_dataset()
    cache = tmp_path / "cache"
    from stagegraph.pipeline.cache import StageCache

    measured = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5), dataset, progress=False, cache=StageCache(cache))
    cached = evaluate(StubRetriever("r", k=20) >> StubRerank("rr", k=5, flip=True), dataset, progress=False,
                      cache=StageCache(cache))
    assert cached.stages["r"].cache_hit and not measured.stages["r"].cache_hit
    assert cached.end_to_end.includes == ["rr"] and measured.end_to_end.includes == ["r", "rr"]
    inner = compare([measured, cached], labels=["a", "b"], stage="r", permutations=50, bootstrap=50)
    row = next(d for d in inner.latency if d.stage == "r")
    assert row.note == "not measured: b read it from the cache" and row.delta_p50 is None
    e2e = next(d for d in inner.latency if d.stage == "end to end")
    assert e2e.note.startswith("not comparable: a's covers r, rr, b's rr") and e2e.delta_p95 is None


def test_a_stage_with_few_judged_documents_gets_a_warning(reports):
    result = compare([reports["base"], reports["better"]], labels=["base", "better"], permutations=50, bootstrap=50)
    judged = {label: reports[label].stages["r"].metrics["judged@10"] for label in ("base", "better")}
    warned = [w for w in result.warnings if "Judged@10" in w]
    assert len(warned) == sum(v < 0.9 for v in judged.values()) >= 1
    assert all("lower bounds" in w for w in warned)


def test_cli_bad_input_exit_code(reports, tmp_path, capsys):
    assert _cli(["compare", str(reports["root"] / "base")]) == 2
    assert _cli(["compare", str(tmp_path / "missing"), str(reports["root"] / "base")]) == 2
    assert "error:" in capsys.readouterr().err
