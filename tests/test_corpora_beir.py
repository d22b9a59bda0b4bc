"""BEIR directory loader: happy path, errors naming file and line, missing documents, shared datasets."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import stagegraph.corpora.jsonl as jsonl_module
from stagegraph.corpora.beir import is_beir_dir, load_beir
from stagegraph.corpora.qrels import DataWarning
from stagegraph.corpora.types import DataError

DOCS = [
    {"_id": "d1", "title": "GGUF files", "text": "llama.cpp reads GGUF model files."},
    {"_id": "d2", "title": "", "text": "vLLM batches requests with paged attention."},
    {"_id": "d3", "text": "HNSW is a graph index.", "metadata": {"source": "x"}},
]
QUERIES = [{"_id": "q1", "text": "what reads gguf"}, {"_id": "q2", "text": "paged attention"}, {"_id": "q3", "text": "unjudged"}]


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def make_beir(root: Path, docs=DOCS, queries=QUERIES, splits=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "corpus.jsonl", docs)
    write_jsonl(root / "queries.jsonl", queries)
    (root / "qrels").mkdir(exist_ok=True)
    splits = splits or {"test": ["q1\td1\t2", "q2\td2\t1", "q2\td3\t0"], "train": ["q1\td3\t1"]}
    for split, rows in splits.items():
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


def test_loads_corpus_queries_and_every_split(tmp_path):
    ds = load_beir(make_beir(tmp_path / "mini"))
    assert ds.name == "mini"
    assert ds.corpus.ids == ["d1", "d2", "d3"]
    assert ds.corpus.titles == ["GGUF files", "", ""]
    assert ds.corpus.doc_text(0) == "GGUF files llama.cpp reads GGUF model files."
    assert ds.queries.ids == ["q1", "q2", "q3"]
    assert ds.splits == ["test", "train"]
    assert ds.qrels["test"].judgments == {"q1": {"d1": 2}, "q2": {"d2": 1, "d3": 0}}  # grade 0: judged non-relevant
    assert ds.qrels["train"].judgments == {"q1": {"d3": 1}}
    queries, qrels = ds.split("test")
    assert queries.ids == ["q1", "q2"]
    assert qrels.missing_docs == 0


def test_a_query_judged_only_non_relevant_is_evaluated_as_trec_eval_does(tmp_path):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from stagegraph.evaluation.scoring import score_run
    from stagegraph.pipeline.ranking import Ranking

    ds = load_beir(make_beir(tmp_path / "z", splits={"test": ["q1\td1\t1", "q2\td2\t0", "q3\td1\t-1"]}))
    qrels = ds.qrels["test"]
    assert qrels.query_ids == ["q1", "q2", "q3"]
    run = {q: Ranking(np.array([1, 0]), np.array([2.0, 1.0], np.float32)) for q in qrels.query_ids}  # d2, d1
    ours = score_run(run, None, qrels, ds.corpus, ["ndcg@10", "judged@10", "bpref"])
    trec = pytrec_eval.RelevanceEvaluator(qrels.judgments, {"ndcg_cut_10", "bpref"}).evaluate(
        {q: {"d2": 2.0, "d1": 1.0} for q in qrels.query_ids})
    assert ours.per_query["ndcg@10"].tolist() == pytest.approx([trec[q]["ndcg_cut_10"] for q in qrels.query_ids], abs=1e-12)
    assert ours.per_query["ndcg@10"].tolist() == pytest.approx([1 / np.log2(3), 0.0, 0.0], abs=1e-12)
    assert ours.per_query["bpref"].tolist() == [trec[q]["bpref"] for q in qrels.query_ids]
    assert ours.per_query["judged@10"].tolist() == [0.5, 0.5, 0.5]  # d2 judged 0 for q2, d1 judged -1 for q3


def test_name_override(tmp_path):
    assert load_beir(make_beir(tmp_path / "x"), name="custom").name == "custom"


@pytest.mark.parametrize(
    ("file", "rows", "message"),
    [
        ("corpus.jsonl", [DOCS[0], '{"_id": "d2", "text": broken}'], "corpus.jsonl:2: invalid JSON"),
        ("corpus.jsonl", [DOCS[0], DOCS[1], {"title": "t", "text": "no id"}], "corpus.jsonl:3: missing field '_id'"),
        ("corpus.jsonl", [{"_id": "d1", "title": "no text"}], "corpus.jsonl:1: missing field 'text'"),
        ("corpus.jsonl", [DOCS[0], DOCS[1], DOCS[0]], "corpus.jsonl:3: duplicate document id 'd1' (first seen on line 1)"),
        ("corpus.jsonl", [DOCS[0], '["a", "list"]'], "corpus.jsonl:2: expected a JSON object"),
        ("corpus.jsonl", [{"_id": "d1", "text": ["not", "a string"]}], "corpus.jsonl:1: field 'text' must be a string"),
        ("queries.jsonl", [QUERIES[0], {"_id": "q9"}], "queries.jsonl:2: missing field 'text'"),
        ("queries.jsonl", [QUERIES[0], QUERIES[0]], "queries.jsonl:2: duplicate query id 'q1'"),
        ("queries.jsonl", [{"id": "q1", "text": "BEIR wants _id"}], "queries.jsonl:1: missing field '_id'"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, file, rows, message):
    root = make_beir(tmp_path / "bad")
    write_jsonl(root / file, rows)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_beir(root)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["q1\td1\t1", "q2\td2"], r"test.tsv:3: expected 3 tab-separated columns"),
        (["q1\td1\t1", "q2 d2 1"], r"test.tsv:3: expected 3 tab-separated columns"),
        (["q1\td1\thigh"], r"test.tsv:2: relevance grade 'high' is not an integer"),
        (["q1\td1\t1", "q1\td1\t2"], r"test.tsv:3: query 'q1' judges document 'd1' twice \(first on line 2\)"),
    ],
)
def test_malformed_qrels_row_names_file_and_line(tmp_path, rows, message):
    root = make_beir(tmp_path / "badq", splits={"test": rows})
    with pytest.raises(DataError, match=message):
        load_beir(root)


def test_qrels_naming_missing_documents_are_counted_and_warned(tmp_path):
    root = make_beir(tmp_path / "m", splits={"test": ["q1\td1\t1", "q1\tgone\t2", "q2\tlost\t1", "q2\tnope\t0"]})
    with pytest.warns(DataWarning, match="2 of 3 relevant judgments name documents missing"):
        ds = load_beir(root)
    qrels = ds.qrels["test"]
    assert qrels.missing_docs == 2
    # Kept, not silently dropped: they still count as relevant (trec_eval's recall denominator).
    assert qrels.judgments == {"q1": {"d1": 1, "gone": 2}, "q2": {"lost": 1, "nope": 0}}
    assert qrels.as_rows("q1", ds.corpus).doc_rows.tolist() == [0]


def test_judged_query_missing_from_queries_is_dropped_with_warning(tmp_path):
    root = make_beir(tmp_path / "u", splits={"test": ["q1\td1\t1", "q404\td2\t1"]})
    with pytest.warns(DataWarning, match="1 judged queries are not in the queries file"):
        ds = load_beir(root)
    assert ds.qrels["test"].query_ids == ["q1"]


def test_clean_dataset_loads_without_warnings(tmp_path):
    root = make_beir(tmp_path / "clean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        dataset = load_beir(root)
    assert all(q.missing_docs == 0 for q in dataset.qrels.values())


def test_incomplete_directory_says_what_is_missing(tmp_path):
    root = make_beir(tmp_path / "inc")
    (root / "queries.jsonl").unlink()
    assert not is_beir_dir(root)
    with pytest.raises(DataError, match="missing queries.jsonl"):
        load_beir(root)
    with pytest.raises(DataError, match="not a directory"):
        load_beir(tmp_path / "nowhere")


def test_progress_bar_shown_for_big_files_and_silenceable(tmp_path, capsys, monkeypatch):
    root = make_beir(tmp_path / "p")
    monkeypatch.setattr(jsonl_module, "PROGRESS_MIN_BYTES", 0)
    load_beir(root, progress=False)
    assert "reading corpus.jsonl" not in capsys.readouterr().err
    load_beir(root, progress=True)
    assert "reading corpus.jsonl" in capsys.readouterr().err


# ---- the shared collections: counts from ../shared/datasets/README.md --------------------------------

SHARED = Path(os.environ.get("STAGEGRAPH_DATASETS") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
# name: (docs, queries, {split: (queries in qrels, qrels rows)}, max grade)
README_COUNTS = {
    "cranfield": (1400, 225, {"test": (225, 1612)}, 4),
    "med": (1033, 30, {"test": (30, 696)}, 1),
    "cacm": (3204, 64, {"test": (52, 796)}, 1),
    "npl": (11429, 93, {"test": (93, 2083)}, 1),
    "scifact": (5183, 1109, {"test": (300, 339), "train": (809, 919)}, 1),
}


@pytest.mark.slow
@pytest.mark.dataset
@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_shared_dataset_matches_readme_counts(name):
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # no missing documents in these collections
        ds = load_beir(folder, progress=False)
    docs, queries, splits, max_grade = README_COUNTS[name]
    assert len(ds.corpus) == docs
    assert len(ds.queries) == queries
    assert ds.splits == sorted(splits)
    for split, (n_queries, n_rows) in splits.items():
        qrels = ds.qrels[split]
        assert len(qrels) == n_queries
        assert sum(len(d) for d in qrels.judgments.values()) == n_rows
        assert qrels.missing_docs == 0
        assert max(g for d in qrels.judgments.values() for g in d.values()) == max_grade
