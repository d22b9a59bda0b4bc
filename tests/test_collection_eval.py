"""Evaluating a chunked collection against document qrels: chunk rankings scored as document rankings."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import pytrec_eval
from tiny_models import WORDS

import stagegraph as sg
from stagegraph.collection import Collection
from stagegraph.corpora.ingest import ChunkerConfig
from stagegraph.evaluation.aggregate import to_documents
from stagegraph.pipeline.ranking import Ranking

CONFIG = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 60}]}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """40 long documents cut into several small chunks each, 12 queries judged per document."""
    root = tmp_path_factory.mktemp("chunked")
    rng = random.Random(4)
    docs = []
    for i in range(40):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(25)) + "." for _ in range(4)]
        docs.append({"id": f"doc{i:02d}", "title": "", "text": "\n\n".join(paragraphs)})
    store = Collection.create(root / "c", CONFIG, chunker=ChunkerConfig(max_tokens=24, overlap_tokens=0))
    store.upsert(docs)
    store.close()
    queries = [{"_id": f"q{i}", "text": " ".join(rng.choice(WORDS) for _ in range(4))} for i in range(12)]
    (root / "q.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    qrels = {q["_id"]: {f"doc{rng.randrange(40):02d}": rng.randint(1, 2) for _ in range(3)} for q in queries}
    (root / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, judged in qrels.items() for d, g in judged.items()))
    return root, queries, qrels


def _by_hand(root, queries, how):
    """Each query's chunk ranking from the collection, aggregated per document in plain Python."""
    with sg.open(collection=root / "c") as stack:
        corpus = stack.collection.corpus
        assert len(corpus) > 3 * 40  # several chunks per document
        rankings = stack.runner.run([q["text"] for q in queries])
        run = {}
        for q, ranking in zip(queries, rankings):
            agg: dict[str, float] = {}
            for row, score in zip(ranking.doc_rows.tolist(), ranking.scores.tolist()):
                doc, index = corpus.doc_id(row), int(corpus.ids[row].rsplit("#", 1)[1])
                if how == "maxp":
                    agg[doc] = max(agg.get(doc, -1e9), score)
                else:  # sum
                    agg[doc] = agg.get(doc, 0.0) + score
            # trec_eval orders tied documents its own way; hand it our order (score desc, document id
            # asc, the Ranking contract) as strictly decreasing scores, so only the aggregation is tested
            ordered = sorted(agg.items(), key=lambda item: (-item[1], item[0]))
            run[q["_id"]] = {doc: float(len(ordered) - i) for i, (doc, _) in enumerate(ordered)}
    return run


@pytest.mark.parametrize("how", ["maxp", "sum"])
def test_document_metrics_of_a_chunked_collection_equal_pytrec_eval_on_the_aggregated_run(chunked, tmp_path, how):
    from stagegraph.cli.app import main

    root, queries, qrels = chunked
    out = tmp_path / "report"
    code = main(["--quiet", "eval", json_config(tmp_path), "--collection", str(root / "c"), "--queries", str(root / "q.jsonl"),
                 "--qrels", str(root / "qrels.tsv"), "--aggregate", how, "--metrics", "ndcg@10,recall@20,map",
                 "--mode", "batch", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["aggregate"] == how and report["stages"]["bm25"]["chunks_per_document"] > 1.0
    run = _by_hand(root, queries, how)
    measures = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.20", "map"}).evaluate(run)
    expected = {name: float(np.mean([measures[q][key] for q in qrels])) for name, key in
                (("ndcg@10", "ndcg_cut_10"), ("recall@20", "recall_20"), ("map", "map"))}
    for name, value in expected.items():
        assert report["stages"]["bm25"]["metrics"][name] == pytest.approx(value, abs=1e-4), name
    trec = (out / "runs" / "bm25.trec").read_text().split("\n")[0].split()
    assert trec[2].startswith("doc") and "#" not in trec[2]  # run files name documents, not chunks


def json_config(tmp_path) -> str:
    path = tmp_path / "bm25.yaml"
    path.write_text("pipeline:\n  - {type: bm25, name: bm25, k: 60}\n")
    return str(path)


def test_firstp_scores_a_document_by_its_lowest_retrieved_chunk():
    corpus = sg.Corpus(["a#0", "a#1", "b#0", "b#2"], [""] * 4, ["x"] * 4, doc_ids=["a", "a", "b", "b"])
    ranking = Ranking(np.array([1, 3, 0, 2]), np.array([0.9, 0.8, 0.3, 0.1], np.float32))
    first = to_documents([ranking], corpus, "firstp")
    best = to_documents([ranking], corpus, "maxp")
    assert first.documents.ids == ["a", "b"]
    assert first.rankings[0].scores.tolist() == pytest.approx([0.3, 0.1])  # a#0 and b#0
    assert best.rankings[0].scores.tolist() == pytest.approx([0.9, 0.8])
    assert first.chunks_per_document == 2.0


def test_a_collection_needs_queries_and_qrels_to_be_evaluated(chunked, tmp_path, capsys):
    from stagegraph.cli.app import main

    root, _, _ = chunked
    assert main(["eval", json_config(tmp_path), "--collection", str(root / "c")]) == 2
    assert "needs --queries Q.jsonl and --qrels QRELS.tsv" in capsys.readouterr().err
    assert main(["eval", json_config(tmp_path), "--dataset", "sample", "--aggregate", "maxp"]) == 2
    assert "go with --collection DIR" in capsys.readouterr().err
