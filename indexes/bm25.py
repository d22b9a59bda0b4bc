"""The persisted BM25 index: settings, build from a `Corpus`, search, and save/load with a manifest.

Defaults are the BEIR / Pyserini baseline: the Lucene variant with k1 = 0.9 and b = 0.4 over
title + text (`Corpus.doc_text`), lower-cased Unicode words, Lucene's English stopwords and the
Snowball English stemmer. Pyserini reports exactly this setting for BEIR ("bm25-flat"); note that
Lucene's own library default is k1 = 1.2, b = 0.75. With these defaults the index reproduces bm25s
(same variant, stopwords and stemmer) to four decimals on SciFact, Cranfield, MED, CACM and NPL;
it differs slightly from Pyserini, whose analyzer is Lucene's StandardTokenizer (which keeps
one-character tokens) with the Porter stemmer, and which stores document lengths in a lossy
one-byte encoding.

Two backends give the same rankings on the same settings (see `indexes/bm25_reference.py` for
the one place they differ, rank-bm25's idf floor under the Robertson variant):

* `sparse` (default): eager scoring, a term-major matrix of precomputed contributions
  (`indexes/bm25_scoring.py`); a query touches only the postings of its terms, in one compiled
  pass when numba is installed (`indexes/bm25_kernels.py`), vectorised numpy otherwise.
* `rank_bm25`: the card's rank-bm25, which scores every document per query; a reference.

An index directory holds `manifest.json` (kind "bm25", format version, settings including the
tokenizer, corpus fingerprint, sizes, library versions, a SHA-256 per file) and the arrays as
`.npy` files, which `load(mmap=True)` maps instead of reading. Writes are atomic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stagegraph.corpora.types import Corpus, DataError
from stagegraph.indexes.bm25_reference import ReferenceSearcher
from stagegraph.indexes.bm25_scoring import SparseScores, SparseSearcher, Variant, keep_allowed, term_frequencies, top_k
from stagegraph.atomic import atomic_dir
from stagegraph.hashing import library_versions, stable_hash
from stagegraph.indexes.manifest import IndexLoadError, Manifest, read_manifest, write_manifest
from stagegraph.indexes.text_cache import TextCache
from stagegraph.indexes.tokenize import TokenizedCorpus, Tokenizer

KIND = "bm25"
FORMAT_VERSION = 1
REBUILD_HINT = (
    "delete the directory and rebuild it (`stagegraph index CONFIG --dataset DATASET`, or "
    "`BM25Index.build(corpus, settings).save(directory)`; a BM25Retriever rebuilds its own index at warm-up)"
)
_SPARSE_FILES = ("indptr", "indices", "data", "doc_lengths")
_REFERENCE_FILES = ("term_ids", "offsets")


class BM25Settings(BaseModel):
    """What defines a BM25 index: scoring variant, k1, b, backend and the tokenizer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Variant = "lucene"
    k1: float = Field(0.9, ge=0.0, description="term-frequency saturation; 0.9 is the BEIR/Pyserini baseline")
    b: float = Field(0.4, ge=0.0, le=1.0, description="length normalisation; 0.4 is the BEIR/Pyserini baseline")
    backend: Literal["sparse", "rank_bm25"] = "sparse"
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)


@dataclass(frozen=True)
class Hits:
    """Top documents of one query: corpus rows (int64) and scores (float32), best first, ties by row."""

    rows: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def _empty_hits() -> Hits:
    return Hits(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


class BM25Index:
    """A BM25 index over one corpus; build it with `build`, reopen it with `load`."""

    def __init__(
        self,
        settings: BM25Settings,
        vocab: list[str],
        corpus_fingerprint: str,
        *,
        scores: SparseScores | None = None,
        doc_lengths: np.ndarray | None = None,
        tokens: TokenizedCorpus | None = None,
    ):
        self.settings = settings
        self.vocab = vocab
        self.term_of = {term: i for i, term in enumerate(vocab)}
        self.corpus_fingerprint = corpus_fingerprint
        if settings.backend == "sparse":
            if scores is None or doc_lengths is None:
                raise ValueError("the sparse backend needs its score matrix and document lengths")
            self._scores = scores
            self._doc_lengths = doc_lengths
            self._sparse = SparseSearcher(scores)
            self._reference = None
            self._tokens = None
        else:
            if tokens is None:
                raise ValueError("the rank_bm25 backend needs the tokenized corpus")
            self._tokens = tokens
            self._doc_lengths = tokens.doc_lengths
            self._reference = ReferenceSearcher(tokens, settings.variant, settings.k1, settings.b)
            self._sparse = None

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        corpus: Corpus,
        settings: BM25Settings | None = None,
        *,
        progress: bool = False,
        text_cache: TextCache | None = None,
        **overrides,
    ) -> BM25Index:
        """Index `corpus` (title + text of every row); keyword `overrides` update `settings`.

        With a `text_cache`, each text's analysis is read from it and only new texts are analysed
        (the statistics are still computed over exactly this corpus)."""
        settings = settings or BM25Settings()
        if overrides:
            settings = BM25Settings.model_validate({**settings.model_dump(), **overrides})
        if text_cache is None:
            texts = (corpus.doc_text(row) for row in range(len(corpus)))
            tokens = settings.tokenizer.tokenize_corpus(texts, progress=progress, total=len(corpus))
        else:
            tokens = TokenizedCorpus.from_token_lists(cached_analysis(corpus.doc_texts(), settings.tokenizer, text_cache))
        return cls.from_tokens(tokens, settings, corpus_fingerprint=corpus.fingerprint)

    @classmethod
    def from_tokens(cls, tokens: TokenizedCorpus, settings: BM25Settings, corpus_fingerprint: str) -> BM25Index:
        """Index an already-analysed corpus (row `d` = document `d`); used by `build` and benchmarks.

        A corpus with no document, or none with a term after analysis, is bad input (`DataError`,
        exit 2 on the command line), not a bug: the message says what to check."""
        if tokens.n_docs == 0:
            raise DataError(
                "cannot build a BM25 index over an empty corpus (0 documents); give the dataset at least one document."
            )
        if len(tokens.term_ids) == 0:
            raise DataError(
                f"cannot build a BM25 index: after analysis no document has any term ({tokens.n_docs} "
                f"document{'s' if tokens.n_docs != 1 else ''}, each empty or only stopwords, punctuation and "
                "one-letter words); check the corpus' title/text fields, or the tokenizer settings (stopwords, pattern)."
            )
        if settings.backend == "rank_bm25":
            return cls(settings, tokens.vocab, corpus_fingerprint, tokens=tokens)
        tf = term_frequencies(tokens.term_ids, tokens.offsets, len(tokens.vocab))
        lengths = tokens.doc_lengths.astype(np.int32)
        scores = SparseScores.build(tf, lengths, settings.variant, settings.k1, settings.b)
        return cls(settings, tokens.vocab, corpus_fingerprint, scores=scores, doc_lengths=lengths)

    # ----------------------------------------------------------------- search
    def warm_up(self) -> None:
        """Do one-off work (compiling the numba kernel) before the first timed query."""
        if self._sparse is not None:
            self._sparse.warm_up()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.settings.tokenizer

    @property
    def n_docs(self) -> int:
        return len(self._doc_lengths)

    @property
    def avgdl(self) -> float:
        return float(np.mean(self._doc_lengths))

    @property
    def identity(self) -> str:
        """Hash of what determines this index's scores: corpus, settings and format version."""
        payload = {"corpus": self.corpus_fingerprint, "settings": self.settings.model_dump(mode="json"),
                   "format": FORMAT_VERSION}
        return stable_hash(payload)

    def search_terms(self, terms: list[str], k: int = 100, allowed: np.ndarray | None = None) -> Hits:
        """Top-`k` for already-analysed query terms (repeats count twice); unknown terms are ignored.

        `allowed` (a bool per document) is a filter applied before the selection: the best `k` among
        allowed documents, scored with the whole index's statistics (as Lucene filters do: a filter
        selects, it does not rescore)."""
        if allowed is not None and not np.any(allowed):
            return _empty_hits()
        if self._reference is not None:
            rows, scores = self._reference.score(terms)
            return Hits(*top_k(*keep_allowed(rows, scores, allowed), k))
        ids: dict[int, int] = {}
        for term in terms:
            tid = self.term_of.get(term)
            if tid is not None:
                ids[tid] = ids.get(tid, 0) + 1
        if not ids:
            return _empty_hits()
        term_ids = np.fromiter(ids.keys(), dtype=np.int64, count=len(ids))
        weights = np.fromiter(ids.values(), dtype=np.float32, count=len(ids))
        return Hits(*self._sparse.top(term_ids, weights, k, allowed))

    def doc_freq(self, term: str) -> int:
        """How many documents hold `term` (0 for a term not in the vocabulary)."""
        tid = self.term_of.get(term)
        if tid is None:
            return 0
        if self._sparse is None:
            raise ValueError("document frequencies need the sparse backend")
        return int(self._scores.indptr[tid + 1] - self._scores.indptr[tid])

    def search_weighted(self, weights: dict[str, float], k: int = 100, allowed: np.ndarray | None = None) -> Hits:
        """Top-`k` for a weighted query, `{term: weight}` (a term's BM25 contribution times its weight,
        Lucene's `BoostQuery`); unknown terms are ignored. `search_terms(terms)` equals this with each
        term weighted by its count. The sparse backend only (query expansion uses it)."""
        if self._sparse is None:
            raise ValueError("weighted queries need the sparse backend")
        if allowed is not None and not np.any(allowed):
            return _empty_hits()
        known = [(self.term_of[t], w) for t, w in weights.items() if t in self.term_of and w != 0]
        if not known:
            return _empty_hits()
        term_ids = np.array([tid for tid, _ in known], dtype=np.int64)
        values = np.array([w for _, w in known], dtype=np.float32)
        return Hits(*self._sparse.top(term_ids, values, k, allowed))

    def search(self, text: str, k: int = 100) -> Hits:
        """Analyse `text` with the index's tokenizer and return its top-`k` documents."""
        return self.search_terms(self.tokenizer.analyze(text), k)

    def search_batch(self, texts: list[str], k: int = 100) -> list[Hits]:
        return [self.search(text, k) for text in texts]

    def __repr__(self) -> str:
        s = self.settings
        return (f"BM25Index({self.n_docs} docs, {len(self.vocab)} terms, variant={s.variant}, k1={s.k1}, b={s.b}, "
                f"backend={s.backend}, corpus={self.corpus_fingerprint[:12]})")

    # ------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to `directory` atomically (an existing index there is replaced whole)."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            (tmp / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
            if self._sparse is not None:
                arrays = {"indptr": self._scores.indptr, "indices": self._scores.indices,
                          "data": self._scores.data, "doc_lengths": self._doc_lengths}
            else:
                arrays = {"term_ids": self._tokens.term_ids, "offsets": self._tokens.offsets}
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.asarray(array), allow_pickle=False)
            manifest = Manifest(
                kind=KIND,
                format_version=FORMAT_VERSION,
                corpus_fingerprint=self.corpus_fingerprint,
                params={"settings": self.settings.model_dump(mode="json"), "n_docs": self.n_docs,
                        "vocab_size": len(self.vocab), "avgdl": self.avgdl},
                libraries=library_versions(["numpy", "scipy", "pystemmer", "rank-bm25"], python=True),
                created_with="stagegraph indexes.bm25",
            )
            write_manifest(tmp, manifest)
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        corpus_fingerprint: str | None = None,
        mmap: bool = True,
        verify: bool = True,
    ) -> BM25Index:
        """Open a saved index; refuse a stale (other corpus), damaged or incompatible one.

        `corpus_fingerprint`: the corpus the caller will use the rows with (checked when given).
        `mmap`: map the arrays read-only instead of reading them into memory.
        `verify`: check every file's SHA-256 against the manifest (reads each file once).
        """
        directory = Path(directory)
        manifest = read_manifest(directory, kind=KIND, format_version=FORMAT_VERSION,
                                 corpus_fingerprint=corpus_fingerprint, verify_checksums=verify,
                                 rebuild_hint=REBUILD_HINT)
        where = f"BM25 index at {directory}"
        try:
            settings = BM25Settings.model_validate(manifest.params["settings"])
        except (KeyError, ValidationError) as exc:
            raise IndexLoadError(f"The {where} has unreadable settings in its manifest ({exc}); {REBUILD_HINT}.") from exc
        try:
            vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
            names = _SPARSE_FILES if settings.backend == "sparse" else _REFERENCE_FILES
            arrays = {n: np.load(directory / f"{n}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                      for n in names}
            if settings.backend == "sparse":
                scores = SparseScores(arrays["indptr"], arrays["indices"], arrays["data"], len(arrays["doc_lengths"]))
                scores.validate()
                if scores.vocab_size != len(vocab):
                    raise ValueError(f"{scores.vocab_size} score columns for {len(vocab)} vocabulary terms")
                index = cls(settings, vocab, manifest.corpus_fingerprint, scores=scores, doc_lengths=arrays["doc_lengths"])
            else:
                tokens = TokenizedCorpus(np.asarray(arrays["term_ids"]), np.asarray(arrays["offsets"]), vocab)
                index = cls(settings, vocab, manifest.corpus_fingerprint, tokens=tokens)
        except (OSError, ValueError, TypeError) as exc:
            raise IndexLoadError(f"The {where} is damaged ({exc}); {REBUILD_HINT}.") from exc
        if index.n_docs != manifest.params.get("n_docs"):
            raise IndexLoadError(f"The {where} holds {index.n_docs} documents but its manifest says "
                                 f"{manifest.params.get('n_docs')}; {REBUILD_HINT}.")
        return index


def cached_analysis(texts: list[str], tokenizer: Tokenizer, cache: TextCache) -> list[list[str]]:
    """Every text's terms, read from `cache` where it has them; the rest analysed and stored."""
    namespace = "bm25-terms:" + stable_hash(tokenizer.model_dump(mode="json"))
    terms = cache.tokens(namespace, texts)
    todo = [i for i, t in enumerate(terms) if t is None]
    if todo:
        fresh = [tokenizer.analyze(texts[i]) for i in todo]
        for i, t in zip(todo, fresh):
            terms[i] = t
        cache.put_tokens(namespace, [texts[i] for i in todo], fresh)
    return terms  # type: ignore[return-value]
