"""Pinned expectations: the loader and checker (with stub graphs), then every real entry whose
dataset is present here (configs/expectations/*.yaml; slow ones only with STAGEGRAPH_SLOW=1)."""

from __future__ import annotations

import os

import pytest

from eval_fixtures import OracleRetriever, tiny_dataset
from stagegraph.cli.app import main
from conftest import shared_dataset
from stagegraph.evaluation.expectations import (
    EXPECTATIONS_DIR,
    dataset_available,
    ExpectationError,
    check,
    load_expectations,
    load_file,
    select,
    skip_reason,
)
from stubs import StubRetriever

ENTRY = """
- id: oracle-tiny
  dataset: tiny
  config: configs/oracle.yaml
  command: stagegraph eval configs/oracle.yaml --dataset tiny
  metrics: {nDCG@10: {expected: 1.0, tolerance: 0.001}, recall@10: {expected: 1.0, tolerance: 0}}
- id: random-tiny
  dataset: tiny
  config: configs/random.yaml
  stage: r
  command: stagegraph eval configs/random.yaml --dataset tiny
  metrics: {ndcg@10: {expected: 0.9, tolerance: 0.01}}
  cost: slow
"""


@pytest.fixture
def entries(tmp_path):
    (tmp_path / "a.yaml").write_text(ENTRY)
    return load_expectations(tmp_path)


def graph_loader(path):
    dataset = tiny_dataset()
    if path.name == "oracle.yaml":
        return OracleRetriever("o", qrels=dataset.qrels["test"])
    return StubRetriever("r", k=20)


def test_load_canonicalises_metrics(entries):
    assert [e.id for e in entries] == ["oracle-tiny", "random-tiny"]
    assert list(entries[0].metrics) == ["ndcg@10", "recall@10"]
    assert entries[0].cost == "fast" and entries[0].mode == "batch" and entries[1].cost == "slow"
    assert entries[0].config_path().name == "oracle.yaml" and entries[0].config_path().is_absolute()


def test_check_passes_and_fails_with_figures(entries):
    good = check(entries[0], graph_loader=graph_loader, dataset_loader=lambda name: tiny_dataset())
    assert good.status == "passed" and good.measured["ndcg@10"] == pytest.approx(1.0)
    bad = check(entries[1], graph_loader=graph_loader, dataset_loader=lambda name: tiny_dataset())
    assert bad.status == "failed" and len(bad.failures) == 1
    assert "ndcg@10" in bad.failures[0] and "expected 0.9000" in bad.failures[0]
    assert bad.measured["ndcg@10"] < 0.5


def test_unknown_stage_is_an_error(entries):
    entry = entries[1].model_copy(update={"stage": "nope"})
    out = check(entry, graph_loader=graph_loader, dataset_loader=lambda name: tiny_dataset())
    assert out.status == "error" and "no stage 'nope'" in out.reason


def test_selection_by_dataset_and_cost(entries):
    present = lambda name: name == "tiny"  # noqa: E731
    assert [e.id for e in select(entries, slow=False, available=present)] == ["oracle-tiny"]
    assert [e.id for e in select(entries, slow=True, available=present)] == ["oracle-tiny", "random-tiny"]
    assert "not present" in skip_reason(entries[0], slow=True, available=lambda name: False)
    assert "STAGEGRAPH_SLOW" in skip_reason(entries[1], slow=False, available=present)


@pytest.mark.parametrize(
    "text, message",
    [
        ("- {id: x, dataset: d, config: c, command: k, metrics: {bleu@4: {expected: 1, tolerance: 0}}}", "bleu"),
        ("- {id: x, dataset: d, config: c, command: k, metrics: {map: {expected: 1}}}", "tolerance"),
        ("- {id: x, dataset: d, config: c, command: k, metrics: {map: {expected: 1, tolerance: 0}}, cots: fast}", "cots"),
        ("- {id: x, dataset: d, config: c, command: k, metrics: {map: {expected: 1, tolerance: 0}}, cost: medium}", "cost"),
        ("id: x", "YAML list"),
        ("- [1, 2", "not valid YAML"),
    ],
)
def test_invalid_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ExpectationError) as info:
        load_file(path)
    assert message in str(info.value) and "bad.yaml" in str(info.value)


def test_duplicate_ids_across_files(tmp_path):
    (tmp_path / "a.yaml").write_text(ENTRY)
    (tmp_path / "b.yaml").write_text(ENTRY)
    with pytest.raises(ExpectationError, match="already used"):
        load_expectations(tmp_path)


def test_cli_lists_and_reports_bad_files(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(ENTRY)
    assert main(["check-expectations", "--dir", str(tmp_path), "--list"]) == 0  # nothing runs: "tiny" is absent
    assert "oracle-tiny" in capsys.readouterr().out
    (tmp_path / "b.yaml").write_text("- {id: y}")
    assert main(["check-expectations", "--dir", str(tmp_path)]) == 2
    assert "entry 1 (y): dataset: Field required" in capsys.readouterr().err
    assert main(["check-expectations", "--dir", str(tmp_path / "none")]) == 2
    assert "no pinned expectations found" in capsys.readouterr().err
    (tmp_path / "b.yaml").unlink()
    assert main(["check-expectations", "--dir", str(tmp_path), "--id", "zzz"]) == 2
    assert "no expectation with id zzz" in capsys.readouterr().err


# -- the real pinned figures --------------------------------------------------------------------

try:
    REAL = load_expectations(EXPECTATIONS_DIR)
except ExpectationError as exc:  # an invalid file must fail loudly, not vanish
    REAL, LOAD_ERROR = [], str(exc)
else:
    LOAD_ERROR = ""


def test_expectation_files_are_valid():
    assert not LOAD_ERROR, LOAD_ERROR


def _param(entry):
    marks = [pytest.mark.slow] if entry.dataset != "sample" or entry.cost == "slow" else []
    if entry.dataset != "sample":
        marks.append(pytest.mark.dataset)
    return pytest.param(entry, id=entry.id, marks=marks)


@pytest.mark.parametrize("entry", [_param(e) for e in REAL])
def test_pinned_expectation(entry):
    if not dataset_available(entry.dataset):
        shared_dataset(entry.dataset)  # fails under CI=true, skips elsewhere
    reason = skip_reason(entry)
    if reason:
        pytest.skip(reason)
    outcome = check(entry, progress=False)
    assert outcome.status == "passed", f"{entry.id} ({entry.command}): {outcome.reason} {outcome.failures}"


def test_slow_switch_reads_the_environment(entries, monkeypatch):
    monkeypatch.setenv("STAGEGRAPH_SLOW", "1")
    assert skip_reason(entries[1], available=lambda name: True) is None
    monkeypatch.setenv("STAGEGRAPH_SLOW", "0")
    assert skip_reason(entries[1], available=lambda name: True) is not None
    assert os.environ["STAGEGRAPH_SLOW"] == "0"
