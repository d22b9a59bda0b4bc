"""Text analysis for BM25: the `Tokenizer` settings object and the token arrays it produces.

A `Tokenizer` is a small pydantic model saved inside every BM25 index's manifest, so a query is
always analysed exactly as the documents were. The analysis chain is the one Lucene's
`EnglishAnalyzer` and bm25s use:

1. lower-casing (`lowercase`, on by default);
2. a Unicode word pattern (`pattern`, default `(?u)\\b\\w\\w+\\b`: runs of two or more letters or
   digits in any script, the scikit-learn / bm25s default);
3. stopword removal (`stopwords`, default `"english"`: Lucene's English stop set of 33 words, the
   list Pyserini and bm25s use; `None` / `"none"` turns it off; a list gives your own);
4. optional Snowball stemming with PyStemmer (`stemmer`, default `"english"`; `"porter"` is the
   original Porter algorithm Lucene's `EnglishAnalyzer` uses; `None` turns stemming off).

`Tokenizer.tokenize_corpus` maps a corpus to `TokenizedCorpus`: one flat int32 array of term ids
with per-document offsets plus the vocabulary, the layout the index builders consume.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator
from stagegraph.progress import progress_bar

#: Lucene's `EnglishAnalyzer.ENGLISH_STOP_WORDS_SET` (also bm25s `STOPWORDS_EN`, Pyserini's default).
ENGLISH_STOPWORDS: tuple[str, ...] = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they",
    "this", "to", "was", "will", "with",
)  # fmt: skip

STOPWORD_LISTS: dict[str, tuple[str, ...]] = {"english": ENGLISH_STOPWORDS}

DEFAULT_PATTERN = r"(?u)\b\w\w+\b"


@dataclass(frozen=True)
class TokenizedCorpus:
    """Documents as term ids: `term_ids[offsets[d]:offsets[d + 1]]` are document `d`'s tokens.

    `vocab[i]` is the string of term id `i`. Stopwords are already removed, so a document's
    length (the BM25 `|d|`) is `offsets[d + 1] - offsets[d]`.
    """

    term_ids: np.ndarray  # int32, all tokens of all documents in order
    offsets: np.ndarray  # int64, n_docs + 1
    vocab: list[str]

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-d array starting at 0")
        if int(self.offsets[-1]) != len(self.term_ids):
            raise ValueError(f"offsets end at {int(self.offsets[-1])} but there are {len(self.term_ids)} term ids")
        if len(self.term_ids) and (int(self.term_ids.min()) < 0 or int(self.term_ids.max()) >= len(self.vocab)):
            raise ValueError(f"term ids must lie in [0, {len(self.vocab)}), the vocabulary size")

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc_tokens(self, row: int) -> list[str]:
        """Document `row`'s tokens as strings (used by the rank_bm25 reference backend)."""
        ids = self.term_ids[self.offsets[row] : self.offsets[row + 1]]
        return [self.vocab[i] for i in ids.tolist()]

    @classmethod
    def from_token_lists(cls, docs: Iterable[Sequence[str]], progress: bool = False, total: int | None = None) -> TokenizedCorpus:
        """Assign term ids in order of first appearance to already-analysed token lists."""
        vocab: dict[str, int] = {}
        chunks: list[np.ndarray] = []
        lengths: list[int] = []
        for tokens in progress_bar(docs, total=total, disable=not progress, desc="BM25 tokenize", unit="doc"):
            ids = [vocab.setdefault(t, len(vocab)) for t in tokens]
            chunks.append(np.array(ids, dtype=np.int32))
            lengths.append(len(ids))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        term_ids = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int32)
        return cls(term_ids.astype(np.int32, copy=False), offsets, list(vocab))


class _Analyzer:
    """The analysis chain of one `Tokenizer`, as plain attributes (fast on the query path)."""

    __slots__ = ("regex", "lowercase", "stop", "stemmer", "local")

    def __init__(self, regex: re.Pattern[str], lowercase: bool, stop: frozenset[str], stemmer: str | None):
        self.regex, self.lowercase, self.stop, self.stemmer = regex, lowercase, stop, stemmer
        self.local = threading.local()  # PyStemmer objects are not thread-safe: one per thread

    def __call__(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        words = self.regex.findall(text)
        if self.stop:
            stop = self.stop
            words = [w for w in words if w not in stop]
        if self.stemmer is not None and words:
            stemmer = getattr(self.local, "stemmer", None)
            if stemmer is None:
                import Stemmer  # PyStemmer; imported lazily so a tokenizer without stemming needs nothing

                stemmer = self.local.stemmer = Stemmer.Stemmer(self.stemmer)
            words = stemmer.stemWords(words)
        return words


class Tokenizer(BaseModel):
    """Analysis settings; call the object (or `analyze`) on a text to get its terms.

    The settings, not the code, are what an index stores: loading an index rebuilds this object
    from its manifest, so queries meet the same lower-casing, pattern, stopwords and stemmer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lowercase: bool = True
    pattern: str = DEFAULT_PATTERN
    stopwords: str | tuple[str, ...] | None = "english"
    stemmer: Literal["english", "porter"] | None = "english"

    @field_validator("stopwords", mode="before")
    @classmethod
    def _check_stopwords(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value == "none":
                return None
            if value not in STOPWORD_LISTS:
                raise ValueError(
                    f"unknown stopword list {value!r}; use one of {sorted(STOPWORD_LISTS)}, 'none', or a list of words"
                )
        elif isinstance(value, (list, tuple, set, frozenset)):
            return tuple(sorted(str(v) for v in value))
        return value

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from None
        return value

    @cached_property
    def analyzer(self) -> _Analyzer:
        """The compiled chain (regex, stopword set, per-thread stemmers), built on first use."""
        if self.stopwords is None:
            words: Iterable[str] = ()
        elif isinstance(self.stopwords, str):
            words = STOPWORD_LISTS[self.stopwords]
        else:
            words = self.stopwords
        # Stopwords are matched after lower-casing, so compare them lower-cased too.
        stop = frozenset(w.lower() for w in words) if self.lowercase else frozenset(words)
        return _Analyzer(re.compile(self.pattern), self.lowercase, stop, self.stemmer)

    def analyze(self, text: str) -> list[str]:
        """The terms of `text`, in order: lower-cased, split, stopwords removed, stemmed."""
        return self.analyzer(text)

    __call__ = analyze

    def __eq__(self, other: object) -> bool:
        # Compare settings only, never the cached `analyzer`.
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(tuple(self.model_dump().items()))

    def tokenize_corpus(self, texts: Iterable[str], progress: bool = False, total: int | None = None) -> TokenizedCorpus:
        """Analyse every text and give the corpus as term-id arrays with a vocabulary."""
        return TokenizedCorpus.from_token_lists(
            (self.analyze(t) for t in texts), progress=progress, total=total
        )
