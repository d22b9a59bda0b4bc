"""Chunking documents with the dense model's real tokenizer: limits, offsets, overlap, titles, determinism."""

from __future__ import annotations

import json
import random
from itertools import pairwise
from pathlib import Path

import pytest
from pydantic import ValidationError

from stagegraph.corpora.ingest import Chunk, Chunker, ChunkerConfig, Document, Section, read_paths

SAMPLE = Path(__file__).resolve().parents[1] / "corpora" / "sample"
HASH = "0" * 64


@pytest.fixture(scope="module")
def tokenizer():
    """The packaged MiniLM's tokenizer.json, as the collection loads it: truncation and padding at 128 included."""
    from tokenizers import Tokenizer

    from stagegraph.indexes.encoder import locate_model

    path = Path(locate_model("sentence-transformers/all-MiniLM-L6-v2").path) / "tokenizer.json"
    loaded = Tokenizer.from_file(str(path))
    assert loaded.truncation is not None and loaded.truncation["max_length"] == 128
    return loaded


@pytest.fixture(scope="module")
def plain(tokenizer):
    """The same tokenizer with truncation and padding off, to count what the model would see."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def count(plain, text: str) -> int:
    """Tokens of `text`, without the model's special tokens."""
    return len(plain.encode(text, add_special_tokens=False).ids)


@pytest.fixture(scope="module")
def prose() -> str:
    """Real text: the bundled sample corpus's passages, as paragraphs."""
    lines = (SAMPLE / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return "\n\n".join(json.loads(line)["text"] for line in lines[:120])


def document(text: str, *, doc_id: str = "doc", title: str = "Doc", sections=(), ext: str = "txt") -> Document:
    return Document(
        id=doc_id, title=title, text=text, metadata={"ext": ext}, sections=list(sections), content_hash=HASH
    )


def chunker(tokenizer, **config) -> Chunker:
    return Chunker(ChunkerConfig(**config), tokenizer)


def assert_offsets_and_limits(doc: Document, chunks: list[Chunk], plain, max_tokens: int) -> None:
    assert chunks, "no chunks"
    for index, chunk in enumerate(chunks):
        assert chunk.id == f"{doc.id}#{index}" and chunk.index == index and chunk.doc_id == doc.id
        assert doc.text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
        assert count(plain, chunk.text) <= max_tokens, chunk.text[:80]
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.start, chunk.end))
    uncovered = [i for i, char in enumerate(doc.text) if not char.isspace() and i not in covered]
    assert not uncovered, f"text left out of every chunk at {uncovered[:5]}"


def hard_text() -> str:
    """A paragraph of 2,000 words without punctuation, a 3,000-letter word, and non-ASCII text."""
    vocabulary = ["retrieval", "pipeline", "token", "über", "naïve", "日本語", "rerank"]
    words = random.Random(7).choices(vocabulary, k=2000)
    return " ".join(words) + "\n\n" + "x" * 3000 + "\n\nCafé 🚀 crème. " * 40


@pytest.mark.parametrize("kind", ["recursive", "sentence"])
@pytest.mark.parametrize("max_tokens", [200, 48])
def test_chunks_never_exceed_the_limit_and_their_offsets_hold(tokenizer, plain, prose, kind, max_tokens):
    cut = chunker(tokenizer, kind=kind, max_tokens=max_tokens, overlap_tokens=max_tokens // 7)
    for doc in (document(prose), document(hard_text())):
        chunks = cut.chunk(doc)
        assert_offsets_and_limits(doc, chunks, plain, max_tokens)
        assert len(chunks) > count(plain, doc.text) / max_tokens  # the tokenizer's 128-token truncation was undone


def overlaps(chunks: list[Chunk]) -> list[tuple[Chunk, Chunk]]:
    return [(before, after) for before, after in pairwise(chunks) if after.start < before.end]


def test_recursive_chunks_overlap_by_at_most_the_configured_tokens(tokenizer, plain, prose):
    doc = document(prose.replace("\n\n", " "))  # one long paragraph of real sentences
    chunks = chunker(tokenizer, max_tokens=120, overlap_tokens=30).chunk(doc)
    assert all(before.start < after.start for before, after in pairwise(chunks))
    shared = overlaps(chunks)
    # whole sentences overlap: where the last sentence has more than 30 tokens there is none
    assert len(shared) >= 0.4 * (len(chunks) - 1) and len(chunks) > 20
    assert all(count(plain, doc.text[after.start : before.end]) <= 30 for before, after in shared)
    assert overlaps(chunker(tokenizer, max_tokens=120, overlap_tokens=0).chunk(doc)) == []


def test_an_unpunctuated_paragraph_overlaps_at_every_cut(tokenizer, plain):
    doc = document(" ".join(random.Random(3).choices(["dense", "sparse", "fusion", "rerank", "query"], k=1500)))
    chunks = chunker(tokenizer, max_tokens=100, overlap_tokens=15).chunk(doc)
    assert len(chunks) > 10 and len(overlaps(chunks)) == len(chunks) - 1
    assert all(0 < count(plain, doc.text[after.start : before.end]) <= 15 for before, after in overlaps(chunks))


def test_sentence_chunks_end_on_sentences_and_overlap_by_whole_sentences(tokenizer, plain):
    sentences = [f"Sentence number {i} talks about reranking candidates with a cross-encoder." for i in range(60)]
    doc = document(" ".join(sentences))
    chunks = chunker(tokenizer, kind="sentence", max_tokens=60, overlap_tokens=20).chunk(doc)
    assert_offsets_and_limits(doc, chunks, plain, 60)
    sentence_starts = {doc.text.index(s) for s in sentences}
    for before, after in pairwise(chunks):
        assert after.text.startswith("Sentence number") and after.start in sentence_starts
        assert before.text.endswith("cross-encoder.")
        assert before.start < after.start < before.end  # the last sentence (15 tokens) fits the 20-token overlap
    no_overlap = chunker(tokenizer, kind="sentence", max_tokens=60, overlap_tokens=10).chunk(doc)
    assert all(after.start > before.end for before, after in pairwise(no_overlap))  # 15 > 10: none fits


def test_sentence_overlap_never_repeats_a_chunk_without_adding_text(tokenizer, plain):
    short = "Dense retrieval works."
    long = "A much longer sentence that keeps talking about reciprocal rank fusion of many ranked lists."
    doc = document(" ".join([short, short, long] * 20))  # two shorts fit a chunk, a short and the long do not
    chunks = chunker(tokenizer, kind="sentence", max_tokens=count(plain, long) + 3, overlap_tokens=12).chunk(doc)
    assert_offsets_and_limits(doc, chunks, plain, count(plain, long) + 3)
    assert all(after.end > before.end and after.start > before.start for before, after in pairwise(chunks))


def test_none_keeps_the_document_whole(tokenizer, prose):
    doc = document("\n  " + prose + "\n\n")
    (chunk,) = chunker(tokenizer, kind="none").chunk(doc)
    assert chunk.text == prose and doc.text[chunk.start : chunk.end] == prose
    assert chunker(tokenizer, kind="none").chunk(document(" \n\t ")) == []


def test_markdown_headings_become_chunk_titles_and_section_metadata(tokenizer, plain, tmp_path):
    body = " ".join(f"Step {i} of the installation copies files and checks versions." for i in range(40))
    (tmp_path / "guide.md").write_text(f"# Guide\n\nShort intro.\n\n## Install\n\n{body}\n\n## Use\n\nRun it.\n")
    (doc,) = read_paths([tmp_path], progress=False)
    chunks = chunker(tokenizer, max_tokens=64, overlap_tokens=8).chunk(doc)
    assert_offsets_and_limits(doc, chunks, plain, 64)
    assert chunks[0].text == "# Guide\n\nShort intro."  # a section is cut on its own
    assert chunks[0].title == "Guide" and chunks[0].metadata["section"] == "Guide"  # the H1 is not repeated
    install = [c for c in chunks if "Step 5 " in c.text or "Step 30 " in c.text]
    assert install and all(c.title == "Guide > Install" and c.metadata["section"] == "Install" for c in install)
    assert chunks[-1].text == "## Use\n\nRun it." and chunks[-1].title == "Guide > Use"
    assert all(c.metadata["ext"] == "md" and "page" not in c.metadata for c in chunks)


def test_pdf_pages_become_chunk_metadata(tokenizer):
    pages = [" ".join(f"Page {p} sentence {i} about quantisation." for i in range(30)) for p in (1, 2)]
    text = pages[0] + "\n\n" + pages[1]
    doc = document(text, sections=[Section(start=0, page=1), Section(start=len(pages[0]) + 2, page=2)], ext="pdf")
    chunks = chunker(tokenizer, max_tokens=50, overlap_tokens=0).chunk(doc)
    assert {c.metadata["page"] for c in chunks} == {1, 2}
    for chunk in chunks:
        assert chunk.text.startswith(f"Page {chunk.metadata['page']} ")
        assert chunk.title == "Doc" and "section" not in chunk.metadata


def test_chunking_is_deterministic_and_the_fingerprint_names_the_settings(tokenizer, prose):
    doc = document(prose)
    first, second = chunker(tokenizer), chunker(tokenizer)
    assert first.chunk(doc) == second.chunk(doc) == first.chunk(doc)
    assert first.fingerprint == second.fingerprint
    assert chunker(tokenizer, max_tokens=100).fingerprint != first.fingerprint
    assert chunker(tokenizer, kind="sentence").fingerprint != first.fingerprint


def test_the_callers_tokenizer_is_left_as_it_was(tokenizer):
    before = tokenizer.to_str()
    chunker(tokenizer).chunk(document("a few words " * 300))
    assert tokenizer.to_str() == before and tokenizer.truncation["max_length"] == 128


@pytest.mark.parametrize(
    "settings",
    [{"overlap_tokens": 200}, {"max_tokens": 0}, {"overlap_tokens": -1}, {"kind": "semantic"}, {"max_token": 100}],
)
def test_config_is_validated(settings):
    with pytest.raises(ValidationError):
        ChunkerConfig(**settings)


def test_config_defaults_are_200_tokens_with_15_percent_overlap_and_frozen():
    config = ChunkerConfig()
    assert (config.kind, config.max_tokens, config.overlap_tokens) == ("recursive", 200, 30)
    with pytest.raises(ValidationError):
        config.max_tokens = 10
