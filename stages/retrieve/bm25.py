"""The BM25 retrieval stage: queries in, one top-k `Ranking` per query out.

`BM25Retriever(index=None, k=100, name=None, **settings)` where `settings` are the index's
(`variant`, `k1`, `b`, `backend`, `tokenizer`; see `stagegraph.indexes.bm25.BM25Settings`):

* given an index object it uses that index (its settings become the stage's settings);
* otherwise `bind(env)` loads the index saved for `env.corpus` under
  `env.artefact_dir("bm25", key)`, where `key` hashes the corpus fingerprint and the settings,
  and builds and saves it there when it is missing, stale or damaged.

`bind(env)` returns a `BM25Search`: the loaded index, the corpus and the stage's filter masks; the
stage itself stays a value. Over a segmented corpus (a collection: `stagegraph.corpora.segmented`)
it returns a `SegmentedBM25Search` instead: per segment, postings with raw term frequencies
(`stagegraph.indexes.bm25_segments`, under `env.artefact_dir("bm25-segment", key)`, built once
when the segment is new and then only loaded), scored lazily with N, avgdl and document
frequencies of the live chunks of all segments, so results equal a single index over those chunks.
The `rank_bm25` backend has no segmented form (it is a reference); it is refused there. `fingerprint()` hashes the config and, for a given index, the index's
identity (corpus + settings); a stage that builds its own index is fully described by its config
plus the corpus, which the cache key adds. Queries are analysed with the index's own tokenizer;
an empty or stopword-only query gives an empty ranking and an `EmptyQueryWarning`, never an error.
YAML: `{type: bm25, name: bm25, k: 100, k1: 0.9, b: 0.4, tokenizer: {stemmer: english}}`.

`expand: {method: rm3, fb_docs: 10, fb_terms: 10, original_query_weight: 0.5}` (or `method: rocchio`)
adds pseudo-relevance feedback: the stage searches once, builds a weighted query from its top
documents and returns the BM25 ranking of that query (`stagegraph.stages.retrieve.feedback`,
docs/feedback.md); `bound.expanded_query(text)` shows the query. The index is the same.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from stagegraph.corpora.segmented import SegmentedCorpus
from stagegraph.corpora.types import DataError, Queries
from stagegraph.indexes.bm25 import FORMAT_VERSION, BM25Index, BM25Settings, cached_analysis
from stagegraph.indexes.bm25_segments import CorpusStats, GivenStats, SegmentPostings, SegmentSearch, search_segments
from stagegraph.indexes.manifest import IndexLoadError
from stagegraph.errors import StageError
from stagegraph.hashing import stable_hash
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import EmptyQueryWarning, StageBase
from stagegraph.stages.retrieve.feedback import Expansion, FeedbackSource, expand
from stagegraph.stages.retrieve.filtering import RowFilter
from stagegraph.stages.retrieve.segments import LoadedCache, segment_mask
from stagegraph.pipeline.registry import register

log = logging.getLogger(__name__)
SEGMENT_FORMAT = 1
#: segment postings loaded in this process (a segment never changes): each generation reuses them
_LOADED: LoadedCache = LoadedCache()
READ_ONLY_HINT = "build it with the writer: `stagegraph ingest ... --collection DIR` (or `stagegraph index CONFIG --dataset D`)"


class BM25RetrieverConfig(StageConfig, BM25Settings):
    """`k` documents per query, plus the index settings (defaults: Lucene, k1=0.9, b=0.4)."""

    k: int = Field(100, ge=1)
    #: metadata filter applied to every query, before the top k (`stagegraph.corpora.filters`)
    filter: dict[str, Any] | None = None
    #: pseudo-relevance feedback (RM3 or Rocchio): a second, expanded search (None: one search)
    expand: Expansion | None = None

    @model_validator(mode="after")
    def _expand_needs_sparse(self) -> BM25RetrieverConfig:
        if self.expand is not None and self.backend != "sparse":
            raise ValueError(f"expand (query expansion) needs backend: sparse, not {self.backend!r}; "
                             "set backend: sparse or remove expand")
        return self

    def index_settings(self) -> BM25Settings:
        return BM25Settings.model_validate(self.model_dump(include=set(BM25Settings.model_fields)))


def artefact_key(corpus_fingerprint: str, settings: BM25Settings) -> str:
    """Directory name of the index for this corpus and these settings (16 hex digits)."""
    payload = {"corpus": corpus_fingerprint, "settings": settings.model_dump(mode="json"), "format": FORMAT_VERSION}
    return stable_hash(payload)[:16]


@register
class BM25Retriever(StageBase):
    """Top-`k` BM25 retrieval over the whole corpus; starts a chain (no upstream input)."""

    type_name = "bm25"
    Config = BM25RetrieverConfig
    arity = Arity.NONE
    indexes_corpus = True
    searches_segments = True  # over a segmented corpus: per-segment postings, live rows only
    libraries = ("PyStemmer", "rank-bm25")
    config: BM25RetrieverConfig

    def __init__(
        self,
        index: BM25Index | None = None,
        k: int = 100,
        name: str | None = None,
        filter: dict[str, Any] | None = None,
        expand: Expansion | dict[str, Any] | None = None,
        **settings: Any,
    ):
        if index is not None:
            merged = BM25Settings.model_validate({**index.settings.model_dump(), **settings})
            if merged != index.settings:
                raise StageError(
                    f"BM25Retriever settings {settings} differ from those the given index was built with "
                    f"({index.settings.model_dump(mode='json')}); pass no settings with an index, or build a new index."
                )
            settings = index.settings.model_dump()
        self.config = self.make_config(name=name, k=k, filter=filter, expand=expand, **settings)
        #: the index given to the constructor (None: each binding loads or builds its own)
        self.index = index

    @classmethod
    def from_config(cls, config: BM25RetrieverConfig) -> BM25Retriever:
        stage = cls._of_config(config)
        stage.index = None
        return stage

    def artefact_fingerprint(self) -> str:
        return self.index.identity if self.index is not None else ""

    def bind(self, env: Environment) -> BM25Search | SegmentedBM25Search:
        if isinstance(env.corpus, SegmentedCorpus) and self.index is None:
            return SegmentedBM25Search(self, [self._postings_for(env, part) for part in env.corpus.parts], env.corpus)
        return BM25Search(self, self._index_for(env), env.corpus)

    def _postings_for(self, env: Environment, part: Any) -> SegmentSearch:
        """One segment's postings (loaded, or built and saved when the segment is new) and deletion stats."""
        settings = self.config.index_settings()
        if settings.backend != "sparse":
            raise StageError(f"stage {self.name!r}: the {settings.backend!r} backend cannot search a segmented "
                             "collection; use backend: sparse (the default)")
        corpus = part.corpus
        analysis = stable_hash({"tokenizer": settings.tokenizer.model_dump(mode="json"), "format": SEGMENT_FORMAT})
        directory = env.artefact_dir("bm25-segment", stable_hash({"segment": corpus.fingerprint, "analysis": analysis})[:16])
        postings = _LOADED.get((str(directory), corpus.fingerprint))
        if postings is None:
            try:
                postings = SegmentPostings.load(directory, fingerprint=corpus.fingerprint)
            except IndexLoadError as exc:
                env.refuse_build(self.name, f"usable BM25 segment postings at {directory} ({exc})", READ_ONLY_HINT)
                postings = SegmentPostings.build(_analysed(corpus, settings.tokenizer, env.text_cache), corpus.fingerprint)
                postings.save(directory)
            _LOADED.put((str(directory), corpus.fingerprint), postings)
        dead = np.flatnonzero(~part.live) if part.live is not None else np.empty(0, dtype=np.int64)
        return SegmentSearch(postings, postings.deleted_stats(dead), part.live, part.offset, corpus.keys)

    def _index_for(self, env: Environment) -> BM25Index:
        fingerprint = env.corpus.fingerprint
        if self.index is not None:
            if self.index.corpus_fingerprint != fingerprint:
                raise StageError(
                    f"The BM25 index given to stage {self.name!r} was built for another corpus "
                    f"({self.index.corpus_fingerprint[:12]}, this corpus is {fingerprint[:12]}); build it for this "
                    f"corpus with BM25Index.build(corpus), or pass no index and the stage builds its own."
                )
            self.index.warm_up()
            return self.index
        settings = self.config.index_settings()
        directory = env.artefact_dir("bm25", artefact_key(fingerprint, settings))
        try:
            index = BM25Index.load(directory, corpus_fingerprint=fingerprint)
        except IndexLoadError as exc:
            env.refuse_build(self.name, f"usable BM25 index at {directory} ({exc})", READ_ONLY_HINT)
            if directory.exists():
                log.warning("Rebuilding the BM25 index of stage %r: %s", self.name, exc)
            try:
                index = BM25Index.build(env.corpus, settings, progress=env.progress, text_cache=env.text_cache)
            except DataError as exc:
                raise DataError(f"stage {self.name!r}: {exc}") from None
            index.save(directory)
        index.warm_up()
        return index


class SegmentedBM25Search:
    """A `BM25Retriever` bound to a segmented corpus: every segment's postings, statistics of the live rows."""

    def __init__(self, stage: BM25Retriever, segments: list[SegmentSearch], corpus: SegmentedCorpus):
        self.stage = stage
        self.stats = CorpusStats(segments)
        self.corpus = corpus
        self._filter = RowFilter(stage.config.filter)
        self._tokenizer = stage.config.index_settings().tokenizer
        self._doc_terms = _DocTerms(corpus, self._tokenizer)

    # -- a shard of a sharded collection: its statistics out, the collection's in -------------------
    def analyze(self, text: str) -> list[str]:
        return self._tokenizer.analyze(text)

    def totals(self) -> tuple[int, int]:
        """(live chunks, their length total) over this binding's segments."""
        return self.stats.n_docs, self.stats.length_total

    def frequencies(self, terms: list[str]) -> list[int]:
        """The document frequency of each of `terms` among this binding's live chunks."""
        return [self.stats.df(t) for t in terms]

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]] = (), *,
            given: Sequence[tuple[int, int, dict[str, int]]] | None = None, depth: int | None = None,
            weights: Sequence[dict[str, float]] | None = None) -> list[Ranking]:
        """One ranking per query; with `given`, each query is scored with those (N, length total,
        df of its terms) instead of this binding's own: a shard scoring as its whole collection. A
        shard of an expanding stage runs one pass per call for its coordinator, which expands in
        between (`stagegraph.scale.shards`): `depth` (the query as it is, top `depth`) or `weights`
        (each query's weighted query, top k)."""
        cfg = self.stage.config
        if cfg.expand is not None and given is not None and depth is None and weights is None:
            raise StageError(f"stage {self.stage.name!r}: `expand` (query expansion) over one shard would expand from "
                             "that shard's feedback documents and statistics; the coordinator runs its two passes "
                             "(`depth`, then `weights`)")
        out: list[Ranking] = []
        for position, (qid, text) in enumerate(queries):
            terms = self._tokenizer.analyze(text) if weights is None else sorted(weights[position])
            if not terms:
                if weights is None:
                    _warn_empty(qid, text)
                out.append(Ranking.empty())
                continue
            query_filter = queries.filter_of(position)
            masks = [segment_mask(self._filter, part, query_filter) for part in self.corpus.parts]
            stats = self.stats if given is None else GivenStats(self.stats.segments, *given[position])
            if weights is not None:
                rows, scores = search_segments(stats, [], cfg.k, variant=cfg.variant, k1=cfg.k1, b=cfg.b, masks=masks,
                                               weights=weights[position])
            elif cfg.expand is None or depth is not None:
                rows, scores = search_segments(stats, terms, depth or cfg.k, variant=cfg.variant, k1=cfg.k1, b=cfg.b,
                                               masks=masks)
            else:
                expanded = self._expanded(terms, stats, masks)
                rows, scores = search_segments(stats, [], cfg.k, variant=cfg.variant, k1=cfg.k1, b=cfg.b, masks=masks,
                                               weights=expanded)
            out.append(Ranking(rows, scores))
        return out

    def _expanded(self, terms: list[str], stats: Any, masks: list[Any]) -> dict[str, float]:
        cfg = self.stage.config
        rows, scores = search_segments(stats, terms, cfg.expand.first_pass_depth(cfg.k), variant=cfg.variant,
                                       k1=cfg.k1, b=cfg.b, masks=masks)
        source = FeedbackSource(stats.n_docs, stats.df, self._doc_terms)
        return expand(terms, rows, scores, source, cfg.expand)

    def expanded_query(self, text: str) -> dict[str, float]:
        """The weighted query the second pass runs for `text` (`{term: weight}`; the stage's filter applied)."""
        if self.stage.config.expand is None:
            raise StageError(f"stage {self.stage.name!r} has no `expand` setting: it runs queries as they are")
        masks = [segment_mask(self._filter, part, None) for part in self.corpus.parts]
        return self._expanded(self._tokenizer.analyze(text), self.stats, masks)


class BM25Search:
    """A `BM25Retriever` bound to one corpus: its index, and its filter masks for that corpus."""

    def __init__(self, stage: BM25Retriever, index: BM25Index, corpus: Any):
        self.stage = stage
        self.index = index
        self.corpus = corpus
        self._filter = RowFilter(stage.config.filter)
        self._doc_terms = _DocTerms(corpus, index.tokenizer)

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]] = ()) -> list[Ranking]:
        index, k, corpus = self.index, self.stage.config.k, self.corpus
        out: list[Ranking] = []
        for position, (qid, text) in enumerate(queries):
            allowed = self._filter.allowed(corpus, queries.filter_of(position))
            terms = index.tokenizer.analyze(text)
            if not terms:
                _warn_empty(qid, text)
                out.append(Ranking.empty())
                continue
            if self.stage.config.expand is None:
                hits = index.search_terms(terms, k, allowed=allowed)
            else:
                hits = index.search_weighted(self._expanded(terms, allowed), k, allowed=allowed)
            out.append(Ranking(hits.rows, hits.scores))
        return out

    def _expanded(self, terms: list[str], allowed: Any) -> dict[str, float]:
        cfg, index = self.stage.config, self.index
        first = index.search_terms(terms, cfg.expand.first_pass_depth(cfg.k), allowed=allowed)
        source = FeedbackSource(index.n_docs, index.doc_freq, self._doc_terms)
        return expand(terms, first.rows, first.scores, source, cfg.expand)

    def expanded_query(self, text: str) -> dict[str, float]:
        """The weighted query the second pass runs for `text` (`{term: weight}`; the stage's filter applied)."""
        if self.stage.config.expand is None:
            raise StageError(f"stage {self.stage.name!r} has no `expand` setting: it runs queries as they are")
        return self._expanded(self.index.tokenizer.analyze(text), self._filter.allowed(self.corpus, None))


class _DocTerms:
    """A corpus row's analysed terms (feedback documents), the most recent few thousand remembered."""

    def __init__(self, corpus: Any, tokenizer: Any, size: int = 4096):
        self.corpus, self.tokenizer, self.size = corpus, tokenizer, size
        self._seen: dict[int, list[str]] = {}
        self._lock = threading.Lock()  # queries of one bound stage may run on several threads

    def __call__(self, row: int) -> list[str]:
        terms = self._seen.get(row)
        if terms is None:
            terms = self.tokenizer.analyze(self.corpus.doc_text(row))
            with self._lock:
                if len(self._seen) >= self.size:
                    self._seen.pop(next(iter(self._seen)))
                self._seen[row] = terms
        return terms


def _analysed(corpus: Any, tokenizer: Any, cache: Any, block: int = 50_000) -> Any:
    """Each row's terms, in order, a block of rows at a time (read from the text cache where it has
    them): a segment of millions of chunks is analysed without holding every text and term list."""
    for start in range(0, len(corpus), block):
        texts = corpus.doc_texts(range(start, min(len(corpus), start + block)))
        yield from (cached_analysis(texts, tokenizer, cache) if cache is not None else map(tokenizer.analyze, texts))


def _warn_empty(qid: str, text: str) -> None:
    warnings.warn(
        f"BM25 query {qid!r} has no terms after analysis (empty or only stopwords/punctuation: "
        f"{text[:60]!r}); returning an empty ranking.",
        EmptyQueryWarning,
        stacklevel=3,
    )
