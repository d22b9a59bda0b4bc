"""BM25Index: formulas, backend agreement, ties, save/load, stale/damaged refusal, atomic writes."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from stagegraph.corpora.types import Corpus
from stagegraph.indexes import bm25 as bm25_module
from stagegraph.indexes.bm25 import BM25Index, BM25Settings
from stagegraph.indexes.bm25_kernels import HAVE_NUMBA, top_k_postings_py
from stagegraph.indexes.bm25_scoring import SparseSearcher, top_k
from stagegraph.indexes.manifest import IndexLoadError
from stagegraph.indexes.tokenize import Tokenizer

PLAIN = Tokenizer(stopwords=None, stemmer=None)


def synthetic_corpus(n_docs: int = 400, vocab: int = 300, seed: int = 0) -> Corpus:
    """Zipf-distributed words `w0..`, variable lengths; some titles; no term in > half the docs
    except the few most frequent ones (w0..w2), which the Robertson comparison avoids."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1) ** 1.1
    weights /= weights.sum()
    texts, titles = [], []
    for _ in range(n_docs):
        words = rng.choice(vocab, size=int(rng.integers(5, 60)), p=weights)
        texts.append(" ".join(f"w{w}" for w in words))
        titles.append(f"w{int(rng.integers(vocab))}" if rng.random() < 0.3 else "")
    return Corpus([f"d{i}" for i in range(n_docs)], titles, texts)


def doc_freqs(corpus: Corpus, tok: Tokenizer) -> Counter:
    df: Counter = Counter()
    for row in range(len(corpus)):
        df.update(set(tok(corpus.doc_text(row))))
    return df


def synthetic_queries(corpus: Corpus, tok: Tokenizer, n: int = 40, max_df_fraction: float = 1.0, seed: int = 1) -> list[str]:
    df = doc_freqs(corpus, tok)
    allowed = sorted(t for t, f in df.items() if f <= max_df_fraction * len(corpus))
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(allowed, size=int(rng.integers(1, 6)))) for _ in range(n)]


def assert_same_top(a, b, k: int = 10, rtol: float = 1e-5) -> None:
    """`a`, `b`: hits for k + 1. Scores equal (rtol) rank by rank over the top k; rows equal rank by
    rank except inside a group of near-tied scores (any order); a group reaching rank k + 1 is cut
    by k, so only its scores are compared."""
    assert len(a.rows) == len(b.rows)
    n = min(len(a.rows), k + 1)
    np.testing.assert_allclose(a.scores[:k], b.scores[:k], rtol=rtol)
    i = 0
    while i < min(n, k):
        j = i
        while j + 1 < n and np.isclose(a.scores[j + 1], a.scores[i], rtol=rtol):
            j += 1
        if j < k or n <= k:  # the whole group lies inside the compared top k
            assert set(a.rows[i : j + 1]) == set(b.rows[i : j + 1]), f"ranks {i}..{j} differ"
        i = j + 1


def direct_scores(corpus: Corpus, tok: Tokenizer, query: str, variant: str, k1: float, b: float) -> np.ndarray:
    """BM25 written out from the textbook formulas, one document at a time (independent oracle)."""
    docs = [Counter(tok(corpus.doc_text(r))) for r in range(len(corpus))]
    lengths = [sum(d.values()) for d in docs]
    n, avgdl = len(docs), sum(lengths) / len(docs)
    scores = np.zeros(n)
    for term in tok(query):
        df = sum(1 for d in docs if term in d)
        if df == 0:
            continue
        if variant == "lucene":
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        elif variant == "robertson":
            idf = max(0.0, math.log((n - df + 0.5) / (df + 0.5)))
        else:
            idf = math.log(n / df)
        for row, d in enumerate(docs):
            tf = d.get(term, 0)
            if tf:
                denom = tf + k1 * (1 - b + b * lengths[row] / avgdl)
                scores[row] += idf * (tf * (k1 + 1) if variant == "atire" else tf) / denom
    return scores


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return synthetic_corpus()


@pytest.mark.parametrize("variant", ["lucene", "robertson", "atire"])
def test_sparse_scores_match_the_textbook_formulas(corpus, variant):
    index = BM25Index.build(corpus, BM25Settings(variant=variant, k1=1.2, b=0.75, tokenizer=PLAIN))
    for query in synthetic_queries(corpus, PLAIN, n=8) + ["w0 w0 w5"]:
        expected = direct_scores(corpus, PLAIN, query, variant, 1.2, 0.75)
        hits = index.search(query, k=len(corpus))
        got = np.zeros(len(corpus))
        got[hits.rows] = hits.scores
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert set(hits.rows) == set(np.flatnonzero(expected > 0))


@pytest.mark.parametrize("variant", ["lucene", "atire", "robertson"])
def test_backends_agree_on_top10_and_scores(corpus, variant):
    settings = BM25Settings(variant=variant, tokenizer=PLAIN)
    fast = BM25Index.build(corpus, settings)
    reference = BM25Index.build(corpus, settings, backend="rank_bm25")
    # rank-bm25 floors the idf of terms found in more than half the documents (Robertson only):
    # compare Robertson on queries whose terms stay at or below that line.
    limit = 0.5 if variant == "robertson" else 1.0
    for query in synthetic_queries(corpus, PLAIN, n=40, max_df_fraction=limit):
        assert_same_top(fast.search(query, k=11), reference.search(query, k=11))


def test_backends_differ_only_through_rank_bm25s_idf_floor(corpus):
    """Robertson, a term in > half the documents: rank-bm25 scores it eps*mean(idf) > 0, we clip to 0."""
    df = doc_freqs(corpus, PLAIN)
    common = max(df, key=df.get)
    assert df[common] > len(corpus) / 2
    settings = BM25Settings(variant="robertson", tokenizer=PLAIN)
    assert len(BM25Index.build(corpus, settings).search(common)) == 0
    assert len(BM25Index.build(corpus, settings, backend="rank_bm25").search(common)) > 0
    # The Lucene variant has no floor to differ on: both backends score the common term.
    lucene = BM25Settings(tokenizer=PLAIN)
    assert_same_top(BM25Index.build(corpus, lucene).search(common, 11),
                    BM25Index.build(corpus, lucene, backend="rank_bm25").search(common, 11))


def _kernel_paths(scores):
    """The numpy path, the compiled kernel (when numba is installed) and the same kernel uncompiled."""
    plain = SparseSearcher(scores, use_numba=False)
    paths = {"numpy": plain.top}
    if HAVE_NUMBA:
        paths["numba"] = SparseSearcher(scores, use_numba=True).top

    def uncompiled(terms, weights, k):
        acc, touched = np.zeros(scores.n_docs, np.float32), np.empty(scores.n_docs, np.int32)
        out = top_k_postings_py(scores.indptr, scores.indices, scores.data, np.asarray(terms, np.int64),
                                np.asarray(weights, np.float32), acc, touched, k, np.empty(0, np.uint8))
        assert not acc.any()  # the accumulator is left clean
        return out

    paths["python"] = uncompiled
    return plain, paths


@pytest.mark.parametrize("k", [1, 7, 10_000])
def test_kernel_paths_agree_including_ties(k):
    # Many duplicated documents: lots of exactly tied scores, so the heap's tie rule is exercised.
    base = synthetic_corpus(n_docs=60, seed=3)
    corpus = Corpus([f"d{i}" for i in range(180)], base.titles * 3, base.texts * 3)
    index = BM25Index.build(corpus, BM25Settings(tokenizer=PLAIN))
    plain, paths = _kernel_paths(index._scores)
    for query in synthetic_queries(corpus, PLAIN, n=25):
        ids = sorted({index.term_of[t] for t in PLAIN(query)})
        weights = np.arange(1, len(ids) + 1, dtype=np.float32)
        expected = plain.top(np.array(ids), weights, k)
        for name, top in paths.items():
            rows, scores = top(np.array(ids), weights, k)
            np.testing.assert_array_equal(rows, expected[0], err_msg=name)
            np.testing.assert_allclose(scores, expected[1], rtol=1e-6, err_msg=name)
    assert not plain._buffers()[0].any()


def test_repeated_query_terms_count_once_per_occurrence(corpus):
    index = BM25Index.build(corpus, BM25Settings(tokenizer=PLAIN))
    once, twice = index.search("w7", k=20), index.search("w7 w7", k=20)
    np.testing.assert_array_equal(once.rows, twice.rows)
    np.testing.assert_allclose(twice.scores, 2 * once.scores, rtol=1e-6)


def test_building_leaves_the_tokenized_corpus_unchanged(corpus):
    tokens = PLAIN.tokenize_corpus(corpus.doc_texts())
    before = tokens.term_ids.copy(), tokens.offsets.copy()
    BM25Index.from_tokens(tokens, BM25Settings(tokenizer=PLAIN), corpus.fingerprint)
    np.testing.assert_array_equal(tokens.term_ids, before[0])
    np.testing.assert_array_equal(tokens.offsets, before[1])


def test_unknown_terms_are_ignored_and_an_all_unknown_query_is_empty(corpus):
    index = BM25Index.build(corpus, BM25Settings(tokenizer=PLAIN))
    np.testing.assert_array_equal(index.search("w7 zzz").rows, index.search("w7").rows)
    assert len(index.search("zzz qqq")) == 0 and len(index.search("")) == 0


def test_ties_are_ordered_by_row_and_k_cuts_the_list():
    corpus = Corpus([f"d{i}" for i in range(6)], [""] * 6, ["apple pie", "pear", "apple pie", "apple pie", "plum", "apple pie"])
    index = BM25Index.build(corpus, BM25Settings(tokenizer=PLAIN))
    hits = index.search("apple", k=3)
    np.testing.assert_array_equal(hits.rows, [0, 2, 3])
    assert hits.rows.dtype == np.int64 and hits.scores.dtype == np.float32


def test_top_k_keeps_all_ties_at_the_cut_then_orders_by_row():
    rows = np.array([9, 3, 7, 1, 5])
    scores = np.array([1.0, 2.0, 1.0, 1.0, 0.5], dtype=np.float32)
    r, s = top_k(rows, scores, 3)
    np.testing.assert_array_equal(r, [3, 1, 7])
    np.testing.assert_array_equal(s, [2.0, 1.0, 1.0])
    assert len(top_k(rows, scores, 0)[0]) == 0


def test_title_and_text_are_both_indexed():
    corpus = Corpus(["a", "b"], ["Zebra stripes", ""], ["savanna animals", "zebra crossing zebra"])
    index = BM25Index.build(corpus)
    assert set(index.search("stripes").rows) == {0}
    assert set(index.search("zebras").rows) == {0, 1}  # stemmed like the documents


def test_empty_corpus_or_no_terms_is_refused():
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build(Corpus([], [], []))
    with pytest.raises(ValueError, match="no document has any term"):
        BM25Index.build(Corpus(["a"], [""], ["the of and"]))


@pytest.mark.parametrize("backend", ["sparse", "rank_bm25"])
def test_save_load_round_trip(tmp_path, corpus, backend):
    settings = BM25Settings(variant="atire", k1=1.1, b=0.6, backend=backend, tokenizer=Tokenizer(stemmer="porter"))
    index = BM25Index.build(corpus, settings)
    index.save(tmp_path / "idx")
    for mmap in (True, False):
        loaded = BM25Index.load(tmp_path / "idx", corpus_fingerprint=corpus.fingerprint, mmap=mmap)
        assert loaded.settings == settings and loaded.identity == index.identity
        for query in synthetic_queries(corpus, PLAIN, n=10):
            a, b = index.search(query, 10), loaded.search(query, 10)
            np.testing.assert_array_equal(a.rows, b.rows)
            np.testing.assert_array_equal(a.scores, b.scores)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["kind"] == "bm25" and manifest["format_version"] == bm25_module.FORMAT_VERSION
    assert manifest["corpus_fingerprint"] == corpus.fingerprint
    assert manifest["params"]["settings"]["tokenizer"]["stemmer"] == "porter"
    assert {"numpy", "scipy", "rank-bm25"} <= set(manifest["libraries"]) and manifest["files"]


def test_load_memory_maps_the_arrays(tmp_path, corpus):
    BM25Index.build(corpus, BM25Settings(tokenizer=PLAIN)).save(tmp_path / "idx")
    mapped = BM25Index.load(tmp_path / "idx", mmap=True)
    assert isinstance(mapped._scores.data, np.memmap)
    assert not isinstance(BM25Index.load(tmp_path / "idx", mmap=False)._scores.data, np.memmap)


def test_loading_for_another_corpus_is_refused_with_a_rebuild_hint(tmp_path, corpus):
    BM25Index.build(corpus).save(tmp_path / "idx")
    other = synthetic_corpus(n_docs=50, seed=9)
    with pytest.raises(IndexLoadError, match="another corpus.*rebuild"):
        BM25Index.load(tmp_path / "idx", corpus_fingerprint=other.fingerprint)


def test_damaged_files_are_refused_with_a_rebuild_hint(tmp_path, corpus):
    BM25Index.build(corpus).save(tmp_path / "idx")
    data = tmp_path / "idx" / "data.npy"
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(IndexLoadError, match="damaged.*rebuild"):
        BM25Index.load(tmp_path / "idx")
    # Without checksum verification a truncated array is still caught when it is read.
    data.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(IndexLoadError, match="damaged"):
        BM25Index.load(tmp_path / "idx", verify=False)


def test_failed_save_leaves_the_old_index_intact(tmp_path, corpus, monkeypatch):
    target = tmp_path / "idx"
    old = BM25Index.build(corpus, BM25Settings(tokenizer=PLAIN))
    old.save(target)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bm25_module, "write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        BM25Index.build(corpus, BM25Settings(k1=2.0, tokenizer=PLAIN)).save(target)
    still = BM25Index.load(target, corpus_fingerprint=corpus.fingerprint)
    assert still.settings.k1 == old.settings.k1
    np.testing.assert_array_equal(still.search("w3 w8").scores, old.search("w3 w8").scores)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary directory left behind
