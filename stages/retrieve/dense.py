"""The dense retrieval stage: queries encoded by a sentence-transformers model, searched in FAISS.

`DenseRetriever(index=None, k=100, name=None, model="sentence-transformers/all-MiniLM-L6-v2",
index="Flat", ef_search=None, nprobe=None, max_seq_length=256, ...)`:

* `index` is a FAISS factory string (`Flat`, `HNSW32`, `IVF1024,Flat`, `IVF1024,PQ32`; alias
  `index_factory`) or a built `stagegraph.indexes.dense.DenseIndex`, whose model and settings then become the
  stage's. With a string, `bind(env)` loads the index saved for `env.corpus` under
  `env.artefact_dir("dense", key)` (key: corpus, model identity, max_seq_length, factory), and
  otherwise builds it from the cached document embeddings (`stagegraph.indexes.embeddings`, under
  `env.work_dir/embeddings`), so changing only the factory string never re-encodes the corpus.
* `bind(env)` returns a `DenseSearch` (the encoder, the index, the corpus); the stage stays a value.
  Over a segmented corpus (a collection: `stagegraph.corpora.segmented`) it returns a
  `SegmentedDenseSearch`: one index per segment (keyed by the segment's fingerprint, so built once
  when the segment is new and then only loaded), each searched with the segment's live rows as the
  FAISS selector, the lists merged by (score desc, tie key asc). With `Flat` that is exactly a
  single index over the live chunks; HNSW and IVF keep their recall per segment.
* `fingerprint()` works before binding: the config (without the speed-only settings `batch_size`
  and `device`) plus the model's content identity, or the given index' identity.
* Threads are not a stage setting: the executor's policy (`stagegraph.pipeline.threads`) sets torch's
  and FAISS's counts for each call. The stage declares `intra_op_threads = 1`: a query is encoded
  and searched with one thread, because torch splits a one-row matmul by thread count (scores move
  ~1e-7) and a query's score must not depend on the cores of this process or a Ray worker (the
  old `threads`, `query_threads` and `search_threads` fields are refused with that message).
* `device` (default `auto`: a CUDA GPU when torch sees one, else the CPU) is where the encoder runs
  (`stagegraph.indexes.devices`); FAISS search stays on the CPU.
* An empty (or whitespace) query gives an empty ranking and an `EmptyQueryWarning`.
* Bring your own vectors: when `env.vectors` holds precomputed vectors of the corpus rows
  (`stagegraph.corpora.vectors.CorpusVectors`: a collection whose JSONL records carry an embedding,
  or a dataset given them), the index is built from those, L2-normalised as the encoder's own rows
  are, and the encoder never sees a document; its artefact key adds the vectors' fingerprint, so a
  changed vector builds a new index. Queries are still encoded by `model`, so `bind` refuses a
  `model` that is not the one that made the vectors (same name, or the same model files), and
  vectors whose width is not the model's, each with one line naming both and the fix.
* Quantized (docs/quantized-dense.md): `quantize: none | int8 | binary` (with `index: Flat`) builds
  FAISS's SQ8 or binary Hamming index instead of float Flat, keeping the float vectors beside it on
  disk; `rescore_multiplier: N` takes N x k candidates from the codes and re-scores them with those
  (memory-mapped) vectors, float32 or (`rescore_dtype: int8`, binary only) FAISS scalar-quantized
  bytes, a quarter of the disk; `truncate_dim: D` cuts documents and queries to D dimensions and
  renormalises (Matryoshka). `quantize`, `truncate_dim` and `rescore_dtype` are part of the index'
  artefact key (a collection's segments get their own indexes per setting); all are in the config,
  so in the stage's fingerprint, and are checked when the stage is composed (one `ConfigError` line).
YAML: `{type: dense, name: dense, k: 100, model: sentence-transformers/all-MiniLM-L6-v2, index: Flat}`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from stagegraph.corpora.segmented import ColumnCorpus, SegmentedCorpus, merge_top
from stagegraph.corpora.types import Queries
from stagegraph.indexes.dense import DEFAULT_TRAIN_SAMPLE, FORMAT_VERSION, DenseIndex
from stagegraph.indexes.quantization import quantize_problem
from stagegraph.indexes.embeddings import cached_embeddings, text_embeddings
from stagegraph.indexes.devices import DeviceError
from stagegraph.indexes.encoder import (
    DEFAULT_MODEL,
    Encoder,
    ModelNotFoundError,
    l2_normalise,
    locate_model,
    model_identity,
)
from stagegraph.indexes.manifest import IndexLoadError
from stagegraph.errors import StageError
from stagegraph.hashing import stable_hash
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import EmptyQueryWarning, StageBase
from stagegraph.stages.retrieve.filtering import RowFilter
from stagegraph.stages.retrieve.segments import LoadedCache, segment_mask
from stagegraph.pipeline.registry import register

log = logging.getLogger(__name__)

#: Settings that change speed only, never the ranking: left out of the fingerprint (cache key).
SPEED_ONLY = {"name", "batch_size", "device"}
READ_ONLY_HINT = "build it with the writer: `stagegraph ingest ... --collection DIR` (or `stagegraph index CONFIG --dataset D`)"
#: indexes loaded in this process, by (directory, corpus fingerprint): a segment's never changes
_LOADED: LoadedCache = LoadedCache()
THREADS_MOVED = "the executor sets torch and FAISS threads for every stage (stagegraph.pipeline.threads)"


class DenseRetrieverConfig(StageConfig):
    """`k` documents per query from a FAISS `index` over `model` embeddings."""

    retired: ClassVar[dict[str, str]] = dict.fromkeys(("threads", "query_threads", "search_threads"), THREADS_MOVED)

    k: int = Field(100, ge=1)
    model: str = DEFAULT_MODEL
    index: str = "Flat"  # FAISS index_factory string, inner-product metric
    ef_search: int | None = Field(None, ge=1)  # HNSW; None: max(256, 2k) (indexes.dense.search_params)
    nprobe: int | None = Field(None, ge=1)  # IVF; None: indexes.dense.default_nprobe(nlist, n, k)
    max_seq_length: int | None = Field(256, ge=1)  # document truncation, in tokens
    train_sample: int = Field(DEFAULT_TRAIN_SAMPLE, ge=1)  # vectors used to train IVF/PQ
    batch_size: int = Field(32, ge=1)
    device: str = "auto"
    #: metadata filter applied to every query, before the top k (`stagegraph.corpora.filters`)
    filter: dict[str, Any] | None = None  # torch device of the encoder: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps
    #: none (float32 Flat), int8 (FAISS SQ8) or binary (FAISS IndexBinaryFlat, Hamming) codes in memory
    quantize: Literal["none", "int8", "binary"] = "none"
    #: retrieve N x k by the quantized codes, re-score them with the float vectors on disk (None: no rescoring)
    rescore_multiplier: int | None = None
    #: the rescoring vectors kept on disk: float32, or int8 (one byte a dimension; with quantize: binary)
    rescore_dtype: Literal["float32", "int8"] = "float32"
    #: Matryoshka: keep the first D dimensions of documents and queries, renormalised (None: all)
    truncate_dim: int | None = None

    @field_validator("quantize", mode="before")
    @classmethod
    def _none_is_none(cls, value: Any) -> Any:
        return "none" if value is None else value

    @field_validator("rescore_multiplier")
    @classmethod
    def _multiplier(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be an integer >= 1 (candidates re-scored = multiplier x k), got {value}; "
                             "use e.g. rescore_multiplier: 4, or leave it out for no rescoring")
        return value

    @field_validator("truncate_dim")
    @classmethod
    def _truncate(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be a positive number of dimensions, got {value}; e.g. truncate_dim: 256, or leave it out")
        return value

    @model_validator(mode="after")
    def _check_quantization(self) -> DenseRetrieverConfig:
        if self.rescore_multiplier is not None and self.quantize == "none":
            raise ValueError("rescore_multiplier re-scores the candidates of a quantized index; set quantize: int8 "
                             "or binary, or leave rescore_multiplier out")
        needs_dim = self.truncate_dim is not None or self.quantize == "binary"
        problem = quantize_problem(self.quantize, self.index, self.truncate_dim,
                                   declared_dim(self.model) if needs_dim else None, self.rescore_dtype)
        if problem:
            raise ValueError(problem)
        return self


def declared_dim(model: str) -> int | None:
    """The width of `model`'s vectors read from its files (sentence-transformers' pooling config, else the
    transformer's hidden size) without loading it; None when the model or the files are not found here."""
    import json

    try:
        path = locate_model(model).path
    except ModelNotFoundError:
        return None
    for name, key in (("1_Pooling/config.json", "word_embedding_dimension"), ("config.json", "hidden_size")):
        try:
            value = json.loads((Path(path) / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int):
            return value
    return None


def artefact_key(corpus_fingerprint: str, identity: str, config: DenseRetrieverConfig,
                 vectors: str | None = None) -> str:
    """Directory name of the index for this corpus, model and build settings (16 hex digits);
    `vectors`: the fingerprint of precomputed vectors the index is built from (None: encoded)."""
    payload = {
        "corpus": corpus_fingerprint,
        "model": identity,
        "max_seq_length": config.max_seq_length,
        "factory": config.index,
        "train_sample": config.train_sample,
        "format": FORMAT_VERSION,
    }
    if config.quantize != "none" or config.truncate_dim is not None:  # only then: float keys stay what they were
        payload.update(quantize=config.quantize, truncate_dim=config.truncate_dim)
    if config.rescore_dtype != "float32":  # likewise
        payload["rescore_dtype"] = config.rescore_dtype
    if vectors is not None:  # only then: the keys of encoded indexes stay what they were
        payload["vectors"] = vectors
    return stable_hash(payload)[:16]


def same_model(a: str, b: str) -> bool:
    """Whether two model names name the same model: equal names, or both found here with the same files."""
    if a == b:
        return True
    try:
        return model_identity(locate_model(a).path) == model_identity(locate_model(b).path)
    except ModelNotFoundError:
        return False


def vector_model_problem(stage: str, model: str, declared: str) -> str | None:
    """The one line refusing dense stage `stage` (its `model`) over vectors made by `declared`; None when they agree."""
    if same_model(model, declared):
        return None
    return (
        f"dense stage {stage!r} uses model {model!r}, but the precomputed vectors were made by {declared!r} "
        f"(vector_model); set the stage's model: to {declared!r} (queries are encoded by it, so it must be "
        f"loadable here), or ingest vectors made by {model!r} into a new collection"
    )


@register
class DenseRetriever(StageBase):
    """Top-`k` dense retrieval over the whole corpus; starts a chain (no upstream input)."""

    type_name = "dense"
    Config = DenseRetrieverConfig
    arity = Arity.NONE
    indexes_corpus = True
    searches_segments = True  # over a segmented corpus: one index per segment, live rows only
    libraries = ("faiss-cpu", "torch", "sentence-transformers", "transformers")
    speed_only = frozenset(SPEED_ONLY)
    intra_op_threads = 1
    config: DenseRetrieverConfig

    def __init__(
        self,
        index: DenseIndex | str | None = None,
        k: int = 100,
        name: str | None = None,
        *,
        index_factory: str | None = None,
        **settings: Any,
    ):
        given: DenseIndex | None = index if isinstance(index, DenseIndex) else None
        factory = index_factory or (index if isinstance(index, str) else None)
        if index is not None and given is None and not isinstance(index, str):
            raise StageError(f"DenseRetriever index must be a factory string or a DenseIndex, not {type(index).__name__}")
        if given is not None:
            factory = self._settings_from_index(given, factory, settings)
        if factory is not None:
            settings["index"] = factory
        self.config = self.make_config(name=name, k=k, **settings)
        #: the index given to the constructor (None: each binding loads or builds its own)
        self.index: DenseIndex | None = given

    @classmethod
    def from_config(cls, config: DenseRetrieverConfig) -> DenseRetriever:
        stage = cls._of_config(config)
        stage.index = None
        return stage

    @staticmethod
    def _settings_from_index(index: DenseIndex, factory: str | None, settings: dict[str, Any]) -> str:
        built = {
            "index": index.info.get("factory_requested", index.factory),
            "model": index.info.get("model") or DEFAULT_MODEL,
            "max_seq_length": index.info.get("max_seq_length"),
            "quantize": index.quantize,
            "truncate_dim": index.truncate_dim,
            "rescore_dtype": index.rescore_dtype,
        }
        asked = {**settings, **({"index": factory} if factory else {})}
        clash = {name: (asked[name], value) for name, value in built.items() if name in asked and asked[name] != value}
        if clash:
            raise StageError(
                "DenseRetriever settings differ from those the given index was built with: "
                + ", ".join(f"{n}={a!r} (index: {b!r})" for n, (a, b) in clash.items())
                + "; pass no such settings with an index, or build a new index."
            )
        settings.update({n: v for n, v in built.items() if n != "index"})
        return str(built["index"])

    # ------------------------------------------------------------------ identity
    def artefact_fingerprint(self) -> str:
        if self.index is not None:
            return self.index.identity
        try:
            return model_identity(locate_model(self.config.model).path)
        except ModelNotFoundError:
            return f"unresolved:{self.config.model}"  # bind raises the full error

    # ------------------------------------------------------------------ binding
    def bind(self, env: Environment) -> DenseSearch | SegmentedDenseSearch:
        if isinstance(env.corpus, SegmentedCorpus) and self.index is None:
            return self._bind_segments(env, None)
        return DenseSearch(self, *self._load(env, None))

    def _bind_segments(self, env: Environment, encoder: Encoder | None) -> SegmentedDenseSearch:
        encoder = encoder or self._encoder(env.progress)
        indexes = [self._load(replace(env, corpus=part.corpus, vectors=part.vectors), encoder)[1]
                   for part in env.corpus.parts]
        return SegmentedDenseSearch(self, encoder, indexes, env.corpus)

    def _encoder(self, progress: bool) -> Encoder:
        cfg = self.config
        try:
            return Encoder(cfg.model, max_seq_length=cfg.max_seq_length, batch_size=cfg.batch_size,
                           device=cfg.device, progress=progress)
        except (ModelNotFoundError, DeviceError) as exc:
            raise StageError(f"Stage {self.name!r}: {exc}") from exc

    def _load(self, env: Environment, encoder: Encoder | None) -> tuple[Encoder, DenseIndex, Any]:
        """(encoder, index, corpus) for `env`: the index loaded, or built from cached embeddings."""
        cfg = self.config
        encoder = encoder or self._encoder(env.progress)
        fingerprint = env.corpus.fingerprint
        if self.index is not None:
            self._check_given(self.index, encoder, fingerprint)
            return encoder, self.index, env.corpus
        identity = encoder.identity
        problem = quantize_problem(cfg.quantize, cfg.index, cfg.truncate_dim, encoder.dim, cfg.rescore_dtype)
        if problem:
            raise StageError(f"Stage {self.name!r}: {problem}")
        supplied = env.vectors
        if supplied is not None:
            self._check_supplied(supplied, encoder, env.corpus)
        key = artefact_key(fingerprint, identity, cfg, supplied.fingerprint if supplied is not None else None)
        directory = env.artefact_dir("dense", key)
        segment = isinstance(env.corpus, ColumnCorpus)  # a segment's index is kept for the next generations
        loaded = _LOADED.get((str(directory), fingerprint)) if segment else None
        if loaded is not None:
            return encoder, loaded, env.corpus
        if env.read_only and not directory.is_dir():
            env.refuse_build(self.name, f"dense index at {directory}", READ_ONLY_HINT)
        try:
            index = DenseIndex.load(
                directory,
                corpus_fingerprint=fingerprint,
                model_identity=identity,
                max_seq_length=encoder.max_seq_length,
                factory=cfg.index,
                quantize=cfg.quantize,
                truncate_dim=cfg.truncate_dim,
                rescore_dtype=cfg.rescore_dtype,
                # a segment's index: checked when written (its writer), mapped rather than read
                verify_checksums=not segment,
                mmap=segment,
            )
            if segment:
                _LOADED.put((str(directory), fingerprint), index)
            return encoder, index, env.corpus
        except IndexLoadError as exc:
            if directory.exists():
                log.warning("Rebuilding the dense index of stage %r: %s", self.name, exc)
        env.refuse_build(self.name, f"usable dense index at {directory}", READ_ONLY_HINT)
        if supplied is not None:  # precomputed: never encoded, never read from or written to the text cache
            embeddings = l2_normalise(supplied.array)
            log.info("dense stage %r: %d precomputed vectors of %s", self.name, len(supplied), supplied.model)
        elif env.text_cache is not None:  # a collection: encode only the texts the cache lacks
            embeddings, encoded = text_embeddings(encoder, env.corpus.doc_texts(), env.text_cache,
                                                  progress=env.progress, encode=env.encode)
            log.info("dense stage %r: %d of %d texts encoded, the rest cached", self.name, encoded, len(env.corpus))
        else:
            embeddings, _, hit = cached_embeddings(encoder, env.corpus, Path(env.work_dir) / "embeddings",
                                                   progress=env.progress, encode=env.encode)
            log.info("dense stage %r: embeddings %s", self.name, "from cache" if hit else "encoded")
        try:
            index = DenseIndex.build(
                embeddings,
                cfg.index,
                corpus_fingerprint=fingerprint,
                model=cfg.model,
                model_identity=identity,
                max_seq_length=encoder.max_seq_length,
                train_sample=cfg.train_sample,
                progress=env.progress,
                quantize=cfg.quantize,
                truncate_dim=cfg.truncate_dim,
                rescore_dtype=cfg.rescore_dtype,
            )
        except (ValueError, RuntimeError) as exc:  # RuntimeError: FAISS itself refused to train
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise StageError(
                f"Stage {self.name!r} cannot build the FAISS index {cfg.index!r} over {len(env.corpus)} documents: "
                f"{first}{'' if isinstance(exc, ValueError) else '; use index: Flat, or a smaller IVF/PQ'}"
            ) from exc
        index.save(directory)
        if segment:
            _LOADED.put((str(directory), fingerprint), index)
        return encoder, index, env.corpus

    def _check_supplied(self, supplied: Any, encoder: Encoder, corpus: Any) -> None:
        """Refuse precomputed vectors of another model, another width, or another number of rows."""
        problem = vector_model_problem(self.name, self.config.model, supplied.model)
        if problem:
            raise StageError(problem)
        if len(supplied) != len(corpus):
            raise StageError(f"stage {self.name!r} got {len(supplied)} precomputed vectors for {len(corpus)} documents; "
                             "give one vector per document row")
        if len(corpus) and supplied.dim != encoder.dim:
            first = corpus.doc_id(0)
            raise StageError(
                f"record {first!r} (and every other) has a {supplied.dim}-dim vector, but model {self.config.model!r} of "
                f"dense stage {self.name!r} encodes queries as {encoder.dim}-dim vectors; write the vectors "
                f"{self.config.model!r} makes (or name the model that made them) and ingest again"
            )

    def _check_given(self, index: DenseIndex, encoder: Encoder, corpus_fingerprint: str) -> None:
        if index.corpus_fingerprint != corpus_fingerprint:
            raise StageError(
                f"The dense index given to stage {self.name!r} was built for another corpus "
                f"({index.corpus_fingerprint[:12]}, this corpus is {corpus_fingerprint[:12]}); build it for "
                f"this corpus, or pass a factory string and the stage builds its own."
            )
        built_with = index.info.get("model_identity")
        if built_with and built_with != encoder.identity:
            raise StageError(
                f"The dense index given to stage {self.name!r} was built with another model than "
                f"{self.config.model!r} resolves to (identity {str(built_with)[:12]} vs {encoder.identity[:12]}); "
                f"rebuild the index with this model."
            )


class DenseSearch:
    """A `DenseRetriever` bound to one corpus: the query encoder, the FAISS index, the filter masks."""

    def __init__(self, stage: DenseRetriever, encoder: Encoder, index: DenseIndex, corpus: Any):
        self.stage = stage
        self.encoder = encoder
        self.index = index
        self.corpus = corpus
        self._filter = RowFilter(stage.config.filter)

    def rebind(self, env: Environment) -> DenseSearch:
        """The same stage on another corpus, with this binding's encoder (no model load)."""
        return DenseSearch(self.stage, *self.stage._load(env, self.encoder))

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]] = ()) -> list[Ranking]:
        cfg = self.stage.config
        out: list[Ranking] = [Ranking.empty()] * len(queries)
        live = []
        for pos, (qid, text) in enumerate(queries):
            if text and text.strip():
                live.append(pos)
            else:
                warnings.warn(
                    f"Dense query {qid!r} is empty; returning an empty ranking.", EmptyQueryWarning, stacklevel=2
                )
        # Each query is encoded and searched on its own, in batch mode too: a padded batch of queries
        # and a many-vector FAISS search round scores differently in the last float bit, which flips
        # exact ties, and online and batch runs must give the same rankings. The thread count is the
        # policy's, from the stage's `intra_op_threads` (one).
        for pos in live:
            allowed = self._filter.allowed(self.corpus, queries.filter_of(pos))
            if allowed is not None and not allowed.any():
                continue  # nothing is allowed: an empty ranking, not an error
            vector = self.encoder.encode_query(queries.texts[pos])
            scores, rows = self.index.search(vector, cfg.k, ef_search=cfg.ef_search, nprobe=cfg.nprobe, allowed=allowed,
                                             rescore_multiplier=cfg.rescore_multiplier)
            found = rows[0] >= 0
            out[pos] = Ranking.from_scores(rows[0][found], scores[0][found], k=cfg.k)
        return out


class SegmentedDenseSearch:
    """A `DenseRetriever` bound to a segmented corpus: the encoder, one index per segment, the masks."""

    def __init__(self, stage: DenseRetriever, encoder: Encoder, indexes: list[DenseIndex], corpus: SegmentedCorpus):
        self.stage = stage
        self.encoder = encoder
        self.indexes = indexes
        self.corpus = corpus
        self._filter = RowFilter(stage.config.filter)

    def rebind(self, env: Environment) -> DenseSearch | SegmentedDenseSearch:
        """The same stage on another generation, with this binding's encoder (no model load)."""
        if isinstance(env.corpus, SegmentedCorpus):
            return self.stage._bind_segments(env, self.encoder)
        return DenseSearch(self.stage, *self.stage._load(env, self.encoder))

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]] = ()) -> list[Ranking]:
        out: list[Ranking] = []
        for pos, (qid, text) in enumerate(queries):  # one query at a time, as DenseSearch (same floats)
            if not (text and text.strip()):
                warnings.warn(f"Dense query {qid!r} is empty; returning an empty ranking.", EmptyQueryWarning, stacklevel=2)
                out.append(Ranking.empty())
                continue
            out.append(self.search_vector(None, queries.filter_of(pos), text=text))
        return out

    def search_vector(self, vector: np.ndarray | None, query_filter: dict[str, Any] | None, *, text: str = "") -> Ranking:
        """The top k for one query vector (None: `text` encoded here), among the rows `query_filter`
        allows: a sharded collection's coordinator encodes a query once and sends every shard its vector."""
        cfg = self.stage.config
        masks = [segment_mask(self._filter, part, query_filter) for part in self.corpus.parts]
        if all(m is not None and not m.any() for m in masks):
            return Ranking.empty()
        if vector is None:
            vector = self.encoder.encode_query(text)
        # Rescoring: the N x k candidates are chosen over all segments by the codes (score, then tie key),
        # as one index over the live rows would choose them, and only then re-scored with the float vectors.
        rescore = cfg.rescore_multiplier if all(ix.rescore_vectors is not None for ix in self.indexes) else None
        wide = cfg.k * rescore if rescore else cfg.k
        found = []
        for part, index, mask in zip(self.corpus.parts, self.indexes, masks):
            if mask is not None and not mask.any():
                continue
            scores, rows = index.search(vector, wide, ef_search=cfg.ef_search, nprobe=cfg.nprobe, allowed=mask)
            keep = rows[0] >= 0
            local = rows[0][keep]
            found.append((local + part.offset, scores[0][keep], part.corpus.keys[local]))
        if not rescore:
            return Ranking(*merge_top(found, cfg.k))
        chosen, _ = merge_top(found, wide)
        rescored = []
        for part, index in zip(self.corpus.parts, self.indexes):
            local = chosen[(chosen >= part.offset) & (chosen < part.offset + len(part.corpus))] - part.offset
            if len(local):
                rescored.append((local + part.offset, index.exact_scores(vector, local), part.corpus.keys[local]))
        return Ranking(*merge_top(rescored, cfg.k))
