"""`CrossEncoderReranker`: the cross-encoder rerank stage, and the course chapter's reranker.

In a graph (YAML `type: cross_encoder`) it takes one upstream ranking per query, scores the top
`depth` candidates on title + text against the query, and returns the best `k` by cross-encoder
score (ties by corpus row). Where the time goes, and what it does about it:

* pairs are tokenised once and sorted by token length into batches of `batch_size`, so batches pad
  little (`stagegraph.stages.rerank.model.pad_batches`); in batch mode the pairs of *all* queries share batches;
* an optional score cache keyed by (scorer identity, query text, document id), in memory or in
  SQLite under `work_dir/rerank_scores/`, so a re-run or a depth sweep never scores a pair twice
  (`score_cache: disk`); off by default, because a cached pair would make online latency lie;
* torch's threads are the executor's (`stagegraph.pipeline.threads`), ONNX Runtime sessions use every
  core the process may run on (their own pool, without spinning); `backend` picks torch fp32, ONNX
  Runtime fp32 or ONNX int8 (dynamic quantisation, see `stagegraph.stages.rerank.onnx`); `device` (torch
  backend; default `auto`: a CUDA GPU when torch sees one, else the CPU) is where the model runs.
* `blend` (see `stagegraph.stages.rerank.blend`) mixes in the upstream ranking; by default it is read from the
  model directory, where `train-reranker` saves the alpha it chose on held-out queries.
* `backend: torch-bf16` runs torch under bfloat16 autocast; `backend: auto` picks, at warm-up, the
  fastest backend this CPU supports whose nDCG@10 on the model's held-out calibration queries is
  within 0.005 of torch fp32's (`stagegraph.stages.rerank.calibration`); `backend_choice` says which
  and why (also logged at warm-up).
* `adaptive_depth` (off by default) chooses the depth per query: candidates are scored in blocks from
  the top and scoring stops when the last block falls short of the top k
  (`stagegraph.stages.rerank.depth`); `depth` is then the most it scores. `last_depths` holds the
  depth each query of the last `run` got.

The stage is a value: `bind(env)` loads the model (`scorers.load_scoring`: scorer, blend, depth margin,
the backend `auto` chose; a `max_length` beyond the model's position embeddings is refused here,
with the fix) and returns a `CrossEncoderRerank`, which holds the corpus, the score cache and the
counts (`stats`, `last_depths`). A collection's next generation rebinds and shares the loaded model.

Stages compose into cascades like any others: `pool >> CrossEncoderReranker(small, depth=100, k=30,
name="small") >> CrossEncoderReranker(large, depth=30, k=10, name="large")`; each stage is timed and
cached on its own, and the last one's provenance keeps both rerankers' traces.

Outside a graph, the chapter's usage works unchanged::

    reranker = CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L-6-v2", max_length=512)
    top = reranker.rerank("what is a gguf file?", [{"text": "...", "source": "a.md"}, ...], top_k=10)

`rerank` returns copies of the candidate dicts, each with a float `cross_encoder_score`, best first;
the model loads on the first call and stays with the stage value for the next ones.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.errors import InputError, StageError
from stagegraph.hashing import stable_hash
from stagegraph.pipeline.ranking import Ranking, StepTrace
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import StageBase
from stagegraph.pipeline.registry import register
from stagegraph.stages.rerank.blend import BlendSpec, blend_scores
from stagegraph.stages.rerank.calibration import BackendChoice
from stagegraph.stages.rerank.cpu import cpu_features
from stagegraph.stages.rerank.depth import AdaptiveDepth, block_ends, should_stop
from stagegraph.stages.rerank.score_cache import ScoreCache
from stagegraph.stages.rerank.scorers import Scoring, load_scoring, resolve_blend, scorer_key
from stagegraph.stages.rerank.model import (
    DEFAULT_MODEL, model_fingerprint,
)

Backend = Literal["torch", "torch-bf16", "onnx", "onnx-int8", "auto"]
#: Settings that change speed but never a score: left out of the fingerprint (the cache key).
PERF_ONLY = {"name", "batch_size", "score_cache", "device"}


class CrossEncoderConfig(StageConfig):
    retired: ClassVar[dict[str, str]] = {
        "threads": "the executor sets torch's threads (stagegraph.pipeline.threads); ONNX sessions use every core"
    }

    model: str = DEFAULT_MODEL
    max_length: int = Field(512, ge=8, le=8192)
    depth: int = Field(100, ge=1)
    k: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    backend: Backend = "torch"
    #: torch backend: auto (a CUDA GPU when torch sees one, else MPS, else CPU), cpu, cuda, cuda:N, mps.
    #: The ONNX backends always run on the CPU.
    device: str = "auto"
    #: alpha of the blend with the upstream ranking; None = the model's saved choice, else 1.0 (pure CE).
    blend: float | None = Field(None, ge=0.0, le=1.0)
    blend_upstream: Literal["score", "rank"] | None = None
    #: Off by default: a pair served from the score cache costs nothing, so online latencies would
    #: no longer measure the model. Turn it on ("disk") for quality-only sweeps and re-runs.
    score_cache: Literal["disk", "memory", "off"] = "off"
    #: Per-query depth (off by default): score blocks from the top, stop when the rest are unlikely
    #: to enter the top k; `depth` is then the most scored (see stagegraph.stages.rerank.depth).
    adaptive_depth: AdaptiveDepth | None = None


@dataclass
class RerankStats:
    """Counts since the stage was bound: pairs asked for, scored by the model, served by the cache."""

    pairs: int = 0
    scored: int = 0
    cached: int = 0


def check_depth(depth: int, upstream: Sequence[tuple[str, int | None]]) -> None:
    """A rerank stage's composition check: the `depth` it scores cannot exceed what its upstream returns."""
    name, limit = upstream[0]
    if limit is not None and depth > limit:
        raise InputError(
            f"depth={depth} candidates are to be reranked but {name!r} returns at most {limit}; "
            f"set depth <= {limit}, or raise {name}'s k"
        )


@register
class CrossEncoderReranker(StageBase):
    """The cross-encoder rerank stage (a value; `bind(env)` gives the `CrossEncoderRerank` that runs),
    and the course chapter's reranker (`rerank`, `predict`), which loads its model on first use."""

    type_name = "cross_encoder"
    Config = CrossEncoderConfig
    arity = Arity.ONE
    libraries = ("torch", "transformers", "sentence-transformers", "onnxruntime")
    speed_only = frozenset(PERF_ONLY)
    config: CrossEncoderConfig

    def __init__(
        self,
        model_name: str | None = None,
        max_length: int = 512,
        *,
        model: str | None = None,
        depth: int = 100,
        k: int = 10,
        batch_size: int = 16,
        backend: Backend = "torch",
        device: str = "auto",
        blend: float | None = None,
        blend_upstream: Literal["score", "rank"] | None = None,
        score_cache: Literal["disk", "memory", "off"] = "off",
        adaptive_depth: AdaptiveDepth | dict[str, Any] | None = None,
        name: str | None = None,
    ):
        if model_name is not None and model is not None and model_name != model:
            raise InputError(f"give the model once: model_name={model_name!r} and model={model!r} differ")
        self.config = self.make_config(
            name=name, model=model_name or model or DEFAULT_MODEL, max_length=max_length, depth=depth, k=k,
            batch_size=batch_size, backend=backend, device=device, blend=blend,
            blend_upstream=blend_upstream, score_cache=score_cache, adaptive_depth=adaptive_depth,
        )

    @classmethod
    def from_config(cls, config: CrossEncoderConfig) -> CrossEncoderReranker:
        return cls._of_config(config)

    @property
    def model_name(self) -> str:
        return self.config.model

    def check_inputs(self, upstream: Sequence[tuple[str, int | None]]) -> None:
        """At composition: the depth scored cannot exceed what the upstream step returns."""
        check_depth(self.config.depth, upstream)

    # -- identity -------------------------------------------------------------------------------
    def artefact_fingerprint(self) -> str:
        identity = model_fingerprint(self.config.model)
        if self.config.backend == "auto":  # what auto resolves to depends on the CPU it runs on
            return stable_hash({"model": identity, "cpu": list(cpu_features().flags)})
        return identity

    # -- binding --------------------------------------------------------------------------------
    def bind(self, env: Environment) -> CrossEncoderRerank:
        scoring = load_scoring(self.config, self.name, Path(env.work_dir), read_only=env.read_only, progress=env.progress)
        return CrossEncoderRerank(self, scoring, env)

    # -- direct use: the chapter's interface and the stage warmed for `run` ----------------------
    def _scoring(self) -> Scoring:
        """The model for direct use (`rerank`, `predict`): what `warm_up` bound, else loaded once here."""
        direct = self.__dict__.get("_direct")
        if direct is not None:
            return direct.scoring
        with self.__dict__.setdefault("_load_lock", threading.Lock()):
            scoring = self.__dict__.get("_own_scoring")
            if scoring is None:
                scoring = self.__dict__["_own_scoring"] = load_scoring(self.config, self.name, Path(".stagegraph"))
        return scoring

    @property
    def backend(self) -> str:
        """The backend in force: the configured one, or what `auto` resolved to when loaded."""
        direct = self.__dict__.get("_direct")
        return direct.scoring.backend if direct is not None else self.config.backend

    @property
    def backend_choice(self) -> BackendChoice | None:
        """What `backend: auto` chose for the stage as `warm_up` bound it (None for a fixed backend)."""
        direct = self.__dict__.get("_direct")
        return direct.scoring.backend_choice if direct is not None else None

    @property
    def blend(self) -> BlendSpec:
        """The blend in force (the model's saved choice unless the config sets one)."""
        direct = self.__dict__.get("_direct")
        return direct.scoring.blend if direct is not None else resolve_blend(self.config)

    @property
    def stats(self) -> RerankStats:
        """Counts of the stage as `warm_up` bound it."""
        return self.bound.stats

    @property
    def last_depths(self) -> list[int]:
        """The depth each query of the last direct `run` was scored to."""
        return self.bound.last_depths

    def scorer_key(self) -> str:
        """Identity of the scores themselves: the model, the truncation and the numeric backend."""
        return scorer_key(self.config, self.backend)

    def score_rows(self, query: str, rows: Sequence[int]) -> np.ndarray:
        """`CrossEncoderRerank.score_rows` of the stage as `warm_up` bound it."""
        return self.bound.score_rows(query, rows)

    def pair_lengths(self, query: str, rows: Sequence[int]) -> np.ndarray:
        """`CrossEncoderRerank.pair_lengths` of the stage as `warm_up` bound it."""
        return self.bound.pair_lengths(query, rows)

    def rerank(self, query: str, candidates: Sequence[Mapping[str, Any]], top_k: int | None = 10) -> list[dict[str, Any]]:
        """Copies of `candidates` with a float `cross_encoder_score`, highest first, cut to `top_k`.

        Each candidate is a dict with a `text` (or `content`) field plus any metadata; the inputs are
        not modified. The model loads on the first call.
        """
        return rerank_candidates(self._scoring().scorer, query, candidates, top_k)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query, passage) pairs, the values `CrossEncoder.predict` gives, faster."""
        return self._scoring().scorer.score([p[0] for p in pairs], [p[1] for p in pairs])


def rerank_candidates(scorer: Any, query: str, candidates: Sequence[Mapping[str, Any]], top_k: int | None) -> list[dict[str, Any]]:
    """The chapter's `rerank`: copies of `candidates` with a `cross_encoder_score`, best first."""
    texts = [_candidate_text(i, c) for i, c in enumerate(candidates)]
    if not texts:
        return []
    scores = scorer.score([query] * len(texts), texts)
    order = np.lexsort((np.arange(len(texts)), -scores))
    if top_k is not None:
        order = order[: max(int(top_k), 0)]
    return [{**dict(candidates[i]), "cross_encoder_score": float(scores[i])} for i in order]


class CrossEncoderRerank:
    """A `CrossEncoderReranker` bound to one corpus: the loaded model (`scoring`), the passages, the
    score cache, and the counts of what it scored (`stats`, `last_depths`)."""

    def __init__(self, stage: CrossEncoderReranker, scoring: Scoring, env: Environment):
        self.stage = stage
        self.scoring = scoring
        self.corpus: Corpus = env.corpus
        #: a collection's chunk keys: equal final scores ordered by key, so the order of ties does not
        #: depend on where chunks are stored (segments, shards); None: by row
        self.tie_keys = getattr(env.corpus, "tie_keys", None)
        self.progress = env.progress
        self.stats = RerankStats()
        #: The depth each query of the last `run` was scored to.
        self.last_depths: list[int] = []
        self.cache: ScoreCache | None = None
        mode = stage.config.score_cache
        if mode != "off":
            path = None
            if mode == "disk":
                key = f"{scorer_key(stage.config, scoring.backend)[:16]}-{env.corpus.fingerprint[:12]}.sqlite"
                path = env.artefact_dir("rerank_scores", key)
            self.cache = ScoreCache(path)

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def model_name(self) -> str:
        return self.stage.config.model

    def rebind(self, env: Environment) -> CrossEncoderRerank:
        """The same stage on another corpus, sharing this binding's loaded model."""
        return CrossEncoderRerank(self.stage, self.scoring, env)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query, passage) pairs with this binding's model."""
        return self.scoring.scorer.score([p[0] for p in pairs], [p[1] for p in pairs])

    def close(self) -> None:
        closer = getattr(self.cache, "close", None)
        if callable(closer):
            closer()

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        if len(inputs) != 1:
            raise StageError(f"stage {self.name!r} reranks one candidate list per query, got {len(inputs)} inputs")
        config = self.stage.config
        corpus, depth, k = self.corpus, config.depth, config.k
        pools = [r.top(depth) for r in inputs[0]]
        ids = [[corpus.ids[int(r)] for r in p.doc_rows] for p in pools]
        scores = [np.full(len(p), np.nan, dtype=np.float32) for p in pools]
        texts = queries.texts
        policy = config.adaptive_depth
        if policy is None:
            used = [len(p) for p in pools]
            self._fill(texts, pools, ids, scores, [(i, 0, n) for i, n in enumerate(used)])
        else:  # block by block, every query still going scored together (all of them in batch mode)
            ends = [block_ends(len(p), policy.block, policy.min_depth) for p in pools]
            used = [e[0] for e in ends]
            self._fill(texts, pools, ids, scores, [(i, 0, n) for i, n in enumerate(used)])
            active = [i for i, e in enumerate(ends) if len(e) > 1]
            j = 1
            while active:
                self._fill(texts, pools, ids, scores, [(i, ends[i][j - 1], ends[i][j]) for i in active])
                going = []
                for i in active:
                    used[i] = ends[i][j]
                    if not should_stop(scores[i], ends[i][j - 1], ends[i][j], k, self.scoring.margin) and j + 1 < len(ends[i]):
                        going.append(i)
                active, j = going, j + 1
        self.last_depths = list(used)
        blend = self.scoring.blend
        return [finish(pool.top(n), s[:n], blend, k, self.name, self.tie_keys) for pool, s, n in zip(pools, scores, used)]

    def _fill(self, texts, pools, ids, scores, requests) -> None:
        """Score positions [lo, hi) of query i's pool for every (i, lo, hi), from the cache where it has them."""
        corpus = self.corpus
        todo: dict[tuple[str, int], int] = {}
        asked = 0
        for i, lo, hi in requests:
            if hi <= lo:
                continue
            asked += hi - lo
            if self.cache is not None:
                scores[i][lo:hi] = self.cache.lookup(texts[i], ids[i][lo:hi])
            for j in range(lo, hi):
                if np.isnan(scores[i][j]):
                    todo.setdefault((texts[i], int(pools[i].doc_rows[j])), len(todo))
        pairs = list(todo)
        new = self.scoring.scorer.score([q for q, _ in pairs], [corpus.doc_text(r) for _, r in pairs],
                                        progress=self.progress and len(requests) > 1)
        if self.cache is not None and pairs:
            self.cache.store([q for q, _ in pairs], [corpus.ids[r] for _, r in pairs], new)
        missing = 0
        for i, lo, hi in requests:
            for j in range(lo, hi):
                if np.isnan(scores[i][j]):
                    missing += 1
                    scores[i][j] = new[todo[(texts[i], int(pools[i].doc_rows[j]))]]
        self.stats.pairs += asked
        self.stats.scored += len(pairs)
        self.stats.cached += asked - missing

    def score_rows(self, query: str, rows: Sequence[int]) -> np.ndarray:
        """Model scores of corpus `rows` (title + text) for one query: no cache, no blend (for tuning)."""
        rows = [int(r) for r in rows]
        return self.scoring.scorer.score([query] * len(rows), [self.corpus.doc_text(r) for r in rows])

    def pair_lengths(self, query: str, rows: Sequence[int]) -> np.ndarray:
        """Token count of each (query, row) pair as the scorer truncates it (for pricing a subset of a batch)."""
        from stagegraph.stages.rerank.model import tokenize_pairs

        scorer = self.scoring.scorer
        texts = [self.corpus.doc_text(int(r)) for r in rows]
        encoded = tokenize_pairs(scorer.tokenizer, [query] * len(texts), texts, scorer.max_length)
        return np.fromiter((len(x) for x in encoded["input_ids"]), dtype=np.int64, count=len(texts))


def finish(pool: Ranking, model_scores: np.ndarray, blend: BlendSpec, k: int, name: str,
           tie_keys: Any = None) -> Ranking:
    """The stage's output for one query: `pool`'s candidates with their model scores (pool order),
    blended, the best `k`, with the stage's own trace (final, model and upstream scores). Equal final
    scores are ordered by row, or by `tie_keys(rows)` (a collection's chunk keys) when given."""
    scores = np.asarray(model_scores, dtype=np.float32)
    final = blend_scores(scores, pool.scores, blend)
    if tie_keys is None:
        order = Ranking.order(pool.doc_rows, final, k)
    else:
        order = np.lexsort((tie_keys(pool.doc_rows), -final))[: max(k, 0)]
    own = StepTrace.of(final[order], model_score=scores[order], blended_with=pool.scores[order])
    return Ranking(pool.doc_rows[order], final[order], {name: own})


def _candidate_text(index: int, candidate: Any) -> str:
    if not isinstance(candidate, Mapping):
        raise TypeError(
            f"candidate {index} is a {type(candidate).__name__}; each candidate must be a dict with a "
            "'text' or 'content' field"
        )
    for field in ("text", "content"):
        value = candidate.get(field)
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"candidate {index} has a {field!r} of type {type(value).__name__}; it must be a string")
            return value
    raise ValueError(
        f"candidate {index} has neither a 'text' nor a 'content' field (its keys: {sorted(map(str, candidate))}); "
        "put the passage in 'text'"
    )

