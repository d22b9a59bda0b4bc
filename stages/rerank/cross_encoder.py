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

Outside a graph, the chapter's usage works unchanged::

    reranker = CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L-6-v2", max_length=512)
    top = reranker.rerank("what is a gguf file?", [{"text": "...", "source": "a.md"}, ...], top_k=10)

`rerank` returns copies of the candidate dicts, each with a float `cross_encoder_score`, best first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.errors import StageError
from stagegraph.hashing import stable_hash
from stagegraph.pipeline.ranking import Ranking, StepTrace
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.pipeline.threads import usable_cores
from stagegraph.stages.base import StageBase
from stagegraph.pipeline.registry import register
from stagegraph.stages.rerank.blend import BlendSpec, RerankerMetadata, blend_scores
from stagegraph.stages.rerank.score_cache import ScoreCache
from stagegraph.stages.rerank.model import DEFAULT_MODEL, load_cross_encoder, model_fingerprint, read_stagegraph_metadata

Backend = Literal["torch", "onnx", "onnx-int8"]
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


@dataclass
class RerankStats:
    """Counts since the stage was built: pairs asked for, scored by the model, served by the cache."""

    pairs: int = 0
    scored: int = 0
    cached: int = 0


@register
class CrossEncoderReranker(StageBase):
    type_name = "cross_encoder"
    Config = CrossEncoderConfig
    arity = Arity.ONE
    libraries = ("torch", "transformers", "sentence-transformers", "onnxruntime")
    speed_only = frozenset(PERF_ONLY)

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
        name: str | None = None,
    ):
        if model_name is not None and model is not None and model_name != model:
            raise ValueError(f"give the model once: model_name={model_name!r} and model={model!r} differ")
        self.config = CrossEncoderConfig(
            name=name, model=model_name or model or DEFAULT_MODEL, max_length=max_length, depth=depth, k=k,
            batch_size=batch_size, backend=backend, device=device, blend=blend,
            blend_upstream=blend_upstream, score_cache=score_cache,
        )
        self.stats = RerankStats()
        self._scorer: Any = None
        self._cache: ScoreCache | None = None
        self._corpus: Corpus | None = None
        self._blend: BlendSpec | None = None
        self._work_dir = Path(".stagegraph")
        self._progress = False

    @property
    def model_name(self) -> str:
        return self.config.model

    # -- identity -------------------------------------------------------------------------------
    def artefact_fingerprint(self) -> str:
        return model_fingerprint(self.config.model)

    def scorer_key(self) -> str:
        """Identity of the scores themselves: the model, the truncation and the numeric backend."""
        c = self.config
        return stable_hash({"model": self.artefact_fingerprint(), "max_length": c.max_length, "backend": c.backend})

    # -- loading --------------------------------------------------------------------------------
    def warm_up(self, env: Environment) -> None:
        self._corpus = env.corpus
        self._work_dir = Path(env.work_dir)
        self._progress = env.progress
        self._load(progress=env.progress)
        mode = self.config.score_cache
        if mode == "off":
            self._cache = None
        else:
            path = None
            if mode == "disk":
                key = f"{self.scorer_key()[:16]}-{env.corpus.fingerprint[:12]}.sqlite"
                path = env.artefact_dir("rerank_scores", key)
            if self._cache is None or self._cache.path != path:
                self._cache = ScoreCache(path)

    def _load(self, progress: bool = False) -> Any:
        if self._scorer is not None:
            return self._scorer
        c = self.config
        device = c.device if c.backend == "torch" else "cpu"
        cross_encoder = load_cross_encoder(c.model, c.max_length, device=device, progress=progress)
        if c.backend == "torch":
            from stagegraph.stages.rerank.model import TorchScorer

            scorer = TorchScorer(cross_encoder, c.max_length, c.batch_size)
        else:
            from stagegraph.stages.rerank.onnx import OnnxScorer

            scorer = OnnxScorer.build(
                cross_encoder, c.max_length, c.batch_size, quantize=c.backend == "onnx-int8", threads=usable_cores(),
                cache_dir=self._work_dir / "onnx" / model_fingerprint(c.model)[:16], progress=progress,
            )
        self._blend = self._resolve_blend()
        self._scorer = scorer
        return scorer

    def _resolve_blend(self) -> BlendSpec:
        c = self.config
        saved = RerankerMetadata.model_validate(read_stagegraph_metadata(c.model)).blend
        alpha = saved.alpha if c.blend is None else c.blend
        upstream = c.blend_upstream or saved.upstream
        return BlendSpec(alpha=alpha, upstream=upstream)

    @property
    def blend(self) -> BlendSpec:
        """The blend in force (known after loading; before it, what the config and model say)."""
        return self._blend or self._resolve_blend()

    def _score(self, queries: Sequence[str], docs: Sequence[str], progress: bool = False) -> np.ndarray:
        scorer = self._load()
        return scorer.score(queries, docs, progress=progress)

    # -- graph stage ----------------------------------------------------------------------------
    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        if len(inputs) != 1:
            raise StageError(f"stage {self.name!r} reranks one candidate list per query, got {len(inputs)} inputs")
        if self._corpus is None:
            raise StageError(f"stage {self.name!r} needs warm_up(env) before run(): it reads passages from env.corpus")
        corpus, depth = self._corpus, self.config.depth
        rankings = inputs[0]
        pools = [r.top(depth) for r in rankings]
        ids = [[corpus.ids[int(r)] for r in p.doc_rows] for p in pools]
        known = [
            self._cache.lookup(q, d) if self._cache is not None else np.full(len(d), np.nan, dtype=np.float32)
            for q, d in zip(queries.texts, ids)
        ]
        # Unscored pairs of every query, each distinct (query text, doc) once, scored together.
        todo: dict[tuple[str, int], int] = {}
        for q, pool, scores in zip(queries.texts, pools, known):
            for j in np.flatnonzero(np.isnan(scores)).tolist():
                todo.setdefault((q, int(pool.doc_rows[j])), len(todo))
        pairs = list(todo)
        new = self._score([q for q, _ in pairs], [corpus.doc_text(r) for _, r in pairs], progress=self._progress and len(queries) > 1)
        if self._cache is not None and pairs:
            self._cache.store([q for q, _ in pairs], [corpus.ids[r] for _, r in pairs], new)
        n_pairs = sum(len(p) for p in pools)
        self.stats.pairs += n_pairs
        self.stats.scored += len(pairs)
        self.stats.cached += n_pairs - int(sum(np.isnan(s).sum() for s in known))
        blend = self.blend
        out = []
        for q, pool, scores in zip(queries.texts, pools, known):
            missing = np.isnan(scores)
            if missing.any():
                scores = scores.copy()
                scores[missing] = [new[todo[(q, int(r))]] for r in pool.doc_rows[missing]]
            final = blend_scores(scores, pool.scores, blend)
            order = Ranking.order(pool.doc_rows, final, self.config.k)
            # The stage's own trace: its final scores, the model's own and the upstream ones it blended with.
            own = StepTrace.of(final[order], model_score=scores[order], blended_with=pool.scores[order])
            out.append(Ranking(pool.doc_rows[order], final[order], {self.name: own}))
        return out

    # -- the chapter's interface ----------------------------------------------------------------
    def rerank(self, query: str, candidates: Sequence[Mapping[str, Any]], top_k: int | None = 10) -> list[dict[str, Any]]:
        """Copies of `candidates` with a float `cross_encoder_score`, highest first, cut to `top_k`.

        Each candidate is a dict with a `text` (or `content`) field plus any metadata; the inputs are
        not modified. The model loads on the first call.
        """
        texts = [_candidate_text(i, c) for i, c in enumerate(candidates)]
        if not texts:
            return []
        scores = self._score([query] * len(texts), texts)
        order = np.lexsort((np.arange(len(texts)), -scores))
        if top_k is not None:
            order = order[: max(int(top_k), 0)]
        return [{**dict(candidates[i]), "cross_encoder_score": float(scores[i])} for i in order]

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query, passage) pairs, the values `CrossEncoder.predict` gives, faster."""
        return self._score([p[0] for p in pairs], [p[1] for p in pairs])


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

