"""Documents into chunks: a configured, deterministic step measured in the dense model's own tokens.

`Chunker(ChunkerConfig(kind=..., max_tokens=200, overlap_tokens=30), tokenizer).chunk(document)`
returns the document's `Chunk`s in order. The tokenizer is a Hugging Face `tokenizers.Tokenizer`
(the dense model's `tokenizer.json`); the chunker counts tokens on a private copy with truncation
and padding turned off (a sentence-transformers `tokenizer.json` often truncates at 128 tokens,
which would make every text look short), and without special tokens: the model adds its own
(`[CLS]`, `[SEP]`: 2 for MiniLM) on top of `max_tokens`.

Kinds:

* `recursive` (default): semantic-text-splitter (`TextSplitter`, or `MarkdownSplitter` for Markdown
  files, `.from_huggingface_tokenizer`). Chosen over chonkie and LangChain's splitter because it is
  a compiled (Rust) splitter that measures chunks with the very tokenizer object we pass, splits by
  descending semantic levels (Markdown headings and blocks, then blank lines, line breaks, sentences
  by Unicode segmentation, words, graphemes, characters) so no chunk ever exceeds the limit even in
  an unpunctuated paragraph or a 3,000-letter word, supports a token overlap, is deterministic, and
  returns each chunk with its offset, which in version 0.33 is a *character* offset into the text
  (the type stubs say so, and `tests/test_ingest_chunking.py` checks it on non-ASCII text).
* `sentence`: sentences found with pysbd (within paragraphs, which are never merged across a blank
  line by the segmenter) are packed greedily up to `max_tokens`; the next chunk starts with the last
  whole sentences of the previous one that fit in `overlap_tokens`. A sentence longer than
  `max_tokens` is cut by the recursive splitter first.
* `none`: one chunk per document, the whole (stripped) text; `max_tokens` is not applied: the encoder
  truncates. Meant for records that already are passages.

Chunks never straddle a heading: the text of each titled section (from its heading to the next)
is cut on its own, so a short section is a chunk of its own and overlaps stay inside a section; PDF
pages are no such boundary (a paragraph may run on). The overlap is made of whole units of the level
the splitter cut at (sentences, in prose): at most `overlap_tokens`, and absent between two chunks
where the last such unit is longer than that (about half the cuts in real prose at 200/30).

Offsets: `document.text[chunk.start:chunk.end] == chunk.text` exactly; chunks are trimmed, so the
whitespace between two chunks belongs to neither. A chunk's title is the document's, plus
" > <heading>" when it lies in a titled section (unless that heading is the document's title); its
metadata is the document's plus `section` (that heading) and `page` (the PDF page it starts on),
each present only when known.

Pure: the same document and configuration give the same chunks; `Chunker.fingerprint` names the
configuration, the tokenizer and the splitter versions, so a cache of chunks can be keyed by it.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stagegraph.corpora.ingest.documents import Document
from stagegraph.hashing import hash_strings, library_versions, stable_hash

MARKDOWN_EXTENSIONS = frozenset({"md", "markdown"})
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
Span = tuple[int, int]


class ChunkerConfig(BaseModel):
    """How documents are cut: the kind of splitter, the most tokens a chunk may hold, and the overlap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["recursive", "sentence", "none"] = "recursive"
    max_tokens: int = Field(default=200, ge=1)
    overlap_tokens: int = Field(default=30, ge=0)

    @model_validator(mode="after")
    def _check_overlap(self) -> ChunkerConfig:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than max_tokens ({self.max_tokens}); "
                "lower the overlap (15% of max_tokens is a good start)"
            )
        return self


class Chunk(BaseModel):
    """A piece of a document: `text == document.text[start:end]`, id `"{doc_id}#{index}"`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    doc_id: str
    index: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    title: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class Chunker:
    """Cuts documents into chunks of at most `config.max_tokens` tokens of `tokenizer` (see the module docstring)."""

    def __init__(self, config: ChunkerConfig, tokenizer: Any):
        from semantic_text_splitter import MarkdownSplitter, TextSplitter
        from tokenizers import Tokenizer

        self.config = config
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        limit, overlap = config.max_tokens, config.overlap_tokens
        self._text_splitter = TextSplitter.from_huggingface_tokenizer(self._tokenizer, limit, overlap=overlap)
        self._markdown_splitter = MarkdownSplitter.from_huggingface_tokenizer(self._tokenizer, limit, overlap=overlap)
        self._piece_splitter = TextSplitter.from_huggingface_tokenizer(self._tokenizer, limit)

    def __repr__(self) -> str:
        return f"Chunker({self.config!r})"

    @functools.cached_property
    def fingerprint(self) -> str:
        """Equal for chunkers that cut every document the same way: configuration, tokenizer, library versions."""
        return stable_hash({
            "config": self.config.model_dump(),
            "tokenizer": hash_strings([self._tokenizer.to_str()]),
            "libraries": library_versions(["semantic-text-splitter", "pysbd"]),
        })

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the chunker counts them: the tokenizer's, without special tokens or truncation."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def chunk(self, document: Document) -> list[Chunk]:
        spans = self._spans(document)
        headings = _SectionIndex([(s.start, s.title) for s in document.sections if s.title])
        pages = _SectionIndex([(s.start, s.page) for s in document.sections if s.page is not None])
        return [_make_chunk(document, index, span, headings, pages) for index, span in enumerate(spans)]

    def _spans(self, document: Document) -> list[Span]:
        text = document.text
        if self.config.kind == "none":
            return list(_stripped(text, 0, len(text)))
        markdown = document.metadata.get("ext") in MARKDOWN_EXTENSIONS
        spans: list[Span] = []
        for region_start, region_end in _heading_regions(document):
            region = text[region_start:region_end]
            spans += [(region_start + start, region_start + end) for start, end in self._region_spans(region, markdown)]
        return spans

    def _region_spans(self, region: str, markdown: bool) -> list[Span]:
        if self.config.kind == "sentence":
            return self._sentence_chunks(region)
        splitter = self._markdown_splitter if markdown else self._text_splitter
        return [(offset, offset + len(piece)) for offset, piece in splitter.chunk_indices(region)]

    # --- sentence packing -------------------------------------------------------------------------

    def _sentence_chunks(self, text: str) -> list[Span]:
        pieces = [piece for sentence in _sentences(text) for piece in self._fitting(text, sentence)]
        counts = [self.count_tokens(text[start:end]) for start, end in pieces]
        chunks: list[Span] = []
        first, previous_last = 0, -1
        while first < len(pieces):
            last = self._last_that_fits(text, pieces, counts, first)
            if last <= previous_last:  # the overlap left no room for a new sentence: start after the last chunk
                first = previous_last + 1
                continue
            chunks.append((pieces[first][0], pieces[last][1]))
            if last == len(pieces) - 1:
                break
            previous_last = last
            first = self._overlap_start(counts, first, last)
        return chunks

    def _fitting(self, text: str, sentence: Span) -> list[Span]:
        """The sentence itself, or the recursive splitter's pieces of it when it is longer than `max_tokens`."""
        start, end = sentence
        if self.count_tokens(text[start:end]) <= self.config.max_tokens:
            return [sentence]
        return [(start + o, start + o + len(p)) for o, p in self._piece_splitter.chunk_indices(text[start:end])]

    def _last_that_fits(self, text: str, pieces: list[Span], counts: list[int], first: int) -> int:
        """The last piece of a chunk starting at `first`, by summed counts, then checked on the real text."""
        limit = self.config.max_tokens
        last, total = first, counts[first]
        while last + 1 < len(pieces) and total + counts[last + 1] <= limit:
            last += 1
            total += counts[last]
        while last > first and self.count_tokens(text[pieces[first][0] : pieces[last][1]]) > limit:
            last -= 1
        return last

    def _overlap_start(self, counts: list[int], first: int, last: int) -> int:
        """Where the next chunk starts: the trailing whole sentences of this one within `overlap_tokens`,
        leaving room for the next sentence."""
        budget = min(self.config.overlap_tokens, self.config.max_tokens - counts[last + 1])
        start, total = last + 1, 0
        while start - 1 > first and total + counts[start - 1] <= budget:
            start -= 1
            total += counts[start]
        return start


def _heading_regions(document: Document) -> list[Span]:
    """The text cut at every titled section's start: chunks never straddle a heading."""
    starts = sorted({0, *(section.start for section in document.sections if section.title)})
    ends = [*starts[1:], len(document.text)]
    return [(start, end) for start, end in zip(starts, ends) if end > start]


def _sentences(text: str) -> Iterator[Span]:
    """Sentence spans (trimmed), found by pysbd within each paragraph."""
    import pysbd

    segmenter = pysbd.Segmenter(language="en", clean=False)
    for para_start, para_end in _paragraphs(text):
        paragraph = text[para_start:para_end]
        cursor = 0
        for sentence in segmenter.segment(paragraph):
            body = sentence.strip()
            found = paragraph.find(body, cursor) if body else -1
            if found < 0:
                continue
            yield from _stripped(text, para_start + cursor, para_start + found)  # text the segmenter skipped
            yield para_start + found, para_start + found + len(body)
            cursor = found + len(body)
        yield from _stripped(text, para_start + cursor, para_end)


def _paragraphs(text: str) -> Iterator[Span]:
    start = 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        yield from _stripped(text, start, match.start())
        start = match.end()
    yield from _stripped(text, start, len(text))


def _stripped(text: str, start: int, end: int) -> Iterator[Span]:
    """`(start, end)` moved inwards past whitespace; nothing when only whitespace is left."""
    piece = text[start:end]
    if piece.strip():
        yield start + (len(piece) - len(piece.lstrip())), end - (len(piece) - len(piece.rstrip()))


class _SectionIndex:
    """The value of the last section starting at or before an offset."""

    def __init__(self, starts_and_values: list[tuple[int, Any]]):
        ordered = sorted(starts_and_values, key=lambda pair: pair[0])
        self.starts = [start for start, _ in ordered]
        self.values = [value for _, value in ordered]

    def at(self, offset: int) -> Any:
        position = bisect.bisect_right(self.starts, offset) - 1
        return self.values[position] if position >= 0 else None


def _make_chunk(document: Document, index: int, span: Span, headings: _SectionIndex, pages: _SectionIndex) -> Chunk:
    start, end = span
    heading, page = headings.at(start), pages.at(start)
    title = document.title if not heading or heading == document.title else f"{document.title} > {heading}"
    metadata = dict(document.metadata)
    if heading:
        metadata["section"] = heading
    if page is not None:
        metadata["page"] = page
    return Chunk(
        id=f"{document.id}#{index}", doc_id=document.id, index=index, start=start, end=end,
        title=title, text=document.text[start:end], metadata=metadata,
    )
