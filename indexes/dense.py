"""The dense index: FAISS over unit-length document embeddings, built from an `index_factory` string.

* Any FAISS factory string works (`Flat`, `HNSW32`, `IVF1024,Flat`, `IVF1024,PQ32`, ...), always with
  the inner-product metric: on L2-normalised vectors that is cosine similarity.
* IVF and PQ are trained (`stagegraph.indexes.faiss_training`) on a seeded random sample of the vectors (`train_sample` rows), without
  FAISS's polysemous code training (only Hamming-filtered search uses it, and it is slow). An IVF
  list count the corpus cannot support (FAISS wants >= 39 training points per list) is lowered to
  `n // 39` with a warning, and PQ code bits likewise (2**bits centroids, 39 points each); the
  factory string actually built is recorded beside the one asked for.
* Search parameters (`ef_search` for HNSW, `nprobe` for IVF) are per call, handed to FAISS as
  `SearchParameters` objects, never written into the shared index, so concurrent searches with
  different settings cannot see each other's: defaults chosen on real embeddings are efSearch
  max(256, 2k) (128 lost recall@100 on CACM) and nprobe from `default_nprobe` (docs/benchmarks.md, "Where the
  defaults come from"). Thread counts
  are not this module's business: the executor's policy (`stagegraph.pipeline.threads`) sets them;
  `threads=` here is for benchmarks that call the index directly.
* Quantized (`quantize`, docs/quantized-dense.md; which settings combine, truncation and the sign
  bits: `stagegraph.indexes.quantization`): `int8` is FAISS's scalar quantizer (`SQ8`, one
  byte a dimension), `binary` FAISS's `IndexBinaryFlat` (Hamming distance) over the sign bits, packed
  by sentence-transformers' `quantize_embeddings(precision="ubinary")`; both scan every code, so they
  take `factory="Flat"`. A quantized index keeps rescoring vectors beside it (`vectors.npy`, memory-mapped
  when loaded): float32 (`rescore_dtype="float32"`, the default) or one byte a dimension
  (`rescore_dtype="int8"`: FAISS's `ScalarQuantizer` QT_8bit, per-dimension min-max ranges trained on
  all the vectors and saved beside them, `rescore_quantizer.npy`; a quarter of the bytes on disk).
  `search(..., rescore_multiplier=N)` takes N x k candidates from the codes (filters included) and
  re-scores them by the dot product with their rescoring vectors (int8 ones decoded by FAISS's own
  `decode`), reading only the candidates' rows.
  Binary scores without rescoring are `1 - 2 * hamming / dim` (the cosine of the sign vectors).
* `truncate_dim` (Matryoshka): documents and queries are cut to their first `truncate_dim`
  dimensions and L2-renormalised; queries of the model's full width are truncated by `search`.
* `save(dir)` / `DenseIndex.load(dir)` keep `index.faiss` with a manifest (corpus fingerprint, model
  name and content identity, dimension, factory strings, checksums); writes are atomic and a stale or
  damaged directory is refused with the rebuild command.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from stagegraph.atomic import atomic_dir
from stagegraph.hashing import library_versions, stable_hash
from stagegraph.thread_counts import limited
from stagegraph.indexes.faiss_training import adapt_factory, skip_polysemous_training, train_and_add
from stagegraph.indexes.manifest import IndexLoadError, Manifest, read_manifest, write_manifest
from stagegraph.indexes.quantization import binary_codes, quantize_problem, truncate

log = logging.getLogger(__name__)

KIND = "dense"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"  # a quantized index' rescoring vectors (float32, or int8 codes)
RESCORE_QUANTIZER_FILE = "rescore_quantizer.npy"  # int8 rescoring: the scalar quantizer's trained ranges
REBUILD_HINT = (
    "rebuild it with `stagegraph index CONFIG --dataset DATASET`, or delete the directory and the "
    "dense stage rebuilds it at warm-up"
)
DEFAULT_EF_SEARCH = 256  # HNSW, at least 2k; see `search_params`
DEFAULT_TRAIN_SAMPLE = 100_000


MIN_SCANNED_PER_K = 32  # IVF: probe lists holding at least 32 * k vectors (on average)
#: A filter allowing at most this many rows, or under this share, is searched exhaustively (`DenseIndex.search`).
BRUTE_FORCE_MAX = 20_000
EXHAUSTIVE_SHARE = 0.05
MAX_EF_SEARCH = 4096


def _raised(name: str, value: int, share: float, index: DenseIndex) -> int:
    """efSearch / nprobe scaled by 1 / (share of rows allowed), within their limits."""
    scaled = int(math.ceil(value / max(share, 1e-9)))
    if name == "nprobe":
        return min(index.nlist() or value, scaled)
    return min(MAX_EF_SEARCH, scaled)


def default_nprobe(nlist: int, ntotal: int = 0, k: int = 100) -> int:
    """IVF lists probed when `nprobe` is not set.

    At least 16 lists, an eighth of them, and enough lists to hold `32 * k` vectors on average: on
    MiniLM embeddings of SciFact, CACM and Cranfield this keeps recall@100 near Flat's where an
    eighth alone did not (docs/benchmarks.md, "Where the defaults come from"; tests/test_dense_retriever.py
    checks it on SciFact). On a small corpus that means most lists: IVF pays off on large corpora.
    """
    by_k = math.ceil(MIN_SCANNED_PER_K * k * nlist / ntotal) if ntotal else 0
    return max(1, min(nlist, max(16, math.ceil(nlist / 8), by_k)))


class DenseIndex:
    """A FAISS inner-product index over one corpus' embeddings, plus what it was built from.

    `info` holds the manifest parameters: model, model_identity, max_seq_length, dim, factory (built),
    factory_requested, ntotal, train_sample; a quantized or truncated index adds quantize and
    truncate_dim (and rescore_dtype when int8). `rescore_vectors`: a quantized index' rescoring
    vectors (memory-mapped once saved or loaded): float32, or the uint8 codes of `rescore_quantizer`
    (a FAISS `ScalarQuantizer`); None for a float index.
    """

    def __init__(self, index: Any, info: dict[str, Any], corpus_fingerprint: str,
                 rescore_vectors: np.ndarray | None = None, rescore_quantizer: Any = None):
        self.index = index
        self.info = dict(info)
        self.corpus_fingerprint = corpus_fingerprint
        self.rescore_vectors = rescore_vectors
        self.rescore_quantizer = rescore_quantizer
        self._storage_view: Any = None

    @property
    def quantize(self) -> str:
        return str(self.info.get("quantize", "none"))

    @property
    def truncate_dim(self) -> int | None:
        return self.info.get("truncate_dim")

    @property
    def rescore_dtype(self) -> str:
        return str(self.info.get("rescore_dtype", "float32"))

    @property
    def bytes_per_vector(self) -> int:
        """Bytes of index memory per vector (the codes FAISS holds; the rescoring vectors stay on disk)."""
        return int(self.index.code_size)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        factory: str = "Flat",
        *,
        corpus_fingerprint: str,
        model: str = "",
        model_identity: str = "",
        max_seq_length: int | None = None,
        train_sample: int = DEFAULT_TRAIN_SAMPLE,
        seed: int = 0,
        threads: int | None = None,
        progress: bool = True,
        quantize: str = "none",
        truncate_dim: int | None = None,
        rescore_dtype: str = "float32",
    ) -> DenseIndex:
        """Build the index `factory` over `embeddings` (n, dim; rows are the corpus rows).

        `threads` is FAISS's OpenMP thread count while training and adding (`None`: all cores).
        `quantize` (`none`, `int8`, `binary`; the last two with factory `Flat`), `truncate_dim` and
        `rescore_dtype` (a quantized index' rescoring vectors, `float32` or `int8`): see the module docstring."""
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"embeddings must be a 2-d (documents, dim) array, got shape {vectors.shape}")
        problem = quantize_problem(quantize, factory, truncate_dim, vectors.shape[1], rescore_dtype)
        if problem:
            raise ValueError(problem)
        vectors = truncate(vectors, truncate_dim)
        n, dim = vectors.shape
        extra: dict[str, Any] = {}
        if quantize != "none" or truncate_dim is not None:
            extra = {"quantize": quantize, "truncate_dim": truncate_dim}
        rescore, quantizer = vectors, None
        if rescore_dtype == "int8":  # only with quantize (quantize_problem): recorded only then, float keys unchanged
            extra["rescore_dtype"] = "int8"
            quantizer = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit)
            with limited(threads):
                quantizer.train(vectors)
                rescore = quantizer.compute_codes(vectors)
        if quantize == "binary":
            index = faiss.IndexBinaryFlat(dim)
            with limited(threads):
                index.add(binary_codes(vectors))
            info = {"model": model, "model_identity": model_identity, "max_seq_length": max_seq_length,
                    "dim": int(dim), "factory": "BFlat", "factory_requested": factory, "metric": "hamming",
                    "ntotal": int(index.ntotal), "train_sample": int(train_sample), "seed": int(seed), **extra}
            return cls(index, info, corpus_fingerprint, rescore, quantizer)
        built = adapt_factory("SQ8" if quantize == "int8" else factory, n, dim)
        try:
            index = faiss.index_factory(dim, built, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(
                f"FAISS cannot build the index {factory!r} for {dim}-d vectors: {_first_line(exc)}. "
                f"Examples that work: 'Flat', 'HNSW32', 'IVF1024,Flat', 'IVF1024,PQ32' (PQ's M must divide {dim})."
            ) from None
        skip_polysemous_training(index)
        with limited(threads):
            train_and_add(index, vectors, built, train_sample, seed, progress)
        info = {
            "model": model,
            "model_identity": model_identity,
            "max_seq_length": max_seq_length,
            "dim": int(dim),
            "factory": built,
            "factory_requested": factory,
            "metric": "inner_product",
            "ntotal": int(index.ntotal),
            "train_sample": int(train_sample),
            "seed": int(seed),
            **extra,
        }
        return cls(index, info, corpus_fingerprint, rescore if quantize != "none" else None, quantizer)

    # ------------------------------------------------------------------ facts
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def factory(self) -> str:
        return str(self.info.get("factory", ""))

    @property
    def identity(self) -> str:
        """A hash of what decides this index' answers: build parameters and corpus."""
        return stable_hash([self.info, self.corpus_fingerprint])

    def nlist(self) -> int | None:
        if self.quantize == "binary":
            return None
        ivf = _ivf_of(self.index)
        return None if ivf is None else int(ivf.nlist)

    def is_hnsw(self) -> bool:
        return self.quantize != "binary" and _hnsw_of(self.index) is not None

    # ------------------------------------------------------------------ search
    def search_params(self, ef_search: int | None = None, nprobe: int | None = None, k: int = 100) -> dict[str, int]:
        """The FAISS parameters a search uses, defaults filled in."""
        params: dict[str, int] = {}
        nlist = self.nlist()
        if nlist is not None:
            params["nprobe"] = min(nlist, nprobe or default_nprobe(nlist, self.ntotal, k))
        if self.is_hnsw():
            params["efSearch"] = max(ef_search, k) if ef_search else max(DEFAULT_EF_SEARCH, 2 * k)
        return params

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        threads: int | None = None,
        allowed: np.ndarray | None = None,
        rescore_multiplier: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores float32, rows int64) per query vector; missing slots hold row -1.

        `rescore_multiplier` N (a quantized index only): the top N x k by the codes, re-scored by the
        exact dot product with the float32 vectors kept beside the index, the top k of those returned.
        Queries of the model's full width are truncated to a truncated index' width (`truncate_dim`).

        `allowed` (a bool per row) filters before the top k, so the result is the best `k` among
        allowed rows and never a disallowed one. FAISS's `IDSelectorBitmap` goes into the per-call
        parameters; how the allowed rows are searched depends on how many there are:

        * a flat index scans them exactly (FAISS skips the others);
        * HNSW and IVF, with few allowed rows (at most `BRUTE_FORCE_MAX`, or under `EXHAUSTIVE_SHARE`
          of the index): exhaustively, so exactly (HNSW: its flat storage; IVF: every list), because
          a graph or list search loses recall when most of what it visits is filtered out;
        * otherwise the index's own search with efSearch / nprobe raised by the inverse of the share
          allowed, so that about as many allowed candidates are visited as without a filter.

        An index type FAISS cannot filter is searched exactly over the allowed rows' vectors.
        """
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if self.truncate_dim is not None and queries.shape[1] > self.dim:
            queries = truncate(queries, self.dim)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have {queries.shape[1]} dimensions, the index {self.dim}")
        n_allowed = self.ntotal if allowed is None else int(np.count_nonzero(allowed))
        k = max(1, min(k, n_allowed)) if n_allowed else 0
        if k == 0 or len(queries) == 0:
            empty = (len(queries), 0)
            return np.empty(empty, dtype=np.float32), np.empty(empty, dtype=np.int64)
        filtered = allowed is not None and n_allowed < self.ntotal
        if rescore_multiplier and self.rescore_vectors is not None:
            wide = min(n_allowed, k * int(rescore_multiplier))
            _, candidates = self.search(queries, wide, threads=threads, allowed=allowed)
            return self._rescore(queries, candidates, k)
        if self.quantize == "binary":
            params = None
            if filtered:
                bitmap = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
                params = self.faiss_parameters({}, bitmap)
            with limited(threads):
                distances, rows = self.index.search(binary_codes(queries), k, params=params)
            scores = (1.0 - 2.0 * distances.astype(np.float32) / self.dim).astype(np.float32)
            rows = rows.astype(np.int64, copy=False)
            order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=-1)  # ties: row order
            return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)
        if filtered and not self._selects():
            return self._exact_over(queries, np.flatnonzero(allowed), k)
        values = self.search_params(ef_search, nprobe, k)
        index, bitmap = self.index, None
        if filtered:
            share = n_allowed / max(self.ntotal, 1)
            bitmap = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
            exhaustive = n_allowed <= BRUTE_FORCE_MAX or share < EXHAUSTIVE_SHARE
            if exhaustive and self.is_hnsw() and not isinstance(self.index, faiss.IndexPreTransform):
                index, values = faiss.downcast_index(faiss.downcast_index(self.index).storage), {}
            elif exhaustive and "nprobe" in values:
                values = {**values, "nprobe": self.nlist() or values["nprobe"]}
            else:
                values = {name: _raised(name, v, share, self) for name, v in values.items()}
        params = self.faiss_parameters(values, bitmap)
        with limited(threads):
            scores, rows = index.search(queries, k, params=params)
        return scores, rows.astype(np.int64, copy=False)

    def _rescore(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top `k` of each query's `candidates` by exact dot product with the float vectors (only
        the candidates' rows are read from the memory-mapped file); ties by row."""
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, (query, found) in enumerate(zip(queries, candidates)):
            rows = np.unique(found[found >= 0])  # sorted: reads in file order, ties keep row order
            scores = self.exact_scores(query, rows)
            top = np.argsort(-scores, kind="stable")[:k]
            out_scores[i, : len(top)], out_rows[i, : len(top)] = scores[top], rows[top]
        return out_scores, out_rows

    def exact_scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Dot products of one query (this index' width, or the model's for a truncated index) with
        the rescoring vectors of `rows` (a quantized index only): the float32 vectors, or the int8
        codes decoded by the index' scalar quantizer. Only those rows are read from disk."""
        if self.rescore_vectors is None:
            raise ValueError("exact_scores needs a quantized index (its float vectors are kept for rescoring)")
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if self.truncate_dim is not None and query.shape[1] > self.dim:
            query = truncate(query, self.dim)
        held = self.rescore_vectors[np.asarray(rows, dtype=np.int64)]
        vectors = self.rescore_quantizer.decode(np.ascontiguousarray(held)) if self.rescore_quantizer is not None else held
        return (np.asarray(vectors, dtype=np.float32) @ query[0]).astype(np.float32)

    def faiss_parameters(self, values: dict[str, int], bitmap: np.ndarray | None = None) -> Any:
        """The per-call `faiss.SearchParameters` for `search_params` values and an optional row
        bitmap (None: the index takes no parameters)."""
        selector = None if bitmap is None else faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bitmap))
        if "nprobe" in values:
            params: Any = faiss.SearchParametersIVF(nprobe=values["nprobe"])
        elif "efSearch" in values:
            params = faiss.SearchParametersHNSW(efSearch=values["efSearch"])
        elif selector is not None:
            params = faiss.SearchParameters()
        else:
            return None
        if selector is not None:
            params.sel = selector
            params._bitmap, params._selector = bitmap, selector  # keep both alive for the call
        if isinstance(self.index, faiss.IndexPreTransform):
            outer = faiss.SearchParametersPreTransform(index_params=params)
            outer._inner = params
            return outer
        return params

    def _selects(self) -> bool:
        """Whether FAISS honours a selector on this index (flat, HNSW and IVF indexes do)."""
        inner = self.index
        while isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        inner = faiss.downcast_index(inner)
        return isinstance(inner, (faiss.IndexFlat, faiss.IndexHNSW, faiss.IndexIVF, faiss.IndexScalarQuantizer))

    def _exact_over(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top `k` among `rows` by exact inner product with the stored (or decoded) vectors."""
        vectors = self.vectors_of(rows)
        scores = queries @ vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # rows ascend, so ties keep row order
        return np.take_along_axis(scores, top, axis=1).astype(np.float32), rows[top].astype(np.int64)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of `rows` (decoded for compressed indexes)."""
        flat = self._flat_storage()
        if flat is not None:
            return flat[rows]
        ivf = _ivf_of(self.index)
        if ivf is not None and not ivf.direct_map.type:
            ivf.make_direct_map()
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def _flat_storage(self) -> np.ndarray | None:
        """A zero-copy (ntotal, dim) view of the vectors of a flat or HNSW-flat index, else None."""
        if self._storage_view is None and self.quantize == "binary":
            self._storage_view = False
        if self._storage_view is None:
            inner = faiss.downcast_index(self.index)
            storage = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
            if isinstance(storage, faiss.IndexFlat) and not isinstance(self.index, faiss.IndexPreTransform):
                self._storage_view = faiss.rev_swig_ptr(storage.get_xb(), self.ntotal * self.dim).reshape(self.ntotal, self.dim)
            else:
                self._storage_view = False
        return None if self._storage_view is False else self._storage_view

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write `index.faiss` and `manifest.json` to `directory`, replacing it atomically."""
        with atomic_dir(directory) as tmp:
            if self.quantize == "binary":
                faiss.write_index_binary(self.index, str(tmp / INDEX_FILE))
            else:
                faiss.write_index(self.index, str(tmp / INDEX_FILE))
            if self.rescore_quantizer is not None:
                np.save(tmp / VECTORS_FILE, np.ascontiguousarray(self.rescore_vectors, dtype=np.uint8))
                np.save(tmp / RESCORE_QUANTIZER_FILE, faiss.vector_to_array(self.rescore_quantizer.trained))
            elif self.rescore_vectors is not None:
                np.save(tmp / VECTORS_FILE, np.ascontiguousarray(self.rescore_vectors, dtype=np.float32))
            write_manifest(
                tmp,
                Manifest(
                    kind=KIND,
                    format_version=FORMAT_VERSION,
                    corpus_fingerprint=self.corpus_fingerprint,
                    params=self.info,
                    libraries=library_versions(["faiss-cpu", "sentence-transformers", "torch", "numpy"], python=True),
                    created_with="stagegraph indexes.dense",
                ),
            )
        if self.rescore_vectors is not None:  # from now on read from disk, only the rows rescored
            self.rescore_vectors = np.load(Path(directory) / VECTORS_FILE, mmap_mode="r")

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        corpus_fingerprint: str | None = None,
        model_identity: str | None = None,
        max_seq_length: int | None | str = "any",
        factory: str | None = None,
        verify_checksums: bool = True,
        mmap: bool = False,
        quantize: str | None = None,
        truncate_dim: int | None | str = "any",
        rescore_dtype: str | None = None,
    ) -> DenseIndex:
        """Read an index saved by `save`; refuse it (`IndexLoadError`) when it does not match.

        Each given expectation (corpus fingerprint, model identity, max_seq_length, requested
        factory, quantize, truncate_dim, rescore_dtype) is checked against the manifest; a mismatch means the index is stale. `mmap`: map
        the index file read-only (FAISS's `IO_FLAG_MMAP`) instead of reading it into memory.
        """
        directory = Path(directory)
        manifest = read_manifest(
            directory,
            kind=KIND,
            format_version=FORMAT_VERSION,
            corpus_fingerprint=corpus_fingerprint,
            verify_checksums=verify_checksums,
            rebuild_hint=REBUILD_HINT,
        )
        info = manifest.params
        where = f"The dense index at {directory}"
        if model_identity is not None and info.get("model_identity") != model_identity:
            raise IndexLoadError(
                f"{where} was built with model {info.get('model')!r} (identity "
                f"{str(info.get('model_identity'))[:12]}), not the model asked for (identity {model_identity[:12]}): "
                f"it is stale; {REBUILD_HINT}."
            )
        if max_seq_length != "any" and info.get("max_seq_length") != max_seq_length:
            raise IndexLoadError(
                f"{where} was built with max_seq_length {info.get('max_seq_length')}, not {max_seq_length}: "
                f"it is stale; {REBUILD_HINT}."
            )
        if factory is not None and info.get("factory_requested") != factory:
            raise IndexLoadError(
                f"{where} is a {info.get('factory_requested')!r} index, not {factory!r}; {REBUILD_HINT}."
            )
        built = {"quantize": info.get("quantize", "none"), "truncate_dim": info.get("truncate_dim"),
                 "rescore_dtype": info.get("rescore_dtype", "float32")}
        for name, asked in (("quantize", quantize), ("truncate_dim", truncate_dim), ("rescore_dtype", rescore_dtype)):
            if asked not in (None, "any") or (name == "truncate_dim" and asked is None):
                if built[name] != asked:
                    raise IndexLoadError(
                        f"{where} was built with {name} {built[name]!r}, not {asked!r}: the index settings "
                        f"(quantize, truncate_dim, rescore_dtype) are part of its identity; {REBUILD_HINT}."
                    )
        binary = built["quantize"] == "binary"
        try:
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
            read = faiss.read_index_binary if binary else faiss.read_index
            index = read(str(directory / INDEX_FILE), flags)
        except RuntimeError as exc:
            raise IndexLoadError(f"{where} cannot be read by FAISS ({_first_line(exc)}); {REBUILD_HINT}.") from None
        vectors, quantizer = None, None
        if built["quantize"] != "none":
            try:
                vectors = np.load(directory / VECTORS_FILE, mmap_mode="r")
                if built["rescore_dtype"] == "int8":
                    quantizer = faiss.ScalarQuantizer(int(info["dim"]), faiss.ScalarQuantizer.QT_8bit)
                    faiss.copy_array_to_vector(np.load(directory / RESCORE_QUANTIZER_FILE).astype(np.float32),
                                               quantizer.trained)
            except (OSError, ValueError) as exc:
                raise IndexLoadError(f"{where} lacks readable rescoring vectors ({exc}); {REBUILD_HINT}.") from None
        if index.ntotal != info.get("ntotal") or index.d != info.get("dim"):
            raise IndexLoadError(
                f"{where} holds {index.ntotal} vectors of {index.d} dimensions, its manifest says "
                f"{info.get('ntotal')} of {info.get('dim')}; {REBUILD_HINT}."
            )
        return cls(index, info, manifest.corpus_fingerprint, vectors, quantizer)

    def __repr__(self) -> str:
        return f"DenseIndex({self.factory}, {self.ntotal} x {self.dim}, model={self.info.get('model')!r})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else exc.__class__.__name__


def _ivf_of(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


def _hnsw_of(index: faiss.Index) -> Any:
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    index = faiss.downcast_index(index)
    return index if hasattr(index, "hnsw") else None
