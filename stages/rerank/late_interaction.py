"""`LateInteractionReranker`: a ColBERT-style rerank stage (MaxSim over token embeddings).

In a graph (YAML `type: late_interaction`) it takes one upstream ranking per query, and scores the top
`depth` candidates by MaxSim: the query and each passage (title + text) are encoded *separately* into
one L2-normalised vector per token (a Hugging Face encoder, then the model's linear projection), and a
passage's score is the sum, over the query's tokens, of the best dot product with any of its tokens.
It returns the best `k` (ties by chunk key in a collection, else by corpus row), blended with the
upstream ranking like the cross-encoder (`blend`, `blend_upstream`; pure MaxSim by default), with the
same provenance (`model_score` per candidate).

Because passages are encoded without the query, their token embeddings are kept, in `token_dtype`
(float16 by default: half the bytes, every score within `query tokens x 2**-11` of float32's):

* in a collection, per chunk in the segments (`stagegraph.stages.rerank.token_store`): the stage
  declares `indexes_corpus`, so the writer encodes each new segment's chunks when it publishes a
  generation and readers memory-map the stores; reranking a pool then costs only the query's
  encoding and the MaxSim, in every process, from the first query on. A reader of a collection built
  without this stage (no store for a segment) encodes that segment's candidates as below.
* otherwise, in an in-process cache keyed by (model, document length, prefix, dtype, passage text),
  shared by every stage and binding of the same model in the process (`token_cache: memory`,
  bounded by `token_cache_size` passages; `off` encodes every time).

The model (a Hugging Face encoder with an optional `1_Dense/` projection, the layout PyLate saves)
is loaded and run by `stagegraph.stages.rerank.token_encoder`. Not done (said in docs/late-interaction.md): query expansion with [MASK] tokens,
the punctuation skip-list of documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from stagegraph.corpora.segmented import SegmentedCorpus
from stagegraph.corpora.types import Corpus, Queries
from stagegraph.errors import StageError
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.registry import register
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import StageBase
from stagegraph.stages.rerank.blend import BlendSpec
from stagegraph.stages.rerank.cross_encoder import check_depth, finish
from stagegraph.stages.rerank.model import model_fingerprint
from stagegraph.stages.rerank.token_encoder import TokenEncoder, load_token_encoder, maxsim
from stagegraph.stages.rerank.token_store import TokenStore, encode_through_cache, load_store, save_store, store_key
from stagegraph.stages.retrieve.segments import LoadedCache

#: Settings that change speed but never a score: left out of the fingerprint (the cache key).
PERF_ONLY = {"name", "batch_size", "device", "token_cache", "token_cache_size"}


class LateInteractionConfig(StageConfig):
    #: a local model directory (or a name found in the local Hugging Face cache); required
    model: str
    depth: int = Field(100, ge=1)
    k: int = Field(10, ge=1)
    #: tokens kept of the query and of each passage (ColBERT's defaults)
    query_length: int = Field(32, ge=2, le=8192)
    document_length: int = Field(180, ge=2, le=8192)
    batch_size: int = Field(32, ge=1)
    #: auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda, cuda:N
    device: str = "auto"
    #: alpha of the blend with the upstream ranking (1.0: pure MaxSim)
    blend: float = Field(1.0, ge=0.0, le=1.0)
    blend_upstream: Literal["score", "rank"] = "rank"
    #: passages' token embeddings kept in memory, per process, keyed by model and passage text
    token_cache: Literal["memory", "off"] = "memory"
    token_cache_size: int = Field(200_000, ge=1)
    #: the passages' token embeddings as kept and stored (float16: half the bytes of float32)
    token_dtype: Literal["float16", "float32"] = "float16"


@dataclass
class LateInteractionStats:
    """Counts since the stage was bound: candidates scored, passages encoded, passages from the
    in-process cache, passages read from a collection's token stores."""

    pairs: int = 0
    encoded: int = 0
    cached: int = 0
    stored: int = 0


#: segments' token stores opened in this process (a segment never changes): each generation reuses them
_STORES: LoadedCache = LoadedCache()
@register
class LateInteractionReranker(StageBase):
    """The late-interaction rerank stage (a value; `bind(env)` gives the `LateInteractionRerank` that runs)."""

    type_name = "late_interaction"
    Config = LateInteractionConfig
    arity = Arity.ONE
    indexes_corpus = True  # in a collection: each segment's token store, built by the writer
    libraries = ("torch", "transformers")
    speed_only = frozenset(PERF_ONLY)
    config: LateInteractionConfig

    def __init__(self, model: str | None = None, *, depth: int = 100, k: int = 10, query_length: int = 32,
                 document_length: int = 180, batch_size: int = 32, device: str = "auto", blend: float = 1.0,
                 blend_upstream: Literal["score", "rank"] = "rank", token_cache: Literal["memory", "off"] = "memory",
                 token_cache_size: int = 200_000, token_dtype: Literal["float16", "float32"] = "float16",
                 name: str | None = None):
        fields: dict[str, Any] = dict(
            name=name, depth=depth, k=k, query_length=query_length, document_length=document_length,
            batch_size=batch_size, device=device, blend=blend, blend_upstream=blend_upstream,
            token_cache=token_cache, token_cache_size=token_cache_size, token_dtype=token_dtype)
        if model is not None:
            fields["model"] = model
        self.config = self.make_config(**fields)

    @classmethod
    def from_config(cls, config: LateInteractionConfig) -> LateInteractionReranker:
        return cls._of_config(config)

    def check_inputs(self, upstream: Sequence[tuple[str, int | None]]) -> None:
        """At composition: the depth scored cannot exceed what the upstream step returns."""
        check_depth(self.config.depth, upstream)

    def artefact_fingerprint(self) -> str:
        return model_fingerprint(self.config.model)

    def bind(self, env: Environment) -> LateInteractionRerank:
        model = load_token_encoder(self.config.model, self.config.device)
        return LateInteractionRerank(self, model, env, self._stores(env, model))

    def _stores(self, env: Environment, model: TokenEncoder) -> list[TokenStore | None] | None:
        """Over a collection's segments: each segment's token store, opened, or built and saved where the
        environment may write (the writer at commit); None for a segment a reader finds without one."""
        if not isinstance(env.corpus, SegmentedCorpus):
            return None
        cfg = self.config
        identity = model_fingerprint(cfg.model)
        namespace = f"late-interaction:{identity}:{cfg.document_length}:{model.document_prefix}:{cfg.token_dtype}"
        stores: list[TokenStore | None] = []
        for part in env.corpus.parts:
            fingerprint = part.corpus.fingerprint
            directory = env.artefact_dir("late_interaction", store_key(fingerprint, identity, cfg.document_length,
                                                                       model.document_prefix, cfg.token_dtype))
            store = _STORES.get((str(directory), fingerprint))
            if store is None:
                store = load_store(directory, fingerprint)
            if store is None and not env.read_only:
                texts = part.corpus.doc_texts()

                def encode(batch: list[str]) -> list[np.ndarray]:
                    return model.encode(batch, cfg.document_length, cfg.batch_size, model.document_prefix,
                                        progress=env.progress, label=f"{self.name}: token embeddings")

                if env.text_cache is not None:  # encode only the texts the collection has not seen
                    embeddings, _ = encode_through_cache(encode, texts, env.text_cache, namespace,
                                                         dim=model.dim, dtype=cfg.token_dtype)
                else:
                    embeddings = [e.astype(cfg.token_dtype) for e in encode(texts)]
                save_store(directory, embeddings, fingerprint=fingerprint, dim=model.dim, dtype=cfg.token_dtype)
                store = load_store(directory, fingerprint)
            if store is not None:
                _STORES.put((str(directory), fingerprint), store)
            stores.append(store)
        return stores

    @property
    def stats(self) -> LateInteractionStats:
        return self.bound.stats

    def score_rows(self, query: str, rows: Sequence[int]) -> np.ndarray:
        """`LateInteractionRerank.score_rows` of the stage as `warm_up` bound it."""
        return self.bound.score_rows(query, rows)


class LateInteractionRerank:
    """A `LateInteractionReranker` bound to one corpus: the loaded model, the passages, the counts."""

    def __init__(self, stage: LateInteractionReranker, model: TokenEncoder, env: Environment,
                 stores: list[TokenStore | None] | None = None):
        self.stage = stage
        self.model = model
        self.corpus: Corpus = env.corpus
        self.tie_keys = getattr(env.corpus, "tie_keys", None)
        self.stats = LateInteractionStats()
        self.stores = stores
        if stores is not None:
            self._starts = np.array([part.offset for part in env.corpus.parts], dtype=np.int64)

    @property
    def name(self) -> str:
        return self.stage.name

    def rebind(self, env: Environment) -> LateInteractionRerank:
        """The same stage on another corpus or generation, sharing the loaded model, its passage cache
        and the token stores of the segments it kept."""
        return LateInteractionRerank(self.stage, self.model, env, self.stage._stores(env, self.model))

    def close(self) -> None:
        pass

    def _encoded(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Passages' token embeddings, encoded (or from the in-process cache when it is on)."""
        config = self.stage.config
        found, encoded = self.model.documents(list(texts), config.document_length, config.batch_size,
                                              config.token_cache == "memory", config.token_cache_size,
                                              config.token_dtype)
        self.stats.encoded += encoded
        self.stats.cached += len(texts) - encoded
        return found

    def _query(self, query: str) -> np.ndarray:
        config = self.stage.config
        return self.model.encode([query], config.query_length, 1, self.model.query_prefix)[0]

    def score_texts(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """MaxSim scores of passages `texts` for `query` (through the passage cache when it is on)."""
        self.stats.pairs += len(texts)
        return maxsim(self._query(query), self._encoded(texts))

    def score_rows(self, query: str, rows: Sequence[int]) -> np.ndarray:
        """MaxSim scores of corpus `rows` (title + text) for one query, no blend: token embeddings from
        the segments' stores where the collection has them, encoded otherwise."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.stores is None:
            return self.score_texts(query, [self.corpus.doc_text(int(r)) for r in rows])
        docs: list[np.ndarray | None] = [None] * len(rows)
        parts = np.searchsorted(self._starts, rows, side="right") - 1
        for i, (row, part) in enumerate(zip(rows.tolist(), parts.tolist())):
            store = self.stores[part]
            if store is not None:
                docs[i] = store[row - int(self._starts[part])]
        missing = [i for i, d in enumerate(docs) if d is None]
        if missing:
            for i, emb in zip(missing, self._encoded([self.corpus.doc_text(int(rows[i])) for i in missing])):
                docs[i] = emb
        self.stats.stored += len(rows) - len(missing)
        self.stats.pairs += len(rows)
        return maxsim(self._query(query), docs)  # type: ignore[arg-type]

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        if len(inputs) != 1:
            raise StageError(f"stage {self.name!r} reranks one candidate list per query, got {len(inputs)} inputs")
        config = self.stage.config
        blend = BlendSpec(alpha=config.blend, upstream=config.blend_upstream)
        out = []
        for text, ranking in zip(queries.texts, inputs[0]):
            pool = ranking.top(config.depth)
            scores = self.score_rows(text, pool.doc_rows)
            out.append(finish(pool, scores, blend, config.k, self.name, self.tie_keys))
        return out
