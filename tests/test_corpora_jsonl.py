"""Plain JSONL corpora and queries with TREC or BEIR qrels, into one Dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stagegraph.corpora.jsonl import find_jsonl_files, load_jsonl, load_jsonl_dir, read_corpus
from stagegraph.corpora.qrels import DataWarning
from stagegraph.corpora.types import DataError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    corpus = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"id": "a", "title": "AWQ", "text": "activation-aware weights"}, {"_id": 7, "text": "int ids become strings", "title": None}],
    )
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": "q1", "text": "awq"}, {"id": "q2", "text": "seven"}])
    trec_qrels = tmp_path / "dev.txt"
    trec_qrels.write_text("q1 0 a 3\nq2 0 7 1\n")
    beir_qrels = tmp_path / "test.tsv"
    beir_qrels.write_text("query-id\tcorpus-id\tscore\nq2\t7\t2\n")
    return corpus, queries, trec_qrels, beir_qrels


def test_id_or_underscore_id_optional_title(files):
    corpus = read_corpus(files[0])
    assert corpus.ids == ["a", "7"]
    assert corpus.titles == ["AWQ", ""]
    assert corpus.doc_text(1) == "int ids become strings"


def test_load_jsonl_with_both_qrels_formats(files):
    corpus, queries, trec_qrels, beir_qrels = files
    ds = load_jsonl(corpus, queries, {"dev": trec_qrels, "test": beir_qrels}, name="mine")
    assert ds.name == "mine"
    assert ds.splits == ["dev", "test"]
    assert ds.qrels["dev"].judgments == {"q1": {"a": 3}, "q2": {"7": 1}}
    assert ds.qrels["test"].judgments == {"q2": {"7": 2}}


def test_single_qrels_file_split_named_after_stem(files):
    corpus, queries, trec_qrels, _ = files
    ds = load_jsonl(corpus, queries, trec_qrels)
    assert ds.splits == ["dev"]
    assert ds.name == corpus.parent.name


def test_missing_docs_counted(files, tmp_path):
    corpus, queries, _, _ = files
    qrels = tmp_path / "q.txt"
    qrels.write_text("q1 0 a 1\nq1 0 ghost 1\n")
    with pytest.warns(DataWarning, match="1 of 2"):
        ds = load_jsonl(corpus, queries, {"test": qrels})
    assert ds.qrels["test"].missing_docs == 1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a", "text": 3.5}], r"docs.jsonl:1: field 'text' must be a string"),
        ([{"id": True, "text": "x"}], r"docs.jsonl:1: field 'id' must be a string"),
        ([{"id": "a", "text": "x"}, "", "{oops"], r"docs.jsonl:3: invalid JSON"),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], r"docs.jsonl:2: duplicate document id 'a'"),
    ],
)
def test_bad_corpus_lines(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        read_corpus(write_jsonl(tmp_path / "docs.jsonl", rows))


def test_directory_layout(files, tmp_path):
    corpus, queries, trec_qrels, _ = files
    trec_qrels.rename(tmp_path / "qrels.txt")
    found = find_jsonl_files(tmp_path)
    assert found is not None and found[2] == {"test": tmp_path / "qrels.txt"}
    ds = load_jsonl_dir(tmp_path)
    assert ds.qrels["test"].judgments["q1"] == {"a": 3}


def test_directory_without_files(tmp_path):
    assert find_jsonl_files(tmp_path) is None
    with pytest.raises(DataError, match="not a JSONL dataset directory"):
        load_jsonl_dir(tmp_path)
