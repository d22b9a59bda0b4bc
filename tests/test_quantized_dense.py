"""Quantized dense retrieval (issue 27.1): int8 and binary FAISS indexes, rescoring, Matryoshka
truncation, filters, collections with segments, and the settings' checks (docs/quantized-dense.md)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from collection_support import rankings
from tiny_models import make_tiny_sentence_transformer
from test_segments import SMALL_CHUNKS, doc, same, text

import stagegraph as sg
from stagegraph.collection import Collection
from stagegraph.collection.sources import PYTHON
from stagegraph.errors import ConfigError
from stagegraph.indexes.dense import DenseIndex
from stagegraph.indexes.quantization import truncate
from stagegraph.indexes.encoder import l2_normalise
from stagegraph.indexes.manifest import IndexLoadError


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return l2_normalise(np.random.default_rng(0).standard_normal((2000, 64)))


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return l2_normalise(np.random.default_rng(1).standard_normal((6, 64)))


def build(vectors: np.ndarray, **kwargs) -> DenseIndex:
    return DenseIndex.build(vectors, "Flat", corpus_fingerprint="c", model_identity="m", progress=False, **kwargs)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between sign vectors, computed independently of FAISS (numpy unpackbits)."""
    bits_a = np.unpackbits(np.packbits(a > 0, axis=1), axis=1).astype(np.int32)
    bits_b = np.unpackbits(np.packbits(b > 0, axis=1), axis=1).astype(np.int32)
    return (bits_a[:, None, :] != bits_b[None, :, :]).sum(axis=2)


def test_binary_search_equals_a_brute_force_hamming_reference(vectors, queries):
    index = build(vectors, quantize="binary")
    assert index.bytes_per_vector == 64 // 8 and index.index.code_size == 8
    scores, rows = index.search(queries, 50)
    reference = hamming(queries, vectors)
    for q in range(len(queries)):
        got = np.rint((1 - scores[q]) * 64 / 2).astype(int)  # score = 1 - 2 * hamming / dim
        np.testing.assert_array_equal(got, reference[q][rows[q]])  # each returned row's distance is its own
        np.testing.assert_array_equal(got, np.sort(reference[q])[:50])  # and they are the 50 smallest


def test_int8_search_equals_exact_search_over_faiss_reconstructed_vectors(vectors, queries):
    index = build(vectors, quantize="int8")
    assert index.bytes_per_vector == 64
    decoded = index.index.reconstruct_n(0, index.ntotal)
    scores, rows = index.search(queries, 20)
    reference = queries @ decoded.T
    for q in range(len(queries)):
        np.testing.assert_allclose(scores[q], reference[q][rows[q]], rtol=0, atol=1e-4)
        np.testing.assert_allclose(scores[q], np.sort(reference[q])[::-1][:20], rtol=0, atol=1e-4)


def assert_rescored_from(index: DenseIndex, queries: np.ndarray, held: np.ndarray) -> None:
    """Rescoring x4 returns the top 10 of the 40 code-search candidates by dot product with `held`
    (the vectors rescoring should use), ties by row, with those dot products as scores."""
    _, candidates = index.search(queries, 40)
    scores, rows = index.search(queries, 10, rescore_multiplier=4)
    for q in range(len(queries)):
        exact = held[candidates[q]] @ queries[q]
        order = np.lexsort((candidates[q], -exact))[:10]
        np.testing.assert_array_equal(rows[q], candidates[q][order])
        np.testing.assert_allclose(scores[q], exact[order], rtol=0, atol=1e-5)


@pytest.mark.parametrize("quantize", ["binary", "int8"])
def test_rescored_top_k_is_exact_float_search_restricted_to_the_quantized_candidates(vectors, queries, quantize, tmp_path):
    index = build(vectors, quantize=quantize)
    index.save(tmp_path / "i")
    loaded = DenseIndex.load(tmp_path / "i", quantize=quantize)
    assert isinstance(loaded.rescore_vectors, np.memmap)  # read from disk, only the candidates' rows
    for idx in (index, loaded):
        assert_rescored_from(idx, queries, vectors)


def test_int8_rescoring_vectors_are_min_max_bytes_decoded_as_written(vectors, queries, tmp_path):
    """`rescore_dtype="int8"`: a byte a dimension on disk (FAISS's QT_8bit scalar quantizer over the
    per-dimension min and max), and the rescored scores are the dot products with the decoded vectors,
    decoded here independently: vmin + (code + 0.5) / 255 * (vmax - vmin)."""
    index = build(vectors, quantize="binary", rescore_dtype="int8")
    index.save(tmp_path / "i")
    loaded = DenseIndex.load(tmp_path / "i", quantize="binary", rescore_dtype="int8")
    assert isinstance(loaded.rescore_vectors, np.memmap) and loaded.rescore_vectors.dtype == np.uint8
    assert loaded.rescore_vectors.shape == (2000, 64)  # 64 bytes a vector on disk, float32's 256
    vmin, vmax = vectors.min(axis=0), vectors.max(axis=0)
    decoded = vmin + (np.asarray(loaded.rescore_vectors, dtype=np.float64) + 0.5) / 255 * (vmax - vmin)
    assert np.abs(decoded - vectors).max() <= (vmax - vmin).max() / 510 + 1e-6  # half a step at most
    for idx in (index, loaded):
        assert_rescored_from(idx, queries, decoded)
    with pytest.raises(IndexLoadError, match="built with rescore_dtype 'int8', not 'float32'"):
        DenseIndex.load(tmp_path / "i", rescore_dtype="float32")


def test_truncation_keeps_the_first_dimensions_and_renormalises(vectors, queries):
    cut = truncate(vectors, 16)
    assert cut.shape == (2000, 16)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(cut, l2_normalise(vectors[:, :16]), atol=1e-6)
    index = build(vectors, truncate_dim=16)
    assert index.dim == 16 and index.info["truncate_dim"] == 16
    scores, rows = index.search(queries, 5)  # full-width queries are truncated by the index
    expected = truncate(queries, 16) @ cut.T
    np.testing.assert_array_equal(rows, np.argsort(-expected, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.take_along_axis(expected, rows, axis=1), atol=1e-5)


@pytest.mark.parametrize("quantize,mult", [("binary", None), ("binary", 4), ("int8", None), ("int8", 3)])
def test_filters_are_honoured_before_the_top_k(vectors, queries, quantize, mult):
    index = build(vectors, quantize=quantize)
    allowed = np.zeros(len(vectors), dtype=bool)
    allowed[::7] = True
    scores, rows = index.search(queries, 10, allowed=allowed, rescore_multiplier=mult)
    assert (rows >= 0).all() and allowed[rows].all()
    if quantize == "binary" and mult is None:  # the best 10 allowed by Hamming distance
        reference = np.where(allowed, hamming(queries, vectors), 10**6)
        got = np.rint((1 - scores) * 64 / 2).astype(int)
        np.testing.assert_array_equal(got, np.sort(reference, axis=1)[:, :10])


def test_index_settings_are_part_of_its_identity(vectors, tmp_path):
    build(vectors, quantize="binary").save(tmp_path / "b")
    with pytest.raises(IndexLoadError, match="built with quantize 'binary', not 'int8'"):
        DenseIndex.load(tmp_path / "b", quantize="int8")
    with pytest.raises(IndexLoadError, match="truncate_dim"):
        DenseIndex.load(tmp_path / "b", truncate_dim=32)
    assert build(vectors).identity != build(vectors, quantize="int8").identity


@pytest.mark.parametrize("settings,fragment", [
    ({"quantize": "binary", "rescore_multiplier": 0}, "rescore_multiplier: must be an integer >= 1"),
    ({"rescore_multiplier": 4}, "set quantize: int8 or binary"),
    ({"quantize": "binary", "index": "HNSW32"}, "set index: Flat"),
    ({"truncate_dim": 1000}, "is more than the model's 384 dimensions; set truncate_dim <= 384"),
    ({"quantize": "binary", "truncate_dim": 100}, "not a multiple of 8; set truncate_dim: 96"),
    ({"quantize": "float16"}, "quantize"),
    ({"quantize": "int8", "rescore_dtype": "int8"}, "rescore with its own codes: set rescore_dtype: float32"),
    ({"rescore_dtype": "int8"}, "set quantize: binary, or leave rescore_dtype out"),
])
def test_bad_settings_give_one_config_error_line_with_the_fix(settings, fragment):
    with pytest.raises(ConfigError) as err:
        sg.DenseRetriever(k=10, name="dense", **settings)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="dense"):
        sg.Pipeline.from_config({"pipeline": [{"type": "dense", "name": "dense", **settings}]})


def test_the_rescore_dtype_fixes_named_are_accepted():
    """The fixes the two rescore_dtype refusals name: float32 rescoring for an int8 index, binary codes
    for int8 rescoring, or no rescore_dtype at all."""
    assert sg.DenseRetriever(k=10, quantize="int8", rescore_multiplier=4, rescore_dtype="float32").config.rescore_dtype == "float32"
    assert sg.DenseRetriever(k=10, quantize="binary", rescore_multiplier=4, rescore_dtype="int8").config.quantize == "binary"
    assert sg.DenseRetriever(k=10).config.rescore_dtype == "float32"


def test_the_settings_are_in_the_config_and_the_fingerprint():
    plain = sg.DenseRetriever(k=10, name="dense")
    quantized = sg.DenseRetriever(k=10, name="dense", quantize="binary", rescore_multiplier=4, truncate_dim=128)
    assert {"quantize": "binary", "rescore_multiplier": 4, "truncate_dim": 128}.items() <= quantized.to_config().items()
    assert plain.fingerprint() != quantized.fingerprint()
    other = sg.DenseRetriever(k=10, name="dense", quantize="binary", rescore_multiplier=2, truncate_dim=128)
    assert other.fingerprint() != quantized.fingerprint()
    small = sg.DenseRetriever(k=10, name="dense", quantize="binary", rescore_multiplier=4, truncate_dim=128,
                              rescore_dtype="int8")
    assert small.to_config()["rescore_dtype"] == "int8" and small.fingerprint() != quantized.fingerprint()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st"))


def test_a_binary_collection_survives_updates_and_ranks_like_a_fresh_build(tmp_path, tiny_model):
    config = {"pipeline": [{"type": "dense", "name": "dense", "k": 15, "model": tiny_model, "index": "Flat",
                            "quantize": "binary", "rescore_multiplier": 2, "truncate_dim": 24}]}
    rng = random.Random(3)
    live: dict[str, dict] = {}
    store = Collection.create(tmp_path / "live", config, chunker=SMALL_CHUNKS)
    for step in range(3):
        with store.writer() as w:
            for i in range(step * 6, step * 6 + 6):
                d = doc(i, rng)
                live[d["id"]] = d
                w.upsert([d], source=PYTHON)
            if step:
                changed = sorted(live)[0]
                live[changed] = {**live[changed], "text": text(rng, 30)}
                w.upsert([live[changed]], source=PYTHON)
                gone = sorted(live)[-1]
                del live[gone]
                w.delete([gone])
            w.commit()
        store.refresh()
    assert len(store.generation.manifest.segments) >= 2
    fresh = Collection.create(tmp_path / "fresh", config, chunker=SMALL_CHUNKS)
    fresh.upsert(list(live.values()))
    for flt in (None, {"group": "even"}):
        got = rankings(tmp_path / "live", config, flt)
        same(got, rankings(tmp_path / "fresh", config, flt))
        if flt:
            assert all(int(cid.split("#")[0][3:]) % 2 == 0 for q in got["dense"].values() for cid, _ in q)
    fresh.close()
    store.close()


def test_int8_rescoring_in_a_collection_scores_within_half_a_step_of_float(tmp_path, tiny_model):
    """Every segment keeps its own one-byte rescoring vectors (ranges trained on that segment): each
    chunk's score is within half a quantization step per dimension of float rescoring's, and not equal."""
    import json

    from stagegraph.indexes.encoder import Encoder

    dense = {"type": "dense", "name": "dense", "k": 15, "model": tiny_model, "index": "Flat", "quantize": "binary",
             "rescore_multiplier": 4}
    rng = random.Random(5)
    docs = [doc(i, rng) for i in range(12)]
    runs = {}
    for dtype in ("float32", "int8"):
        config = {"pipeline": [{**dense, "rescore_dtype": dtype}]}
        store = Collection.create(tmp_path / dtype, config, chunker=SMALL_CHUNKS)
        store.upsert(docs[:6])
        store.upsert(docs[6:])
        assert len(store.generation.manifest.segments) == 2
        store.close()
        runs[dtype] = rankings(tmp_path / dtype, config)["dense"]
    steps = []
    for manifest in (tmp_path / "int8" / "artefacts" / "dense").glob("*/manifest.json"):
        assert json.loads(manifest.read_text())["params"]["rescore_dtype"] == "int8"
        assert np.load(manifest.parent / "vectors.npy", mmap_mode="r").dtype == np.uint8
        trained = np.load(manifest.parent / "rescore_quantizer.npy")
        steps.append(trained[len(trained) // 2:] / 255)  # vdiff / 255 per dimension
    assert len(steps) == 2
    step = np.max(steps, axis=0)
    encoder = Encoder(tiny_model, max_seq_length=256, progress=False)
    moved = []
    for query, hits in runs["int8"].items():
        floats = dict(runs["float32"][query])
        qvec = encoder.encode_query(query)[0]
        bound = 0.5 * float(np.abs(qvec) @ step) + 1e-6
        for chunk, score in hits:
            if chunk in floats:
                moved.append(abs(score - floats[chunk]))
                assert moved[-1] <= bound, (query, chunk)
    assert moved and max(moved) > 0
