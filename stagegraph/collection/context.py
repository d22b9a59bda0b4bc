"""Context assembly: the chunks to put in an LLM prompt, within a token budget, with their sources.

    with stagegraph.open("hybrid", collection="notes.sg") as stack:
        ctx = stack.context("GPU memory for a 4-bit 7B model", budget_tokens=300, mmr_lambda=0.7, expand="neighbours")
        prompt = f"Answer from these notes:\\n\\n{ctx.text}\\n\\nQuestion: ..."
        for p in ctx.passages:  # each with doc_id, chunk_ids, section, page, start/end offsets: the citation
            ...

`ContextConfig` is the value (every setting, validated; a bad one is one `InputError` line) and
`ContextAssembler` the runtime: it holds the tokenizer that measures the budget, loaded once per name
and shared (`assembler_for`), and, where the pipeline has no dense stage to borrow vectors from, an
encoder, loaded once too. One call, on one generation of the collection:

1. **candidates**: the pipeline's top `candidates` hits for the query (with the caller's filter);
2. **near-duplicates**: in rank order, a hit whose vector has cosine >= `dedup_threshold` with a hit
   already kept is dropped (`reason="duplicate"`, `duplicate_of` names the one kept);
3. **order**: rank order, or, with `mmr_lambda`, maximal marginal relevance (`mmr`): relevance is the
   pipeline's own final score, min-max scaled to [0, 1] over the candidates, similarity the cosine of the
   dense vectors; lambda 1 is rank order, lambda 0 the most diverse order;
4. **expansion** (`expand`): `neighbours` adds the `neighbours` chunks either side of each hit in its
   document, `section` every chunk of the hit's section (the run of chunks around it with the same
   `section`); a passage that no longer fits falls back to the hit's own chunk;
5. **merging**: chunk ranges of one document that overlap or touch (adjacent chunk indices: chunks
   cover every non-blank character of a document, so nothing lies between two adjacent ones but
   whitespace) become one passage, in document order, the overlap between chunks not repeated;
6. **packing**: greedily, in that order, each passage is kept when the whole rendered context (every
   kept passage through `template`, joined by `separator`) still counts at most `budget_tokens` tokens
   of `tokenizer` (no special tokens: the text goes inside a prompt); the rest are dropped
   (`reason="over_budget"`). The count is of the final string itself, so the budget holds whatever
   the tokenizer does at the joins.

Near-duplicates are found by cosine of the dense embeddings rather than shingles / MinHash: the
vectors are already there (read back from the dense stage's FAISS index of the generation, no
encoding), they catch a copied chunk and a lightly edited one alike, and for the tens of candidates of
one prompt an exact pairwise comparison costs microseconds, where MinHash/LSH is built for millions
of documents and would add a dependency and character-level tuning for nothing here.

Between two adjacent chunks the document's whitespace is not stored (chunks are trimmed), so merged
text joins them by one space when the gap is one character and by a blank line when it is longer;
the offsets (`start`, `end`) are exact, so `document_text[start:end]` is the passage's source.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stagegraph.errors import InputError
from stagegraph.loaded_once import LoadedOnce
from stagegraph.indexes.encoder import DEFAULT_MODEL

#: the placeholders a template may use
TEMPLATE_FIELDS = ("n", "doc_id", "title", "section", "page", "start", "end", "text")
_PLACEHOLDER = re.compile(r"\{(\w*)\}")


class ContextConfig(BaseModel):
    """How `Stack.context` assembles a prompt's context (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_tokens: int = Field(ge=1, description="the most tokens of `tokenizer` the assembled text may count")
    tokenizer: str = Field(DEFAULT_MODEL, min_length=1,
                           description="a Hugging Face tokenizer: model id (found offline) or local path; default the dense model's")
    mmr_lambda: float | None = Field(None, ge=0.0, le=1.0,
                                     description="maximal marginal relevance: 1 = rank order, 0 = most diverse; None: off")
    candidates: int = Field(20, ge=1, le=1000, description="the pipeline's top hits considered")
    dedup_threshold: float | None = Field(0.95, gt=0.0, le=1.0,
                                          description="drop a hit whose cosine with a kept one is at least this; None: off")
    expand: Literal["none", "neighbours", "section"] = "none"
    neighbours: int = Field(1, ge=1, le=20, description="with expand=neighbours: chunks taken on each side")
    separator: str = Field("\n\n", max_length=100, description="between two passages")
    template: str = Field("{text}", min_length=1, max_length=1000,
                          description="each passage's form; placeholders {n} {doc_id} {title} {section} {page} {start} {end} {text}")

    @field_validator("template")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        unknown = sorted({name for name in _PLACEHOLDER.findall(value) if name not in TEMPLATE_FIELDS})
        if unknown:
            raise ValueError(f"the template names {', '.join('{' + u + '}' for u in unknown)}; it may use "
                             + " ".join("{" + f + "}" for f in TEMPLATE_FIELDS))
        return value


def context_config(**settings: Any) -> ContextConfig:
    """`ContextConfig(**settings)`, or one `InputError` line naming the first bad setting."""
    try:
        return ContextConfig(**settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "context"
        raise InputError(f"context setting {where}: {error['msg']} (got {error.get('input')!r})") from None


class Passage(BaseModel):
    """One passage of the context: a range of one document's chunks, with its source for a citation."""

    text: str = Field(description="the chunks' text in document order, their overlaps not repeated")
    doc_id: str
    title: str = ""
    chunk_ids: list[str] = Field(description="every chunk the passage covers, in document order")
    hits: list[str] = Field(description="the retrieved chunks among them (the rest came by expansion)")
    section: str | None = Field(None, description="the section of its first chunk")
    sections: list[str] = Field(default_factory=list, description="every section it covers, in order")
    page: int | None = Field(None, description="the page its first chunk starts on (PDFs)")
    start: int = Field(description="character offset of its start in the document's text")
    end: int = Field(description="character offset of its end (exclusive)")
    score: float = Field(description="the best pipeline score among its hits")
    rank: int = Field(description="the best pipeline rank among its hits")
    tokens: int = Field(description="tokens of this passage as rendered by the template (alone)")
    expanded: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict, description="its first chunk's metadata")


class Dropped(BaseModel):
    """A candidate left out, and why."""

    id: str
    doc_id: str
    rank: int
    reason: Literal["duplicate", "over_budget"]
    duplicate_of: str | None = Field(None, description="for a duplicate: the kept hit it copies")
    similarity: float | None = Field(None, description="for a duplicate: its cosine with that hit")
    tokens: int | None = Field(None, description="over budget: the tokens its passage alone would take")


class ContextResult(BaseModel):
    """`Stack.context`'s answer: the passages in prompt order, the text to paste, what was left out."""

    query: str
    text: str = Field(description="the passages rendered by the template, joined by the separator: what `tokens` counts")
    passages: list[Passage]
    tokens: int = Field(description="tokens of `text` by `tokenizer` (never more than budget_tokens)")
    budget_tokens: int
    tokenizer: str
    mmr_lambda: float | None = None
    intra_list_similarity: float | None = Field(
        None, description="mean pairwise cosine of the kept hits' vectors (lower: more diverse); None under two hits")
    dropped: list[Dropped] = Field(default_factory=list)
    generation: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict, description="each search stage, then `context` (assembly)")


# -- the parts, each pure -----------------------------------------------------------------------------
def mmr(relevance: np.ndarray, vectors: np.ndarray, lam: float, k: int | None = None) -> list[int]:
    """Maximal marginal relevance: indices of `relevance` in selection order, at most `k`.

    Each step picks the candidate maximising `lam * relevance - (1 - lam) * max cosine with those
    picked` (0 before the first pick); ties go to the lower index. `vectors` are unit rows."""
    relevance = np.asarray(relevance, dtype=np.float64)
    n = len(relevance)
    k = n if k is None else min(k, n)
    if n == 0 or k <= 0:
        return []
    vectors = np.asarray(vectors, dtype=np.float64)
    similarity = vectors @ vectors.T
    penalty = np.zeros(n)
    left = np.ones(n, dtype=bool)
    chosen: list[int] = []
    while len(chosen) < k:
        value = lam * relevance - (1.0 - lam) * penalty
        value[~left] = -np.inf
        best = int(np.argmax(value))  # the first of equal values: the lower index
        chosen.append(best)
        left[best] = False
        penalty = np.maximum(penalty, similarity[best]) if len(chosen) > 1 else similarity[best].copy()
    return chosen


def intra_list_similarity(vectors: np.ndarray) -> float | None:
    """Mean cosine over every pair of `vectors` (unit rows); None under two."""
    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    if n < 2:
        return None
    sims = vectors @ vectors.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def scaled(scores: np.ndarray) -> np.ndarray:
    """Scores min-max scaled to [0, 1] (all 1 when they are all equal)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    low, high = float(scores.min()), float(scores.max())
    return np.ones_like(scores) if high <= low else (scores - low) / (high - low)


def near_duplicates(vectors: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """In order, each row whose cosine with an earlier kept row is >= `threshold`: row -> (kept row, cosine)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    kept: list[int] = []
    out: dict[int, tuple[int, float]] = {}
    for i in range(len(vectors)):
        if kept:
            sims = vectors[kept] @ vectors[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                out[i] = (kept[j], float(sims[j]))
                continue
        kept.append(i)
    return out


def merged_text(chunks: list[Any]) -> str:
    """Consecutive chunks of one document (each with `start`, `end`, `text`) as one text, overlaps once."""
    parts: list[str] = []
    end = None
    for c in chunks:
        if end is None:
            parts.append(c.text)
        elif c.end <= end:
            continue  # inside what is already there
        elif c.start < end:
            parts.append(c.text[end - c.start:])
        else:
            parts.append(" " if c.start - end == 1 else "\n\n")
            parts.append(c.text)
        end = c.end if end is None else max(end, c.end)
    return "".join(parts)


def render(template: str, values: dict[str, Any]) -> str:
    """`template` with each {field} replaced (only the names of TEMPLATE_FIELDS: nothing is evaluated)."""
    return _PLACEHOLDER.sub(lambda m: "" if values.get(m.group(1)) is None else str(values[m.group(1)]), template)


# -- the tokenizer ----------------------------------------------------------------------------------
class TokenCounter:
    """Counts tokens of a Hugging Face tokenizer, no special tokens, never truncated."""

    def __init__(self, name: str):
        self.name = name
        path = _tokenizer_path(name)
        try:
            from transformers import AutoTokenizer

            from stagegraph.indexes.encoder import quiet_transformers

            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the caller's name
            raise InputError(f"unknown tokenizer {name!r}: it could not be loaded ({type(exc).__name__}); give a "
                             "Hugging Face model id available offline or a local directory with a tokenizer") from None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())  # a private copy: no truncation, no padding
            backend.no_truncation()
            backend.no_padding()
        self._backend = backend
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._backend is not None:
            return len(self._backend.encode(text, add_special_tokens=False).ids)
        with self._lock:  # a slow (Python) tokenizer: one call at a time
            return len(self._tokenizer.encode(text, add_special_tokens=False, truncation=False, verbose=False))


def _tokenizer_path(name: str) -> str:
    from stagegraph.indexes.encoder import ModelNotFoundError, locate_model

    try:
        return str(locate_model(name).path)
    except ModelNotFoundError:
        return name  # let transformers try (a hub id in its cache); its failure is the one error


#: what this module loads once per process (tokenizers, assemblers), by (kind, name)
_LOADED = LoadedOnce()


def _once(kind: str, name: str, make: Callable[[str], Any]) -> Any:
    """`make(name)`, made once per process and kept (an assembler loads its tokenizer through it too)."""
    return _LOADED.get((kind, name), lambda: make(name))


def token_counter(name: str) -> TokenCounter:
    """The tokenizer `name`, loaded once per process."""
    return _once("tokenizer", name, TokenCounter)


# -- what one generation gives --------------------------------------------------------------------------
class GenerationChunks:
    """One generation's chunks and the vectors of its rows: read back from the dense stage's indexes
    when the pipeline has one bound here, else encoded by `encoder()` (a factory, called once)."""

    def __init__(self, runner: Any, generation: Any, encoder: Any):
        self.generation = generation
        self.corpus = generation.corpus
        self._dense = _dense_binding(runner)
        self._encoder = encoder
        self._chunks: dict[str, list[Any]] = {}

    def chunks_of(self, doc_id: str) -> list[Any]:
        found = self._chunks.get(doc_id)
        if found is None:
            found = self._chunks[doc_id] = self.generation.chunks_of(doc_id)
        return found

    def vectors(self, ids: list[str]) -> np.ndarray:
        rows = [self.corpus.row_of(i) for i in ids]
        if self._dense is not None:
            offsets = [part.offset for part in self._dense.corpus.parts]
            out = []
            for row in rows:
                p = bisect.bisect_right(offsets, row) - 1
                out.append(np.asarray(self._dense.indexes[p].vectors_of(np.array([row - offsets[p]], dtype=np.int64)))[0])
            vectors = np.asarray(out, dtype=np.float32).reshape(len(rows), -1)
        else:
            vectors = self._encoder().encode(self.corpus.doc_texts(rows), progress=False)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)


def _dense_binding(runner: Any) -> Any:
    """The first dense stage bound in this process to a segmented corpus (None: none, or remote)."""
    from stagegraph.stages.retrieve.dense import SegmentedDenseSearch

    for step in runner.steps:
        if getattr(step.stage, "type_name", None) == "dense":
            bound = runner.bound(step)
            if isinstance(bound, SegmentedDenseSearch):
                return bound
    return None


# -- the runtime ----------------------------------------------------------------------------------
class _Range:
    """A passage under construction: chunks lo..hi of one document, the hits it holds."""

    def __init__(self, doc_id: str, lo: int, hi: int, hits: list[Any], expanded: bool):
        self.doc_id, self.lo, self.hi, self.hits, self.expanded = doc_id, lo, hi, hits, expanded

    def touches(self, other: _Range) -> bool:
        return self.doc_id == other.doc_id and other.lo <= self.hi + 1 and self.lo <= other.hi + 1

    def union(self, other: _Range) -> _Range:
        return _Range(self.doc_id, min(self.lo, other.lo), max(self.hi, other.hi), self.hits + other.hits,
                      self.expanded or other.expanded)


class ContextAssembler:
    """Assembles contexts with one tokenizer (loaded once); see the module docstring."""

    def __init__(self, tokenizer: str = DEFAULT_MODEL):
        self.counter = token_counter(tokenizer)
        self._encoder: Any = None
        self._encoder_lock = threading.Lock()

    def encoder(self) -> Any:
        """The dense default model, for pipelines without a dense stage here (loaded on first use, once)."""
        with self._encoder_lock:
            if self._encoder is None:
                from stagegraph.indexes.encoder import Encoder

                self._encoder = Encoder(DEFAULT_MODEL, progress=False)
            return self._encoder

    def assemble(self, result: Any, config: ContextConfig, source: GenerationChunks | None) -> ContextResult:
        """The context of `result` (a `SearchResult` of the generation `source` reads)."""
        started = time.perf_counter()
        hits = list(result.hits[: config.candidates])
        dropped: list[Dropped] = []
        vectors = source.vectors([h.id for h in hits]) if hits else np.empty((0, 0), np.float32)
        if config.dedup_threshold is not None and hits:
            copies = near_duplicates(vectors, config.dedup_threshold)
            for i, (j, sim) in copies.items():
                dropped.append(Dropped(id=hits[i].id, doc_id=hits[i].doc_id, rank=hits[i].rank, reason="duplicate",
                                       duplicate_of=hits[j].id, similarity=round(sim, 6)))
            keep = [i for i in range(len(hits)) if i not in copies]
            hits, vectors = [hits[i] for i in keep], vectors[keep]
        if config.mmr_lambda is not None and hits:
            order = mmr(scaled(np.array([h.score for h in hits])), vectors, config.mmr_lambda)
            hits, vectors = [hits[i] for i in order], vectors[order]
        ranges: list[_Range] = []
        kept: list[int] = []
        text, tokens = "", 0
        for position, hit in enumerate(hits):
            chunks = source.chunks_of(hit.doc_id)
            index = _chunk_index(hit, chunks)
            tries = [self._expanded(hit, index, chunks, config), _Range(hit.doc_id, index, index, [hit], False)]
            if config.expand == "none":
                tries = tries[1:]
            for attempt in tries:
                candidate = _placed(ranges, attempt)
                candidate_text = self._text(candidate, source, config)
                count = self.counter.count(candidate_text)
                if count <= config.budget_tokens:
                    ranges, text, tokens = candidate, candidate_text, count
                    kept.append(position)
                    break
            else:
                alone = self._text([tries[-1]], source, config)
                dropped.append(Dropped(id=hit.id, doc_id=hit.doc_id, rank=hit.rank, reason="over_budget",
                                       tokens=self.counter.count(alone)))
        passages = [self._passage(n, r, source, config) for n, r in enumerate(ranges, 1)]
        return ContextResult(query=result.query, text=text, passages=passages, tokens=tokens,
                             budget_tokens=config.budget_tokens, tokenizer=config.tokenizer, mmr_lambda=config.mmr_lambda,
                             intra_list_similarity=intra_list_similarity(vectors[kept]) if kept else None,
                             dropped=sorted(dropped, key=lambda d: d.rank), generation=result.generation,
                             timings_ms={**result.timings_ms, "context": (time.perf_counter() - started) * 1000.0})

    @staticmethod
    def _expanded(hit: Any, index: int, chunks: list[Any], config: ContextConfig) -> _Range:
        if config.expand == "neighbours":
            lo, hi = max(0, index - config.neighbours), min(len(chunks) - 1, index + config.neighbours)
        elif config.expand == "section":
            section = chunks[index].metadata.get("section")
            lo = hi = index
            while lo > 0 and chunks[lo - 1].metadata.get("section") == section:
                lo -= 1
            while hi < len(chunks) - 1 and chunks[hi + 1].metadata.get("section") == section:
                hi += 1
        else:
            lo = hi = index
        return _Range(hit.doc_id, lo, hi, [hit], (lo, hi) != (index, index))

    def _values(self, n: int, r: _Range, source: GenerationChunks) -> dict[str, Any]:
        chunks = source.chunks_of(r.doc_id)[r.lo: r.hi + 1]
        first = chunks[0]
        return {"n": n, "doc_id": r.doc_id, "title": first.title, "section": first.metadata.get("section"),
                "page": first.metadata.get("page"), "start": first.start, "end": max(c.end for c in chunks),
                "text": merged_text(chunks), "chunks": chunks}

    def _text(self, ranges: list[_Range], source: GenerationChunks, config: ContextConfig) -> str:
        return config.separator.join(render(config.template, self._values(n, r, source))
                                     for n, r in enumerate(ranges, 1))

    def _passage(self, n: int, r: _Range, source: GenerationChunks, config: ContextConfig) -> Passage:
        values = self._values(n, r, source)
        chunks = values["chunks"]
        sections: list[str] = []
        for c in chunks:
            s = c.metadata.get("section")
            if s and s not in sections:
                sections.append(s)
        best = min(r.hits, key=lambda h: h.rank)
        return Passage(text=values["text"], doc_id=r.doc_id, title=values["title"], chunk_ids=[c.id for c in chunks],
                       hits=[h.id for h in sorted(r.hits, key=lambda h: _index_of(h.id))], section=values["section"],
                       sections=sections, page=values["page"], start=values["start"], end=values["end"],
                       score=max(h.score for h in r.hits), rank=best.rank,
                       tokens=self.counter.count(render(config.template, values)), expanded=r.expanded,
                       metadata=dict(chunks[0].metadata))


def _placed(ranges: list[_Range], new: _Range) -> list[_Range]:
    """`ranges` (no two touching) with `new` merged into every range of its document it touches, at the
    place of the first of them, or appended."""
    out = list(ranges)
    while True:
        touched = [i for i, r in enumerate(out) if r.touches(new)]
        if not touched:
            return out + [new]
        for i in touched:
            new = out[i].union(new) if i == touched[0] else new.union(out[i])
        first = touched[0]
        rest = [r for i, r in enumerate(out) if i not in touched]
        if not any(r.touches(new) for r in rest):
            return rest[:first] + [new] + rest[first:]
        out = rest[:first] + rest[first:]  # the union reaches further: merge again


def _index_of(chunk_id: str) -> int:
    tail = chunk_id.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _chunk_index(hit: Any, chunks: list[Any]) -> int:
    """The position of the hit's chunk in its document's chunk list."""
    for position, chunk in enumerate(chunks):
        if chunk.id == hit.id:
            return position
    raise InputError(f"chunk {hit.id!r} is not in its document's chunks in this generation")


def assembler_for(tokenizer: str) -> ContextAssembler:
    """The assembler of `tokenizer`, made once per process (its tokenizer and encoder loaded once)."""
    return _once("assembler", tokenizer, ContextAssembler)
