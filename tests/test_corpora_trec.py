"""TREC topics (SGML and tab-separated), TREC qrels, and run files written atomically and read back."""

from __future__ import annotations

import os

import numpy as np
import pytest

import stagegraph.corpora.trec as trec
from stagegraph.corpora.qrels import read_qrels, read_trec_qrels
from stagegraph.corpora.trec import read_run, read_topics, strictly_decreasing, write_run
from stagegraph.corpora.types import Corpus, DataError
from stagegraph.pipeline.ranking import Ranking

SGML = """<top>
<num> Number: 301
<title> International Organized
   Crime

<desc> Description:
Identify organizations that take part in
international crime.

<narr> Narrative:
A relevant document names an organization.
</top>

<top>
<num> Number: 302 </num>
<title> Poliomyelitis and Post-Polio </title>
<desc> Description: Is the disease under control? </desc>
</top>
"""


def test_sgml_topics_title_by_default(tmp_path):
    path = tmp_path / "topics.301-302"
    path.write_text(SGML)
    queries = read_topics(path)
    assert queries.ids == ["301", "302"]
    assert queries.texts == ["International Organized Crime", "Poliomyelitis and Post-Polio"]


def test_sgml_topics_field_mix(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text(SGML)
    queries = read_topics(path, field="title+desc")
    assert queries.texts[0] == "International Organized Crime Identify organizations that take part in international crime."
    assert read_topics(path, field="desc").texts[1] == "Is the disease under control?"
    with pytest.raises(DataError, match=r"topics.txt:14: topic 302 has no <narr> text"):
        read_topics(path, field="narr")
    with pytest.raises(ValueError, match="unknown topic field"):
        read_topics(path, field="summary")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<top>\n<title> no number\n</top>\n", r"topics:1: topic has no <num>"),
        ("\n\n<top>\n<num> 1\n<title> open\n", r"topics:3: <top> is never closed"),
        ("<top>\n<num> 1\n<title> a\n</top>\n<top>\n<num> 1\n<title> b\n</top>\n", r"topics:5: duplicate topic number 1"),
        ("<top>\n<num> 1\n<desc> only a description\n</top>\n", r"topics:1: topic 1 has no <title> text"),
        ("<num> 1\n<top>\n", r"topics:1: <num> outside a <top>"),
    ],
)
def test_bad_sgml_topics_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "topics"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_topics(path)


def test_tab_topics(tmp_path):
    path = tmp_path / "topics.tsv"
    path.write_text("1\tgguf   quantisation\n\n2\tkv cache size\n")
    queries = read_topics(path)
    assert queries.ids == ["1", "2"]
    assert queries.texts == ["gguf quantisation", "kv cache size"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("1\tok\n2 no tab here\n", r"topics.tsv:2: expected 'query-id<TAB>text'"), ("1\ta\n1\tb\n", r"topics.tsv:2: duplicate query id '1'")],
)
def test_bad_tab_topics(tmp_path, text, message):
    path = tmp_path / "topics.tsv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_topics(path)


def test_trec_qrels(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("301 0 FT1 2\n301 0 FT2 0\n302 0 LA9 1\n303   0  X  -1\n")
    assert read_trec_qrels(path) == {"301": {"FT1": 2, "FT2": 0}, "302": {"LA9": 1}, "303": {"X": -1}}  # all judged
    assert read_qrels(path) == read_trec_qrels(path)  # format detected


def test_read_qrels_detects_beir_tsv(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t3\n")
    assert read_qrels(path) == {"q1": {"d1": 3}}


@pytest.mark.parametrize(
    ("text", "message"),
    [("301 0 FT1 2\n301 FT2 1\n", r"qrels.txt:2: expected 4 columns"), ("301 0 FT1 2.5\n", r"qrels.txt:1: relevance grade '2.5'")],
)
def test_bad_trec_qrels(tmp_path, text, message):
    path = tmp_path / "qrels.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_trec_qrels(path)


@pytest.fixture
def corpus():
    return Corpus([f"doc{i}" for i in range(6)], [""] * 6, [f"text {i}" for i in range(6)])


def test_run_round_trip(tmp_path, corpus):
    scores = np.array([0.1, 3.25, 0.1, 7.0, 1e-7, 0.016393442], dtype=np.float32)
    rankings = [Ranking.from_scores(np.arange(6), scores), Ranking.from_scores(np.array([5, 2]), np.array([1.0, 2.0]))]
    path = write_run(tmp_path / "runs" / "bm25.trec", "bm25", ["q1", "q2"], rankings, corpus)
    lines = path.read_text().splitlines()
    assert len(lines) == 8
    first = lines[0].split()
    assert first == ["q1", "Q0", "doc3", "1", "7", "bm25"]
    assert [line.split()[3] for line in lines[:6]] == ["1", "2", "3", "4", "5", "6"]  # 1-based ranks
    run = read_run(path)
    assert list(run) == ["q1", "q2"]
    # Tied scores (rows 0 and 2) keep the ranking's order; every other float32 score survives exactly,
    # the second of the tie is written one float32 step below the first
    assert list(run["q1"]) == [corpus.ids[r] for r in rankings[0].doc_rows]
    read = np.array(list(run["q1"].values()), dtype=np.float32)
    tie = 3  # rank 4: the second 0.1
    assert np.array_equal(np.delete(read, tie), np.delete(rankings[0].scores, tie))
    assert read[tie] == np.nextafter(np.float32(0.1), np.float32(0))
    # ... and the file's scores decrease strictly, so a tool that re-sorts by score keeps that order
    written = list(run["q1"].values())
    assert all(a > b for a, b in zip(written, written[1:]))
    assert run["q2"] == {"doc2": 2.0, "doc5": 1.0}


def test_tied_scores_are_read_in_our_order_by_trec_eval(tmp_path):
    """Ten documents with one score: trec_eval (pytrec_eval) would order them by id, descending; the
    file written from a ranking that orders them ascending must be scored in that order."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    ids = [f"d{i}" for i in range(10)]
    corpus = Corpus(ids, [""] * 10, [""] * 10)
    ranking = Ranking(np.arange(10), np.full(10, 0.5, np.float32))  # d0 first
    path = write_run(tmp_path / "tied.trec", "tied", ["q"], [ranking], corpus)
    qrels = {"q": {"d0": 1}}
    scored = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(read_run(path))
    assert scored["q"]["recip_rank"] == 1.0  # d0 is read first
    tied = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate({"q": {d: 0.5 for d in ids}})
    assert tied["q"]["recip_rank"] == 0.1  # what the old file (all 0.5) gave: trec_eval put d0 last


def test_strictly_decreasing_keeps_nine_digits_where_it_can():
    assert strictly_decreasing(np.array([3.25, 2.0, 0.125, 1e-7])) == ["3.25", "2", "0.125", "1.00000001e-07"]  # float32, exact
    nudged = strictly_decreasing(np.array([1.0, 1.0, 1.0, 0.5]))
    assert nudged[0] == "1" and nudged[3] == "0.5"
    as_float32 = [np.float32(float(s)) for s in nudged]  # as trec_eval reads them
    assert 1.0 > as_float32[1] > as_float32[2] > 0.5 and as_float32[2] == np.float32(1.0) - 2 * np.finfo(np.float32).epsneg
    odd = [np.float32(float(s)) for s in strictly_decreasing(np.array([0.0, -0.0, np.inf, np.nan]))]
    assert all(np.isfinite(odd)) and all(a > b for a, b in zip(odd, odd[1:]))


def test_run_cutoff_and_empty_ranking(tmp_path, corpus):
    rankings = [Ranking.from_scores(np.arange(6), np.arange(6, dtype=np.float32)), Ranking.empty()]
    path = write_run(tmp_path / "r.trec", "tag", ["a", "b"], rankings, corpus, k=2)
    run = read_run(path)
    assert run == {"a": {"doc5": 5.0, "doc4": 4.0}}


def test_write_run_rejects_bad_input(tmp_path, corpus):
    one = [Ranking.from_scores(np.array([0]), np.array([1.0]))]
    with pytest.raises(ValueError, match="no whitespace"):
        write_run(tmp_path / "r", "my run", ["q"], one, corpus)
    with pytest.raises(ValueError, match="aligned"):
        write_run(tmp_path / "r", "run", ["q", "q2"], one, corpus)


def test_write_run_is_atomic(tmp_path, corpus, monkeypatch):
    path = tmp_path / "run.trec"
    path.write_text("old content\n")
    ranking = [Ranking.from_scores(np.array([0]), np.array([1.0]))]

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(trec.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_run(path, "run", ["q"], ranking, corpus)
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["run.trec"]  # no temp file left behind


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("q1 Q0 d1 1 2.0 run\nq1 Q0 d2 2 1.0\n", r"run.trec:2: expected 6 columns"),
        ("q1 Q0 d1 one 2.0 run\n", r"run.trec:1: rank 'one' must be an integer"),
        ("q1 Q0 d1 1 2.0 run\nq1 Q0 d1 2 1.0 run\n", r"run.trec:2: document 'd1' listed twice"),
    ],
)
def test_bad_run_file(tmp_path, text, message):
    path = tmp_path / "run.trec"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_run(path)


def test_read_run_orders_by_rank_not_file_order(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 b 2 1.0 r\nq1 Q0 a 1 2.0 r\n")
    assert list(read_run(path)["q1"]) == ["a", "b"]
