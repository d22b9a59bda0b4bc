"""The BM25 retrieval stage: queries in, one top-k `Ranking` per query out.

`BM25Retriever(index=None, k=100, name=None, **settings)` where `settings` are the index's
(`variant`, `k1`, `b`, `backend`, `tokenizer`; see `stagegraph.indexes.bm25.BM25Settings`):

* given an index object it uses that index (its settings become the stage's settings);
* otherwise `bind(env)` loads the index saved for `env.corpus` under
  `env.artefact_dir("bm25", key)`, where `key` hashes the corpus fingerprint and the settings,
  and builds and saves it there when it is missing, stale or damaged.

`bind(env)` returns a `BM25Search`: the loaded index, the corpus and the stage's filter masks; the
stage itself stays a value. `fingerprint()` hashes the config and, for a given index, the index's
identity (corpus + settings); a stage that builds its own index is fully described by its config
plus the corpus, which the cache key adds. Queries are analysed with the index's own tokenizer;
an empty or stopword-only query gives an empty ranking and an `EmptyQueryWarning`, never an error.
YAML: `{type: bm25, name: bm25, k: 100, k1: 0.9, b: 0.4, tokenizer: {stemmer: english}}`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from stagegraph.corpora.types import DataError, Queries
from stagegraph.indexes.bm25 import FORMAT_VERSION, BM25Index, BM25Settings
from stagegraph.indexes.manifest import IndexLoadError
from stagegraph.errors import StageError
from stagegraph.hashing import stable_hash
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, Environment, StageConfig
from stagegraph.stages.base import EmptyQueryWarning, StageBase
from stagegraph.stages.retrieve.filtering import RowFilter
from stagegraph.pipeline.registry import register

log = logging.getLogger(__name__)
READ_ONLY_HINT = "build it with the writer: `stagegraph ingest ... --collection DIR` (or `stagegraph index CONFIG --dataset D`)"


class BM25RetrieverConfig(StageConfig, BM25Settings):
    """`k` documents per query, plus the index settings (defaults: Lucene, k1=0.9, b=0.4)."""

    k: int = Field(100, ge=1)
    #: metadata filter applied to every query, before the top k (`stagegraph.corpora.filters`)
    filter: dict[str, Any] | None = None

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
    libraries = ("PyStemmer", "rank-bm25")
    config: BM25RetrieverConfig

    def __init__(
        self,
        index: BM25Index | None = None,
        k: int = 100,
        name: str | None = None,
        filter: dict[str, Any] | None = None,
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
        self.config = self.make_config(name=name, k=k, filter=filter, **settings)
        #: the index given to the constructor (None: each binding loads or builds its own)
        self.index = index

    @classmethod
    def from_config(cls, config: BM25RetrieverConfig) -> BM25Retriever:
        stage = cls._of_config(config)
        stage.index = None
        return stage

    def artefact_fingerprint(self) -> str:
        return self.index.identity if self.index is not None else ""

    def bind(self, env: Environment) -> BM25Search:
        return BM25Search(self, self._index_for(env), env.corpus)

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


class BM25Search:
    """A `BM25Retriever` bound to one corpus: its index, and its filter masks for that corpus."""

    def __init__(self, stage: BM25Retriever, index: BM25Index, corpus: Any):
        self.stage = stage
        self.index = index
        self.corpus = corpus
        self._filter = RowFilter(stage.config.filter)

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]] = ()) -> list[Ranking]:
        index, k, corpus = self.index, self.stage.config.k, self.corpus
        out: list[Ranking] = []
        for position, (qid, text) in enumerate(queries):
            allowed = self._filter.allowed(corpus, queries.filter_of(position))
            terms = index.tokenizer.analyze(text)
            if not terms:
                warnings.warn(
                    f"BM25 query {qid!r} has no terms after analysis (empty or only stopwords/punctuation: "
                    f"{text[:60]!r}); returning an empty ranking.",
                    EmptyQueryWarning,
                    stacklevel=2,
                )
                out.append(Ranking.empty())
                continue
            hits = index.search_terms(terms, k, allowed=allowed)
            out.append(Ranking(hits.rows, hits.scores))
        return out
