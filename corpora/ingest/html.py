"""HTML files into documents: the visible text, block by block, with `<h1>`..`<h6>` as sections.

Parsed with selectolax's lexbor backend (a fast, maintained HTML5 parser in C: a large site dump
reads at tens of MB/s, where BeautifulSoup on lxml is several times slower, and it decodes entities
and repairs broken markup the way browsers do). The text keeps what a reader sees: `<script>`,
`<style>`, `<noscript>`, `<template>`, `<svg>`, `<head>`, comments and elements with a `hidden`
attribute are dropped; runs of whitespace collapse to one space (except inside `<pre>`); block
elements are separated by a blank line, list items, table rows and `<br>` by a line break, table
cells by a space. A heading's permalink mark (`<a class="headerlink">¶</a>`, from Sphinx or
MkDocs) is not part of its title or text. The title is `<title>`, else the first `<h1>`, else the file's stem.
"""

from __future__ import annotations

import re
from typing import Any

from stagegraph.corpora.ingest.documents import Document, Section
from stagegraph.corpora.ingest.markup import encoding_facts
from stagegraph.corpora.ingest.sources import SourceFile, decode_text, make_document, read_bytes

INVISIBLE = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object", "canvas"})
PARAGRAPH_BLOCKS = frozenset({
    "p", "div", "section", "article", "header", "footer", "nav", "aside", "main", "blockquote", "pre",
    "ul", "ol", "dl", "table", "figure", "figcaption", "form", "fieldset", "address", "details",
    "summary", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "body",
})
LINE_BLOCKS = frozenset({"li", "tr", "dt", "dd", "br", "caption", "option"})
CELLS = frozenset({"td", "th"})
HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
PERMALINK_CLASS = "headerlink"  # the pilcrow link Sphinx and MkDocs put in each heading
_SPACES = re.compile(r"\s+")


def read_html(source: SourceFile) -> Document:
    from selectolax.lexbor import LexborHTMLParser

    data, digest = read_bytes(source)
    markup, encoding = decode_text(data)
    tree = LexborHTMLParser(markup)
    text, sections = visible_text(tree.body or tree.root)
    title_node = tree.css_first("title")
    page_title = _collapse(title_node.text()) if title_node is not None else ""
    first_h1 = next((s.title for s in sections if s.title and s.level == 1), "")
    return make_document(
        source, content_hash=digest, title=page_title or first_h1 or source.path.stem, text=text,
        sections=[Section(start=s.start, title=s.title) for s in sections], extra_facts=encoding_facts(encoding),
    )


class _Heading:
    __slots__ = ("level", "start", "title")

    def __init__(self, start: int, title: str, level: int):
        self.start, self.title, self.level = start, title, level


class _TextBuilder:
    """Appends text with collapsed whitespace and pending breaks, so offsets are known as it goes."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.pending_break = 0  # newlines owed before the next text (1 or 2)

    def request_break(self, newlines: int) -> None:
        self.pending_break = max(self.pending_break, newlines)

    def add(self, text: str, *, preformatted: bool = False) -> int | None:
        """Append `text`; the offset where its first visible character landed, or None if nothing was added."""
        if not preformatted:
            text = _SPACES.sub(" ", text)
        if self.pending_break or not self.parts or self.parts[-1].endswith((" ", "\n")):
            text = text.lstrip(" ") if not preformatted else text
        if not text:
            return None
        if self.pending_break and self.parts:
            self._trim_trailing_spaces()
            self._append("\n" * self.pending_break)
        self.pending_break = 0
        start = self.length + (len(text) - len(text.lstrip()))
        self._append(text)
        return start

    def text(self) -> str:
        return "".join(self.parts).rstrip()

    def _append(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def _trim_trailing_spaces(self) -> None:
        while self.parts and self.parts[-1].endswith(" "):
            trimmed = self.parts[-1].rstrip(" ")
            self.length -= len(self.parts[-1]) - len(trimmed)
            self.parts[-1] = trimmed
            if trimmed:
                break
            self.parts.pop()


def visible_text(root: Any) -> tuple[str, list[_Heading]]:
    """The visible text under `root` and its headings (offsets into that text), walked without recursion."""
    builder = _TextBuilder()
    headings: list[_Heading] = []
    stack: list[tuple[str, Any]] = [("enter", root)]
    preformatted = 0
    while stack:
        phase, node = stack.pop()
        tag = node.tag
        if phase == "exit":
            preformatted -= tag == "pre"
            _break_around(builder, tag)
            continue
        if node.is_text_node:
            builder.add(node.text_content or "", preformatted=preformatted > 0)
            continue
        if not node.is_element_node or tag in INVISIBLE or "hidden" in node.attributes:
            continue
        _break_around(builder, tag)
        if tag in HEADINGS:
            _add_heading(builder, headings, node)
            continue
        preformatted += tag == "pre"
        stack.append(("exit", node))
        stack.extend(("enter", child) for child in reversed(list(node.iter(include_text=True))))
    return builder.text(), headings


def _break_around(builder: _TextBuilder, tag: str) -> None:
    if tag in PARAGRAPH_BLOCKS:
        builder.request_break(2)
    elif tag in LINE_BLOCKS:
        builder.request_break(1)
    elif tag in CELLS:
        builder.add(" ")


def _add_heading(builder: _TextBuilder, headings: list[_Heading], node: Any) -> None:
    title = _collapse(_heading_text(node))
    start = builder.add(title)
    if start is not None:
        headings.append(_Heading(start, title, int(node.tag[1])))
    builder.request_break(2)


def _heading_text(heading: Any) -> str:
    """A heading's visible text, without a permalink anchor in it (`<a class="headerlink">¶</a>`, as
    Sphinx and MkDocs write after every heading): that mark is no part of the title."""
    parts: list[str] = []
    stack = list(reversed(list(heading.iter(include_text=True))))
    while stack:
        node = stack.pop()
        if node.is_text_node:
            parts.append(node.text_content or "")
            continue
        if (not node.is_element_node or node.tag in INVISIBLE or "hidden" in node.attributes
                or (node.tag == "a" and PERMALINK_CLASS in (node.attributes.get("class") or "").split())):
            continue
        stack.extend(reversed(list(node.iter(include_text=True))))
    return "".join(parts)


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text or "").strip()
