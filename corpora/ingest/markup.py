"""Plain text, Markdown and reStructuredText files into documents, with their headings as sections.

* `.txt`: the decoded text; the title is the file's stem.
* `.md` / `.markdown`: YAML front matter is split off with python-frontmatter and becomes user
  metadata (dates as ISO strings); the document's text is the Markdown source that follows it
  (stripped of surrounding blank lines). Headings (ATX `#` and setext underlines alike) are found
  with markdown-it-py's CommonMark parser, never by regex, so `#` lines in code blocks are not
  headings; each one is a `Section` at the start of its line, titled with its plain inline text.
  The title is the first H1, else the front matter's `title`, else the file's stem.
* `.rst`: section titles are found by the underline rule (docutils is not needed for that): a
  non-indented text line, at the start or after a blank line, followed by a line made of one
  repeated punctuation character at least as long as the title (optionally with the same line
  above it as an overline). The adornment lines are dropped from the text, the title line stays
  and becomes a `Section`. The document's title is the first section title, else the stem. Other
  markup (directives, roles, field lists) is kept as written.
"""

from __future__ import annotations

import string
from typing import Any

from stagegraph.corpora.ingest.documents import Document, Section
from stagegraph.corpora.ingest.sources import SourceFile, Unreadable, decode_text, make_document, read_bytes

RST_ADORNMENT = frozenset(string.punctuation)


def encoding_facts(encoding: str) -> dict[str, Any]:
    """`{"encoding": ...}` for text that was not UTF-8 (so a user can see a guess was made), else nothing."""
    return {} if encoding == "utf-8" else {"encoding": encoding}


def read_plain_text(source: SourceFile) -> Document:
    data, digest = read_bytes(source)
    text, encoding = decode_text(data)
    return make_document(
        source, content_hash=digest, title=source.path.stem, text=text, extra_facts=encoding_facts(encoding)
    )


# --- Markdown ---------------------------------------------------------------------------------


def read_markdown(source: SourceFile) -> Document:
    data, digest = read_bytes(source)
    raw, encoding = decode_text(data)
    front, text = split_front_matter(raw)
    sections, first_h1 = markdown_sections(text)
    title = first_h1 or str(front.get("title") or "") or source.path.stem
    return make_document(
        source, content_hash=digest, title=title, text=text, sections=sections,
        user_metadata=front, extra_facts=encoding_facts(encoding),
    )


def split_front_matter(raw: str) -> tuple[dict[str, Any], str]:
    """`(front matter, body)`; `Unreadable` when the front matter is not a YAML mapping."""
    import frontmatter
    import yaml

    try:
        post = frontmatter.loads(raw)
    except (yaml.YAMLError, TypeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Unreadable(f"invalid front matter ({first_line})") from None
    return dict(post.metadata), post.content


def markdown_sections(text: str) -> tuple[list[Section], str | None]:
    """Every heading as a `Section` at the start of its line, and the first H1's title."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    line_starts = _line_starts(text)
    sections: list[Section] = []
    first_h1 = None
    for position, token in enumerate(tokens):
        if token.type != "heading_open" or token.map is None:
            continue
        title = _inline_text(tokens[position + 1]) or None
        sections.append(Section(start=line_starts[token.map[0]], title=title))
        if token.tag == "h1" and first_h1 is None and title:
            first_h1 = title
    return sections, first_h1


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts += [i + 1 for i, char in enumerate(text) if char == "\n"]
    return starts


def _inline_text(inline: Any) -> str:
    """The plain text of an inline token: its text and code spans, markup dropped."""
    parts: list[str] = []
    stack = list(reversed(inline.children or []))
    while stack:
        child = stack.pop()
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        stack.extend(reversed(child.children or []))
    return " ".join("".join(parts).split())


# --- reStructuredText ---------------------------------------------------------------------------


def read_rst(source: SourceFile) -> Document:
    data, digest = read_bytes(source)
    raw, encoding = decode_text(data)
    text, sections = rst_text_and_sections(raw)
    title = next((s.title for s in sections if s.title), source.path.stem)
    return make_document(
        source, content_hash=digest, title=title, text=text, sections=sections, extra_facts=encoding_facts(encoding)
    )


def rst_text_and_sections(raw: str) -> tuple[str, list[Section]]:
    """The text with title adornments removed, and a `Section` per title line (see the module docstring)."""
    lines = raw.split("\n")
    kept: list[str] = []
    sections: list[Section] = []
    offset = 0
    i = 0
    while i < len(lines):
        previous_blank = i == 0 or not lines[i - 1].strip()
        title, consumed = _rst_title_at(lines, i) if previous_blank else (None, 0)
        if title is not None:
            sections.append(Section(start=offset, title=title))
            kept.append(title)
            offset += len(title) + 1
            i += consumed
            continue
        kept.append(lines[i])
        offset += len(lines[i]) + 1
        i += 1
    return "\n".join(kept), sections


def _rst_title_at(lines: list[str], i: int) -> tuple[str | None, int]:
    """`(title, lines consumed)` when a title (with or without overline) starts at line `i`, else `(None, 0)`."""
    adornment = _adornment(lines[i])
    if adornment and i + 2 < len(lines):  # overline, title, underline
        title = lines[i + 1].strip()
        if title and _adornment(lines[i + 2]) == adornment and len(adornment) >= len(title):
            return title, 3
    line = lines[i]
    if adornment or not line.strip() or line[0].isspace() or i + 1 >= len(lines):
        return None, 0
    underline = _adornment(lines[i + 1])
    if underline and len(underline) >= len(line.rstrip()):
        return line.rstrip(), 2
    return None, 0


def _adornment(line: str) -> str | None:
    """The line itself when it is one punctuation character repeated (two or more times), else None."""
    stripped = line.rstrip()
    if len(stripped) >= 2 and stripped[0] in RST_ADORNMENT and stripped == stripped[0] * len(stripped):
        return stripped
    return None
