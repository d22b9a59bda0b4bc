"""The learned-sparse retrieval stage (SPLADE-style): term weights from a masked-language model,
scored as impacts on the BM25 kernel's postings.

`SparseRetriever(k=100, name=None, model=PATH_OR_ID, query_mode="model", ...)`:

* documents are encoded by sentence-transformers' `SparseEncoder` (`encode_document`: an MLM head
  with SPLADE pooling, one weight per vocabulary token); the weights are stored term-major, exactly
  the layout of the BM25 sparse backend (`stagegraph.indexes.bm25_scoring.SparseScores`: column `t`
  holds the documents with a non-zero weight for token `t`), and a query is answered by the same
  compiled kernel (`SparseSearcher.top`), a query token's weight times the document's weight summed
  over the shared tokens: the dot product of the two weight vectors, best `k` first, ties by row.
* `query_mode: model` encodes the query with the model (`encode_query`); `query_mode:
  inference_free` does not run a transformer on the query: a model whose query side is the
  library's `SparseStaticEmbedding` (a `Router` model, such as the opensearch inference-free
  SPLADE models) gives its own per-token weights through `encode_query`; any other model gets the
  query's tokenizer ids (no special tokens), each distinct token with weight 1.
* The document weights are saved under `env.artefact_dir("sparse", key)` (key: corpus fingerprint,
  model content identity, the effective max_seq_length, format), so a second binding, a sweep or a changed `k`
  or `query_mode` never re-encodes the corpus.
* `filter` (metadata, `stagegraph.corpora.filters`) selects rows before the top k, as in BM25.
* Over a segmented corpus (a collection) `bind` returns a `SegmentedSparseSearch`: one weight matrix
  per segment (saved under the segment's fingerprint, so encoded once when the segment is new, then
  only loaded), each searched with the segment's live and allowed rows, the lists merged by (score
  desc, chunk key asc). Impact scores need no corpus statistics, so this equals one matrix over the
  live chunks. With the environment's text cache (collections set one) each text's weights are kept
  per text too, so a merged or re-ingested segment encodes only texts it has not seen.
* An empty query, or one with no non-zero weight, gives an empty ranking and an `EmptyQueryWarning`.
YAML: `{type: sparse, name: sparse, k: 100, model: PATH_OR_ID, query_mode: model}`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from stagegraph.atomic import atomic_dir
from stagegraph.corpora.segmented import SegmentedCorpus, merge_top
from stagegraph.corpora.types import Queries
from stagegraph.errors import StageError
from stagegraph.hashing import stable_hash
from stagegraph.indexes.bm25_scoring import SparseScores, SparseSearcher
from stagegraph.indexes.devices import DeviceError, resolve_device
from stagegraph.indexes.encoder import ModelNotFoundError, locate_model, model_identity, quiet_transformers
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.registry import register
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import EmptyQueryWarning, StageBase
from stagegraph.stages.retrieve.filtering import RowFilter
from stagegraph.stages.retrieve.segments import LoadedCache, segment_mask

FORMAT_VERSION = 1
SPEED_ONLY = {"name", "batch_size", "device"}
READ_ONLY_HINT = "build it with the writer: `stagegraph ingest ... --collection DIR` (or `stagegraph index CONFIG --dataset D`)"
#: segment weights loaded in this process (a segment never changes): each generation reuses them
_LOADED: LoadedCache = LoadedCache()


def _terms_or_warn(search, qid: str, text: str, given: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """A query's (token ids, weights): `given` (weights the caller computed, e.g. a sharded search's
    coordinator), else the model's; none (with a warning) when the text holds no weighted token."""
    if given is not None:
        ids, weights = search.within(*given)
    else:
        ids, weights = search.query_weights(text) if text and text.strip() else (np.empty(0, np.int64), None)
    if len(ids) == 0:
        warnings.warn(f"Sparse query {qid!r} has no weighted token ({text[:60]!r}); returning an empty ranking.",
                      EmptyQueryWarning, stacklevel=3)
    return ids, weights


class SparseRetrieverConfig(StageConfig):
    """`k` documents per query by the dot product of learned sparse (SPLADE) term weights."""

    k: int = Field(100, ge=1)
    #: a SparseEncoder directory or model id (e.g. naver/splade-cocondenser-ensembledistil)
    model: str = Field(..., min_length=1)
    #: model: the query is encoded by the model; inference_free: no transformer on the query
    query_mode: Literal["model", "inference_free"] = "model"
    #: document truncation, in tokens (None: the model's own; more than the model's own is refused)
    max_seq_length: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    device: str = "auto"
    #: metadata filter applied to every query, before the top k (`stagegraph.corpora.filters`)
    filter: dict[str, Any] | None = None


def artefact_key(corpus_fingerprint: str, identity: str, max_seq_length: int | None) -> str:
    payload = {"corpus": corpus_fingerprint, "model": identity, "max_seq_length": max_seq_length,
               "format": FORMAT_VERSION}
    return stable_hash(payload)[:16]


@register
class SparseRetriever(StageBase):
    """Top-`k` learned-sparse retrieval over the whole corpus; starts a chain (no upstream input)."""

    type_name = "sparse"
    Config = SparseRetrieverConfig
    arity = Arity.NONE
    indexes_corpus = True
    libraries = ("torch", "sentence-transformers", "transformers")
    speed_only = frozenset(SPEED_ONLY)
    searches_segments = True  # over a segmented corpus: weights per segment, live rows only
    intra_op_threads = 1  # a query is encoded alone, with one thread (as the dense stage)
    config: SparseRetrieverConfig

    def __init__(self, k: int = 100, name: str | None = None, **settings: Any):
        self.config = self.make_config(name=name, k=k, **settings)

    @classmethod
    def from_config(cls, config: SparseRetrieverConfig) -> SparseRetriever:
        return cls._of_config(config)

    def artefact_fingerprint(self) -> str:
        try:
            return model_identity(locate_model(self.config.model).path)
        except ModelNotFoundError:
            return f"unresolved:{self.config.model}"  # bind raises the full error

    def bind(self, env: Environment) -> SparseSearch | SegmentedSparseSearch:
        return self._bind(env, None)

    def _bind(self, env: Environment, model: Any) -> SparseSearch | SegmentedSparseSearch:
        model = model if model is not None else self._model()
        identity = model_identity(locate_model(self.config.model).path)
        if isinstance(env.corpus, SegmentedCorpus):
            parts = [self._weights(env, part.corpus, model, identity, segment=True) for part in env.corpus.parts]
            return SegmentedSparseSearch(self, model, parts, env.corpus)
        return SparseSearch(self, model, self._weights(env, env.corpus, model, identity), env.corpus)

    def _model(self) -> Any:
        cfg = self.config
        try:
            resolved = locate_model(cfg.model)
            device = resolve_device(cfg.device)
        except (ModelNotFoundError, DeviceError) as exc:
            raise StageError(f"Stage {self.name!r}: {exc}") from exc
        from sentence_transformers import SparseEncoder

        with quiet_transformers():  # no weight-loading bars
            model = SparseEncoder(str(resolved.path), device=device)
        own = model.max_seq_length
        if cfg.max_seq_length is not None:
            if own is not None and cfg.max_seq_length > own:
                raise StageError(f"Stage {self.name!r}: max_seq_length {cfg.max_seq_length} is more than model "
                                 f"{cfg.model!r} takes ({own} tokens); set max_seq_length: {own} or less, or leave it out")
            model.max_seq_length = cfg.max_seq_length
        return model

    def _weights(self, env: Environment, corpus: Any, model: Any, identity: str, segment: bool = False) -> SparseScores:
        """The document weights of `corpus` (a dataset or one segment): loaded, or encoded and saved."""
        cfg = self.config
        directory = env.artefact_dir("sparse", artefact_key(corpus.fingerprint, identity, model.max_seq_length))
        scores = _LOADED.get((str(directory), corpus.fingerprint)) if segment else None
        if scores is None:
            scores = _load(directory, corpus.fingerprint)
        if scores is None:
            env.refuse_build(self.name, f"sparse document weights at {directory}", READ_ONLY_HINT)
            texts = corpus.doc_texts()
            if env.text_cache is not None:  # a collection: encode only the texts the cache lacks
                scores = cached_document_weights(model, texts, env.text_cache, identity, batch_size=cfg.batch_size,
                                                 progress=env.progress)
            else:
                scores = document_weights(model, texts, batch_size=cfg.batch_size, progress=env.progress)
            _save(directory, scores, corpus.fingerprint, identity)
        if segment:  # a segment never changes: the next generations reuse its weights
            _LOADED.put((str(directory), corpus.fingerprint), scores)
        return scores


def document_weights(model: Any, texts: list[str], *, batch_size: int = 32, progress: bool = False) -> SparseScores:
    """Every text's `encode_document` weights, term-major (`SparseScores`, zeros dropped)."""
    import scipy.sparse as sp

    if not texts:
        raise StageError("cannot build sparse document weights over an empty corpus (0 documents)")
    encoded = model.encode_document(texts, batch_size=batch_size, convert_to_sparse_tensor=True,
                                    show_progress_bar=progress).coalesce().cpu()
    rows, cols = encoded.indices().numpy()
    values = encoded.values().numpy().astype(np.float32)
    matrix = sp.csc_matrix((values, (rows, cols)), shape=(len(texts), encoded.shape[1]), dtype=np.float32)
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return SparseScores(matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32),
                        matrix.data.astype(np.float32), len(texts))


def cached_document_weights(model: Any, texts: list[str], cache: Any, identity: str, *, batch_size: int = 32,
                            progress: bool = False) -> SparseScores:
    """`document_weights` of `texts` from a per-text cache (`TextCache`), encoding only the texts it
    lacks (a merged or re-ingested segment re-encodes nothing it has seen). The namespace names the
    model's content identity and its truncation, so weights are never served for another model."""
    if not texts:
        raise StageError("cannot build sparse document weights over an empty corpus (0 documents)")
    from stagegraph.indexes.text_cache import text_key

    namespace = f"sparse-weights:{identity}:{model.max_seq_length}"
    keys = [text_key(t) for t in texts]
    found = cache.get_many(namespace, keys)
    todo = [i for i, key in enumerate(keys) if key not in found]
    rows: list[tuple[np.ndarray, np.ndarray]] = [None] * len(texts)  # type: ignore[list-item]
    for i, key in enumerate(keys):
        blob = found.get(key)
        if blob is not None:
            n = len(blob) // 8  # n int32 ids, then n float32 weights
            rows[i] = (np.frombuffer(blob[:4 * n], dtype=np.int32), np.frombuffer(blob[4 * n:], dtype=np.float32))
    width = None
    if todo:
        fresh = document_weights(model, [texts[i] for i in todo], batch_size=batch_size, progress=progress)
        by_row, width = _rows_of(fresh), fresh.vocab_size
        for j, i in enumerate(todo):
            rows[i] = by_row[j]
        cache.put_many(namespace, ((keys[i], by_row[j][0].tobytes() + by_row[j][1].tobytes()) for j, i in enumerate(todo)))
    return _from_rows(rows, vocab_size=width if width is not None else _vocab_size(model))


def _vocab_size(model: Any) -> int:
    """The width of the model's document weights (its output vocabulary), read off one short encoding."""
    return int(model.encode_document(["a"], convert_to_sparse_tensor=True).shape[1])


def _rows_of(scores: SparseScores) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each document's (token ids int32, weights float32), ids ascending."""
    import scipy.sparse as sp

    matrix = sp.csc_matrix((scores.data, scores.indices, scores.indptr),
                           shape=(scores.n_docs, len(scores.indptr) - 1)).tocsr()
    matrix.sort_indices()
    return [(matrix.indices[matrix.indptr[r]:matrix.indptr[r + 1]].astype(np.int32),
             matrix.data[matrix.indptr[r]:matrix.indptr[r + 1]].astype(np.float32)) for r in range(scores.n_docs)]


def _from_rows(rows: list[tuple[np.ndarray, np.ndarray]], vocab_size: int) -> SparseScores:
    import scipy.sparse as sp

    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(ids) for ids, _ in rows])
    ids = np.concatenate([r[0] for r in rows]) if rows else np.empty(0, np.int32)
    values = np.concatenate([r[1] for r in rows]) if rows else np.empty(0, np.float32)
    matrix = sp.csr_matrix((values, ids, indptr), shape=(len(rows), vocab_size)).tocsc()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return SparseScores(matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32),
                        matrix.data.astype(np.float32), len(rows))


def _save(directory: Path, scores: SparseScores, fingerprint: str, identity: str) -> None:
    with atomic_dir(Path(directory)) as tmp:
        np.savez(tmp / "weights.npz", indptr=scores.indptr, indices=scores.indices, data=scores.data)
        (tmp / "info.json").write_text(json.dumps({"format": FORMAT_VERSION, "corpus": fingerprint, "model": identity,
                                                   "n_docs": scores.n_docs}), encoding="utf-8")


def _load(directory: Path, fingerprint: str) -> SparseScores | None:
    """The saved weights for this corpus, or None (missing, other corpus or damaged: encode again)."""
    try:
        info = json.loads((Path(directory) / "info.json").read_text(encoding="utf-8"))
        if info.get("format") != FORMAT_VERSION or info.get("corpus") != fingerprint:
            return None
        with np.load(Path(directory) / "weights.npz", allow_pickle=False) as arrays:
            scores = SparseScores(arrays["indptr"], arrays["indices"], arrays["data"], int(info["n_docs"]))
        scores.validate()
        return scores
    except (OSError, ValueError, KeyError, TypeError):
        return None


class SparseSearch:
    """A `SparseRetriever` bound to one corpus: the model, the document weights and the filter masks."""

    def __init__(self, stage: SparseRetriever, model: Any, scores: SparseScores, corpus: Any):
        self.stage = stage
        self.model = model
        self.scores = scores
        self.corpus = corpus
        self._searcher = SparseSearcher(scores)
        self._searcher.warm_up()
        self._width = scores.vocab_size
        self._filter = RowFilter(stage.config.filter)
        #: whether the model's own query side is the library's inference-free SparseStaticEmbedding
        self.static_query = has_static_query(model)

    def rebind(self, env: Environment) -> SparseSearch | SegmentedSparseSearch:
        """The same stage on another corpus or generation, with this binding's model (no model load)."""
        return self.stage._bind(env, self.model)

    def query_weights(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(token ids int64, weights float32) of `text` under the stage's `query_mode` (`query_weights`)."""
        return self.within(*stage_query_weights(self.stage, self.model, text, self.static_query))

    def within(self, ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The query tokens the document weights have a column for (any other scores nothing)."""
        inside = np.asarray(ids) < self._width
        return np.asarray(ids)[inside], np.asarray(weights)[inside]

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]] = (),
            given: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Ranking]:
        """Each query's top k; `given`: each query's (token ids, weights) computed by the caller."""
        out: list[Ranking] = []
        for position, (qid, text) in enumerate(queries):
            ids, weights = _terms_or_warn(self, qid, text, None if given is None else given[position])
            empty = len(ids) == 0
            out.append(Ranking.empty() if empty else self._top(ids, weights, queries.filter_of(position)))
        return out

    def _top(self, ids: np.ndarray, weights: np.ndarray, query_filter: Any) -> Ranking:
        """The top k of one weighted query among the rows the filters allow."""
        allowed = self._filter.allowed(self.corpus, query_filter)
        if allowed is not None and not np.any(allowed):
            return Ranking.empty()
        return Ranking(*self._searcher.top(ids, weights, self.stage.config.k, allowed))


def has_static_query(model: Any) -> bool:
    """Whether `model`'s query side is the library's inference-free `SparseStaticEmbedding`."""
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding

    return any(isinstance(module, SparseStaticEmbedding) for module in model.modules())


def stage_query_weights(stage: SparseRetriever, model: Any, text: str, static_query: bool | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(token ids int64, weights float32) of `text` as `stage` weighs a query with `model` (its
    `query_mode`; `static_query`: whether the model's query side is inference-free, found when None)."""
    static = has_static_query(model) if static_query is None else static_query
    return query_weights(model, text, stage.config.query_mode == "inference_free" and not static)


def query_weights(model: Any, text: str, token_ids: bool) -> tuple[np.ndarray, np.ndarray]:
    """(token ids int64, weights float32) of `text`: the tokenizer's distinct ids with weight 1 when
    `token_ids`, else the model's `encode_query` weights; weights <= 0 are dropped (SPLADE's are never
    negative; the kernel adds positive impacts only, so a negative one could not be scored exactly)."""
    if token_ids:
        ids = model.tokenizer(text, add_special_tokens=False, truncation=True)["input_ids"]
        unique = np.unique(np.asarray(ids, dtype=np.int64))
        return unique, np.ones(len(unique), dtype=np.float32)
    encoded = model.encode_query([text], convert_to_sparse_tensor=True).coalesce().cpu()
    _, ids = encoded.indices().numpy()
    values = encoded.values().numpy().astype(np.float32)
    keep = values > 0
    return ids[keep].astype(np.int64), values[keep]


class SegmentedSparseSearch(SparseSearch):
    """A `SparseRetriever` bound to a segmented corpus: one weight matrix per segment, searched with the
    segment's live (and allowed) rows, the lists merged by (score desc, chunk key asc). Impact scores
    need no corpus statistics, so this equals one matrix over the live chunks."""

    def __init__(self, stage: SparseRetriever, model: Any, parts: list[SparseScores], corpus: SegmentedCorpus):
        self.stage = stage
        self.model = model
        self.corpus = corpus
        self._searchers = [SparseSearcher(scores) for scores in parts]
        self._width = min((scores.vocab_size for scores in parts), default=0)
        for searcher in self._searchers:
            searcher.warm_up()
        self._filter = RowFilter(stage.config.filter)
        self.static_query = has_static_query(model)

    def _top(self, ids: np.ndarray, weights: np.ndarray, query_filter: Any) -> Ranking:
        """Every segment's top k among its live, allowed rows, merged by (score desc, chunk key asc)."""
        k = self.stage.config.k
        found = []
        for part, searcher in zip(self.corpus.parts, self._searchers):
            mask = segment_mask(self._filter, part, query_filter)
            if mask is not None and not mask.any():
                continue
            local, scores = searcher.top(ids, weights, k, mask)
            found.append((local + part.offset, scores, part.corpus.keys[local]))
        return Ranking(*merge_top(found, k))
