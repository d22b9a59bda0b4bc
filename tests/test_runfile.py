"""Any system's run: `stagegraph eval --run FILE --dataset D` and `compare` over run files, scored as
trec_eval scores them (checked against pytrec_eval on files with ties and documents the corpus lacks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stagegraph.cli.app import main
from stagegraph.corpora.beir import load_beir
from stagegraph.evaluation.runfile import report_of_run

pytrec_eval = pytest.importorskip("pytrec_eval")


def write_beir(root, n_docs=30, n_queries=12, seed=0):
    rng = np.random.default_rng(seed)
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"document {i}"}) + "\n")
    qrels = {}
    with open(root / "queries.jsonl", "w") as fh:
        for q in range(n_queries):
            fh.write(json.dumps({"_id": f"q{q}", "text": f"query {q}"}) + "\n")
            judged = rng.choice(n_docs, size=5, replace=False)
            qrels[f"q{q}"] = {f"d{r}": int(g) for r, g in zip(judged, rng.integers(0, 3, size=5))}
    qrels["q0"]["ghost"] = 2  # judged, not in the corpus: a run that names it retrieves it
    with open(root / "qrels" / "test.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, docs in qrels.items():
            for d, g in docs.items():
                fh.write(f"{q}\t{d}\t{g}\n")
    return qrels


def write_run(path, qrels, seed, n_docs=30):
    rng = np.random.default_rng(seed)
    run = {}
    with open(path, "w") as fh:
        for q in list(qrels)[:-1]:  # the last judged query is missing from the run: it scores 0
            docs = [f"d{r}" for r in rng.choice(n_docs, size=15, replace=False)] + (["ghost", "stranger"] if q == "q0" else [])
            scores = rng.integers(0, 4, size=len(docs)).astype(float)  # many ties
            run[q] = dict(zip(docs, scores))
            for rank, (d, s) in enumerate(zip(docs, scores), start=1):  # ranks in file order, not score order
                fh.write(f"{q} Q0 {d} {rank} {s} other-system\n")
    return run


def test_a_run_file_is_scored_as_trec_eval_scores_it(tmp_path):
    qrels = write_beir(tmp_path / "data")
    run = write_run(tmp_path / "other.trec", qrels, seed=1)
    dataset = load_beir(tmp_path / "data", progress=False)
    report = report_of_run(tmp_path / "other.trec", dataset, metrics=["nDCG@10", "RR", "AP", "P@5", "R@10", "Bpref"])
    assert list(report.stages) == ["other"] and report.mode == "run file" and report.missing_queries == 1
    measures = {"ndcg@10": "ndcg_cut_10", "mrr": "recip_rank", "map": "map", "p@5": "P_5", "recall@10": "recall_10",
                "bpref": "bpref"}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, set(measures.values())).evaluate(run)
    for ours, trec in measures.items():
        values = dict(zip(report.per_query.qids, report.per_query.metrics["other"][ours]))
        for qid in qrels:
            assert values[qid] == pytest.approx(theirs.get(qid, {}).get(trec, 0.0), abs=1e-9), (ours, qid)
    assert dict(zip(report.per_query.qids, report.per_query.metrics["other"]["ndcg@10"]))["q0"] > 0


def test_eval_and_compare_take_run_files(tmp_path, capsys):
    qrels = write_beir(tmp_path / "data")
    write_run(tmp_path / "a.trec", qrels, seed=1)
    write_run(tmp_path / "b.trec", qrels, seed=2)
    data = str(tmp_path / "data")
    assert main(["--quiet", "eval", "--run", str(tmp_path / "a.trec"), "--dataset", data, "--out", str(tmp_path / "ra")]) == 0
    saved = json.loads((tmp_path / "ra" / "report.json").read_text())
    assert saved["output"] == "a" and saved["mode"] == "run file" and "judged@10" in saved["stages"]["a"]["metrics"]
    assert (tmp_path / "ra" / "runs" / "a.trec").is_file()
    capsys.readouterr()
    # compare over run files needs the dataset; the message names it, and the fix works
    assert main(["compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec")]) == 2
    assert "--dataset D" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec"), "--dataset", data,
                 "--permutations", "200", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "b vs a" in out and "nDCG@10" in out
    # and a saved report beside a run file
    assert main(["compare", str(tmp_path / "ra"), str(tmp_path / "b.trec"), "--dataset", data,
                 "--permutations", "100", "--bootstrap", "100"]) == 0


def test_eval_needs_a_pipeline_or_a_run(tmp_path, capsys):
    write_beir(tmp_path / "data")
    assert main(["eval", "--dataset", str(tmp_path / "data")]) == 2
    assert "--run RUN.trec" in capsys.readouterr().err
    assert main(["eval", "bm25", "--run", "x.trec", "--dataset", str(tmp_path / "data")]) == 2
    assert "drop one" in capsys.readouterr().err
