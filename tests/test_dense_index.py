"""The FAISS dense index and the embedding cache, on synthetic unit vectors (no model needed)."""

from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from stagegraph.corpora.types import Corpus
from stagegraph.indexes import dense as dense_mod
from stagegraph.indexes.dense import DenseIndex, adapt_factory, default_nprobe
from stagegraph.thread_counts import limited
from stagegraph.indexes.embeddings import cached_embeddings, embeddings_key, load_embeddings
from stagegraph.indexes.encoder import l2_normalise
from stagegraph.indexes.manifest import IndexLoadError


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return l2_normalise(rng.standard_normal((n, d)))


def clustered(rng: np.random.Generator, n: int, d: int, clusters: int, spread: float = 0.35) -> np.ndarray:
    centres = rng.standard_normal((clusters, d))
    labels = rng.integers(0, clusters, n)
    return l2_normalise(centres[labels] + spread * rng.standard_normal((n, d)))


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def overlap_recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit(np.random.default_rng(0), 3000, 32)


def build(vectors: np.ndarray, factory: str = "Flat", **kwargs) -> DenseIndex:
    kwargs.setdefault("corpus_fingerprint", "corpus-a")
    kwargs.setdefault("model_identity", "model-a")
    kwargs.setdefault("progress", False)
    return DenseIndex.build(vectors, factory, **kwargs)


# ------------------------------------------------------------------ building and searching


def test_flat_is_exact_inner_product(vectors: np.ndarray) -> None:
    index = build(vectors)
    queries = unit(np.random.default_rng(1), 5, 32)
    scores, rows = index.search(queries, 10)
    np.testing.assert_array_equal(rows, exact_top(vectors, queries, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, rows, axis=1), rtol=1e-5)
    assert rows.dtype == np.int64 and scores.dtype == np.float32


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat", "IVF16,PQ8x4", "PQ8x4", "HNSW16,Flat"])
def test_factory_strings_build_and_find_the_vector_itself(vectors: np.ndarray, factory: str) -> None:
    index = build(vectors, factory)
    assert index.ntotal == len(vectors) and index.dim == 32 and index.factory == factory
    assert faiss.downcast_index(index.index).metric_type == faiss.METRIC_INNER_PRODUCT
    _, rows = index.search(vectors[:20], 5)
    assert np.mean(rows[:, 0] == np.arange(20)) >= 0.9  # PQ is lossy; the rest are exact on themselves


def test_bad_factory_string_is_a_clear_error(vectors: np.ndarray) -> None:
    with pytest.raises(ValueError, match="PQ's M must divide 32"), pytest.warns(UserWarning, match="6-bit"):
        build(vectors, "IVF16,PQ7")
    with pytest.raises(ValueError, match="Examples that work"):
        build(vectors, "NoSuchIndex")
    with pytest.raises(ValueError, match="empty corpus"):
        build(vectors[:0], "IVF4,Flat")


def test_ivf_and_pq_are_clamped_to_what_the_corpus_can_train(vectors: np.ndarray) -> None:
    with pytest.warns(UserWarning, match="using IVF76"):
        assert adapt_factory("IVF1024,Flat", 3000, 32) == "IVF76,Flat"
    with pytest.warns(UserWarning) as caught:
        assert adapt_factory("IVF1024,PQ8", 3000, 32) == "IVF76,PQ8x6"
    assert len(caught) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert adapt_factory("IVF64,PQ8x4", 3000, 32) == "IVF64,PQ8x4"
        assert adapt_factory("HNSW32", 10, 32) == "HNSW32"
    with pytest.warns(UserWarning):
        index = build(vectors, "IVF1024,Flat")
    assert index.factory == "IVF76,Flat" and index.info["factory_requested"] == "IVF1024,Flat"
    assert index.nlist() == 76


def test_k_larger_than_the_corpus_and_empty_queries(vectors: np.ndarray) -> None:
    index = build(vectors[:7])
    scores, rows = index.search(vectors[:2], 100)
    assert rows.shape == (2, 7) and sorted(rows[0]) == list(range(7))
    assert index.search(np.empty((0, 32), np.float32), 5)[1].shape == (0, 0)
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones((1, 8), np.float32), 5)


def test_search_parameters_are_applied_per_call(vectors: np.ndarray) -> None:
    ivf = build(vectors, "IVF64,Flat")
    assert ivf.search_params(k=10) == {"nprobe": default_nprobe(64, 3000, 10)} == {"nprobe": 16}
    assert ivf.search_params(nprobe=3) == {"nprobe": 3}
    queries = unit(np.random.default_rng(2), 30, 32)
    truth = exact_top(vectors, queries, 50)
    narrow = overlap_recall(ivf.search(queries, 50, nprobe=1)[1], truth)
    full = overlap_recall(ivf.search(queries, 50, nprobe=64)[1], truth)
    assert full == pytest.approx(1.0) and narrow < 0.9
    assert faiss.extract_index_ivf(ivf.index).nprobe == 1  # per-call parameters: the shared index is untouched
    hnsw = build(vectors, "HNSW32")
    assert hnsw.search_params(ef_search=16, k=100) == {"efSearch": 100}  # never below k
    assert hnsw.search_params(k=100) == {"efSearch": 256} and hnsw.search_params(k=300) == {"efSearch": 600}
    low = hnsw.search(queries, 10, ef_search=10)[1]
    assert faiss.downcast_index(hnsw.index).hnsw.efSearch == 16  # FAISS's default, never overwritten
    assert overlap_recall(low, exact_top(vectors, queries, 10)) < overlap_recall(hnsw.search(queries, 10, ef_search=400)[1], exact_top(vectors, queries, 10))


def test_concurrent_searches_with_different_settings_each_use_their_own(vectors: np.ndarray) -> None:
    import threading

    ivf = build(vectors, "IVF64,Flat")
    queries = unit(np.random.default_rng(3), 20, 32)
    expected = {n: ivf.search(queries, 50, nprobe=n)[1] for n in (1, 64)}
    assert overlap_recall(expected[1], expected[64]) < 0.9  # the two settings give different answers
    wrong: list[int] = []

    def worker(nprobe: int) -> None:
        for _ in range(60):
            if not np.array_equal(ivf.search(queries, 50, nprobe=nprobe)[1], expected[nprobe]):
                wrong.append(nprobe)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 64, 1, 64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_default_nprobe_scans_enough_lists_for_k() -> None:
    assert default_nprobe(1024, 100_000, 100) == 128  # an eighth of the lists
    assert default_nprobe(4096, 1_000_000, 100) == 512
    assert default_nprobe(132, 5183, 100) == 82  # lists holding >= 32 * k vectors on average
    assert default_nprobe(35, 1400, 100) == 35  # never more than there are
    assert default_nprobe(64, 0, 100) == 16


def test_thread_counts_are_set_for_a_block_and_restored() -> None:
    import torch

    faiss.omp_set_num_threads(2), torch.set_num_threads(2)
    with limited(1):
        assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == (1, 1)
    assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == (2, 2)


@pytest.mark.parametrize("factory", ["HNSW32", "IVF1024,Flat"])
def test_default_approximate_settings_keep_recall_of_flat_on_clustered_data(factory: str) -> None:
    both = clustered(np.random.default_rng(3), 10_050, 64, clusters=200)  # queries from the same clusters
    data, queries = both[:10_000], both[10_000:]
    flat_rows = build(data).search(queries, 100)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IVF1024 is clamped to IVF256 on 10k vectors
        approx = build(data, factory)
    assert overlap_recall(approx.search(queries, 100)[1], flat_rows) >= 0.98


# ------------------------------------------------------------------ persistence


def test_save_load_round_trip(vectors: np.ndarray, tmp_path: Path) -> None:
    index = build(vectors, "HNSW32", model="acme/m", max_seq_length=128)
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["kind"] == "dense" and manifest["corpus_fingerprint"] == "corpus-a"
    assert manifest["params"]["model"] == "acme/m" and manifest["params"]["dim"] == 32
    assert manifest["params"]["factory"] == "HNSW32" and "index.faiss" in manifest["files"]
    loaded = DenseIndex.load(tmp_path / "idx", corpus_fingerprint="corpus-a", model_identity="model-a", max_seq_length=128)
    queries = vectors[:4]
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    assert loaded.identity == index.identity


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"corpus_fingerprint": "corpus-b"}, "another corpus"),
        ({"model_identity": "model-b"}, "another|stale"),
        ({"max_seq_length": 256}, "max_seq_length"),
        ({"factory": "HNSW32"}, "not 'HNSW32'"),
    ],
)
def test_stale_index_is_refused_with_the_rebuild_command(vectors, tmp_path, expect, message) -> None:
    build(vectors, "Flat", max_seq_length=128).save(tmp_path / "idx")
    with pytest.raises(IndexLoadError, match=message) as err:
        DenseIndex.load(tmp_path / "idx", **expect)
    assert "stagegraph index" in str(err.value)


def test_damaged_or_partial_index_is_refused(vectors: np.ndarray, tmp_path: Path) -> None:
    build(vectors).save(tmp_path / "idx")
    data = bytearray((tmp_path / "idx" / "index.faiss").read_bytes())
    data[200] ^= 0xFF
    (tmp_path / "idx" / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="damaged"):
        DenseIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").unlink()
    with pytest.raises(IndexLoadError, match="No manifest.json"):
        DenseIndex.load(tmp_path / "idx")


def test_failed_save_keeps_the_previous_index(vectors: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    build(vectors[:100]).save(tmp_path / "idx")

    def boom(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(dense_mod.faiss, "write_index", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build(vectors).save(tmp_path / "idx")
    monkeypatch.undo()
    assert DenseIndex.load(tmp_path / "idx").ntotal == 100
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


# ------------------------------------------------------------------ embedding cache


class CountingEncoder:
    """Stands in for `Encoder`: deterministic vectors from a hash of the text; counts its calls."""

    def __init__(self, identity: str = "fake-1", max_seq_length: int | None = 128):
        self.model_name = "fake/model"
        self.identity = identity
        self.max_seq_length = max_seq_length
        self.calls = 0

    def encode(self, texts, *, progress=None, desc=""):
        self.calls += 1
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8) for t in texts]
        return l2_normalise(np.array(rows))


@pytest.fixture()
def corpus() -> Corpus:
    return Corpus([f"d{i}" for i in range(20)], [f"title {i}" for i in range(20)], [f"text {i}" for i in range(20)])


def test_embedding_cache_encodes_once_per_model_length_and_corpus(corpus: Corpus, tmp_path: Path) -> None:
    encoder = CountingEncoder()
    first, where, hit = cached_embeddings(encoder, corpus, tmp_path, progress=False)
    assert not hit and encoder.calls == 1 and first.shape == (20, 8)
    again, where2, hit2 = cached_embeddings(encoder, corpus, tmp_path, progress=False)
    assert hit2 and where2 == where and encoder.calls == 1
    np.testing.assert_array_equal(first, again)
    longer = CountingEncoder(max_seq_length=256)
    cached_embeddings(longer, corpus, tmp_path, progress=False)
    other_corpus = Corpus(corpus.ids, corpus.titles, [t + "!" for t in corpus.texts])
    cached_embeddings(encoder, other_corpus, tmp_path, progress=False)
    assert longer.calls == 1 and encoder.calls == 2
    assert len({embeddings_key("fake-1", 128, corpus.fingerprint), embeddings_key("fake-1", 256, corpus.fingerprint),
                embeddings_key("fake-2", 128, corpus.fingerprint)}) == 3


def test_damaged_embeddings_are_re_encoded_not_served(corpus: Corpus, tmp_path: Path) -> None:
    encoder = CountingEncoder()
    _, where, _ = cached_embeddings(encoder, corpus, tmp_path, progress=False)
    data = bytearray((where / "embeddings.npy").read_bytes())
    data[-5] ^= 0xFF
    (where / "embeddings.npy").write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="damaged"):
        load_embeddings(where, corpus_fingerprint=corpus.fingerprint, model_identity="fake-1", max_seq_length=128)
    _, _, hit = cached_embeddings(encoder, corpus, tmp_path, progress=False)
    assert not hit and encoder.calls == 2
    with pytest.raises(IndexLoadError, match="stale"):
        load_embeddings(where, corpus_fingerprint=corpus.fingerprint, model_identity="fake-2", max_seq_length=128)
