"""Reading a user's own files into documents: every format from real small files, every skip reason exactly."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from stagegraph.corpora.ingest import Document, FileFacts, IngestSummary, RecordFields, Skipped, read_paths
from stagegraph.errors import InputError
from stagegraph.hashing import stable_hash


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def read(*paths: Path, **options) -> list[Document | Skipped]:
    return list(read_paths(list(paths), progress=False, **options))


def documents(items) -> dict[str, Document]:
    return {item.id: item for item in items if isinstance(item, Document)}


def skips(items) -> dict[str, str]:
    return {item.source: item.reason for item in items if isinstance(item, Skipped)}


def only_document(path: Path, **options) -> Document:
    (item,) = read(path, **options)
    assert isinstance(item, Document), item
    return item


def only_skip(path: Path, **options) -> str:
    (item,) = read(path, **options)
    assert isinstance(item, Skipped), item
    assert item.source == str(path)
    return item.reason


def minimal_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A valid PDF written by hand: one Helvetica text stream per page (an empty list: a blank page)."""
    page_count = len(pages)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(page_count)), page_count),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for lines in pages:
        shown = b"".join(b"(" + line.encode("latin-1") + b") Tj T* " for line in lines)
        stream = b"BT /F1 12 Tf 14 TL 72 720 Td " + shown + b"ET"
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R >> >> >>" % (len(objects) + 2))
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info = b""
    if title is not None:
        objects.append(b"<< /Title (" + title.encode("latin-1") + b") >>")
        info = b" /Info %d 0 R" % len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, info, xref)
    return bytes(out)


def encrypted(pdf: bytes, *, user_password: str, owner_password: str = "owner") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --- Markdown, RST, HTML, text -----------------------------------------------------------------

GUIDE = """---
title: Front-matter title
date: 2024-01-02
tags: [setup, gpu]
path: should not win
---

# Getting started

Intro paragraph.

## Install **it**

Run `pip install stagegraph`.

```
# a comment in code, not a heading
```

Configure
---------

Edit the YAML.
"""


def test_markdown_front_matter_becomes_metadata_and_headings_become_sections(tmp_path):
    path = write(tmp_path / "notes" / "guide.md", GUIDE)
    doc = only_document(tmp_path)
    assert doc.id == "notes/guide.md"
    assert doc.title == "Getting started"
    assert doc.text.startswith("# Getting started\n\nIntro paragraph.") and "---\ntitle" not in doc.text
    assert doc.metadata["title"] == "Front-matter title"
    assert doc.metadata["date"] == "2024-01-02"
    assert doc.metadata["tags"] == ["setup", "gpu"]
    assert doc.metadata["path"] == "notes/guide.md"  # the file's facts (relative) win over a user field of the same name
    assert [s.title for s in doc.sections] == ["Getting started", "Install it", "Configure"]
    assert doc.text[doc.sections[1].start :].startswith("## Install **it**")
    assert doc.text[doc.sections[2].start :].startswith("Configure\n---------")
    assert doc.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_facts_are_a_relative_path_and_extension_unless_the_operator_asks_for_more(tmp_path):
    """Issue 23.5 (finding 6): no client learns the server's folders, file sizes or times by default."""
    path = write(tmp_path / "docs" / "sub" / "Report.MARKDOWN", "plain words\n")
    os.utime(path, (1_700_000_000.25, 1_700_000_000.25))
    doc = only_document(path)
    assert doc.id == "Report.MARKDOWN"  # a single file's id is its name
    assert doc.metadata == {"path": "Report.MARKDOWN", "ext": "markdown"}
    (doc,) = documents(read(tmp_path / "docs")).values()
    assert doc.metadata["path"] == "sub/Report.MARKDOWN" and str(tmp_path) not in json.dumps(doc.metadata)
    assert "size" not in doc.metadata and "mtime" not in doc.metadata
    doc = only_document(path, file_facts=FileFacts(absolute_paths=True, size_and_mtime=True))
    assert {k: doc.metadata[k] for k in ("path", "ext", "size")} == {"path": str(path.absolute()), "ext": "markdown", "size": 12}
    mtime = dt.datetime.fromisoformat(doc.metadata["mtime"])
    assert mtime.utcoffset() == dt.timedelta(0)
    assert mtime.timestamp() == pytest.approx(1_700_000_000.25)


@pytest.mark.parametrize(
    ("content", "title"),
    [
        ("---\ntitle: From front matter\n---\n## Only a subheading\n\nText.\n", "From front matter"),
        ("No heading at all.\n", "plain-notes"),
    ],
)
def test_markdown_title_falls_back_to_front_matter_then_stem(tmp_path, content, title):
    assert only_document(write(tmp_path / "plain-notes.md", content)).title == title


def test_markdown_with_broken_front_matter_is_skipped(tmp_path):
    reason = only_skip(write(tmp_path / "bad.md", "---\ntitle: [unclosed\n---\nbody\n"))
    assert reason.startswith("invalid front matter (") and "\n" not in reason


def test_rst_titles_become_sections_and_lose_their_adornments(tmp_path):
    source = "=======\nManual\n=======\n\nOpening words.\n\nUsage\n-----\n\nCall it.\n  indented\n  ~~~~~~~~\n"
    doc = only_document(write(tmp_path / "manual.rst", source))
    assert doc.title == "Manual"
    assert doc.text == "Manual\n\nOpening words.\n\nUsage\n\nCall it.\n  indented\n  ~~~~~~~~\n"
    assert [(s.title, doc.text[s.start : s.start + len(s.title)]) for s in doc.sections] == [
        ("Manual", "Manual"), ("Usage", "Usage"),
    ]


def test_html_keeps_visible_text_only_and_headings_as_sections(tmp_path):
    page = (
        "<!doctype html><html><head><title> The  page </title><style>p { color: red }</style>"
        "<script>var hidden = 1;</script></head><body><h1>Welcome</h1><p>Hello <b>bold</b>\n  world"
        "<script>track()</script>!</p><!-- a comment --><div hidden>secret</div><ul><li>one</li><li>two</li></ul>"
        "<h2>More &amp; more</h2><pre>a  b\n c</pre><noscript>enable js</noscript></body></html>"
    )
    doc = only_document(write(tmp_path / "index.htm", page))
    assert doc.title == "The page"
    assert doc.text == "Welcome\n\nHello bold world!\n\none\ntwo\n\nMore & more\n\na  b\n c"
    assert [(s.title, doc.text[s.start :].split("\n")[0]) for s in doc.sections] == [
        ("Welcome", "Welcome"), ("More & more", "More & more"),
    ]


def test_latin1_text_is_decoded_and_the_guess_recorded(tmp_path):
    text = "Café crème, déjà vu: à la française. Le garçon était très âgé.\n"
    doc = only_document(write(tmp_path / "french.txt", text.encode("latin-1")))
    assert doc.text == text
    assert doc.metadata["encoding"] == "cp1252"
    assert doc.title == "french"


def test_utf16_with_a_byte_order_mark_is_text_not_binary(tmp_path):
    doc = only_document(write(tmp_path / "wide.txt", "\ufeffgrüße\r\naus Köln\r\n".encode("utf-16-le")))
    assert doc.text == "grüße\naus Köln\n"


# --- PDF ------------------------------------------------------------------------------------------


def test_pdf_text_per_page_with_a_section_per_page(tmp_path):
    pdf = minimal_pdf([["First page, line one.", "Line two."], [], ["Third page."]], title="Quarterly report")
    doc = only_document(write(tmp_path / "report.pdf", pdf))
    assert doc.title == "Quarterly report"
    assert doc.text == "First page, line one.\nLine two.\n\nThird page."
    assert [(s.page, doc.text[s.start :]) for s in doc.sections] == [
        (1, doc.text), (3, "Third page."),
    ]
    assert doc.metadata["pages"] == 3 and doc.metadata["ext"] == "pdf"


def test_pdf_protected_by_a_password_is_skipped_but_owner_only_restrictions_are_read(tmp_path):
    pdf = minimal_pdf([["Secret text."]])
    assert only_skip(write(tmp_path / "locked.pdf", encrypted(pdf, user_password="pw"))) == "encrypted PDF"
    assert only_document(write(tmp_path / "restricted.pdf", encrypted(pdf, user_password=""))).text == "Secret text."


def test_pdf_without_text_or_damaged_is_skipped(tmp_path):
    assert only_skip(write(tmp_path / "scan.pdf", minimal_pdf([[]]))) == "no text layer (a scanned PDF needs OCR first)"
    reason = only_skip(write(tmp_path / "broken.pdf", b"%PDF-1.4\nnot really a pdf"))
    assert reason.startswith("damaged PDF (") and "\n" not in reason


# --- JSON and JSONL records -------------------------------------------------------------------------


def test_jsonl_records_with_duplicates_missing_text_and_bad_lines(tmp_path):
    rows = [
        {"id": "a", "title": "Alpha", "text": "first", "lang": "en", "year": 2020},
        {"_id": 7, "text": "BEIR-style id, an integer"},
        {"id": "a", "text": "again"},
        {"id": "b", "title": "No text"},
        {"id": "c", "text": "   "},
        "not json",
        [1, 2],
        {"title": "no id", "text": "orphan"},
    ]
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path = write(tmp_path / "corpus.jsonl", "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    items = read(path)
    docs = documents(items)
    assert list(docs) == ["a", "7"]
    assert docs["a"].title == "Alpha" and docs["a"].text == "first"
    assert docs["a"].metadata == {"lang": "en", "year": 2020, "path": path.name, "line": 1}
    assert docs["7"].title == "" and docs["7"].metadata["line"] == 2
    assert skips(items) == {
        f"{path}:4": "duplicate record id 'a' (first at line 1)",
        f"{path}:5": "record without text",
        f"{path}:6": "record without text",
        f"{path}:7": "invalid JSON (Expecting value)",
        f"{path}:8": "not a JSON object but list",
        f"{path}:9": "record without id (field 'id')",
    }


def test_record_hash_is_the_canonical_json_of_the_record(tmp_path):
    first = {"id": "x", "text": "same", "tag": 1}
    path = write(tmp_path / "one.jsonl", json.dumps(first) + "\n")
    doc = only_document(path)
    assert doc.content_hash == stable_hash({"tag": 1, "text": "same", "id": "x"})
    write(path, json.dumps({"id": "x", "text": "same", "tag": 2}) + "\n")
    assert only_document(path).content_hash != doc.content_hash


def test_field_mapping_and_chosen_metadata_fields(tmp_path):
    rows = [{"doc": "p1", "heading": "H", "body": "the body", "url": "u", "secret": "s"}]
    path = write(tmp_path / "data.json", json.dumps(rows))
    fields = RecordFields(id="doc", title="heading", text="body", metadata=["url", "missing"])
    doc = only_document(path, fields=fields)
    assert (doc.id, doc.title, doc.text) == ("p1", "H", "the body")
    assert doc.metadata == {"url": "u", "path": path.name, "record": 1}
    with pytest.raises(ValidationError):
        RecordFields(identifier="doc")


def test_json_file_of_records_reports_positions(tmp_path):
    path = write(tmp_path / "list.json", json.dumps([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]))
    assert skips(read(path)) == {f"{path}:2": "duplicate record id 'a' (first at record 1)"}
    assert only_skip(write(tmp_path / "bad.json", "{oops")) == (
        "invalid JSON (Expecting property name enclosed in double quotes at line 1)"
    )


# --- skips ----------------------------------------------------------------------------------------------


def test_every_file_skip_reason(tmp_path):
    write(tmp_path / "binary.txt", b"GIF89a\x00\x01\x02 pixels")
    write(tmp_path / "empty.md", b"")
    write(tmp_path / "front-matter-only.md", "---\ntitle: nothing else\n---\n")
    write(tmp_path / "garbage.txt", bytes(range(128, 256)) * 20)
    write(tmp_path / "big.txt", "x" * 3001)
    write(tmp_path / "image.xyz", "data")
    write(tmp_path / "Makefile", "all:")
    write(tmp_path / "blank.jsonl", "\n\n")
    write(tmp_path / "ok.txt", "fine")
    os.mkfifo(tmp_path / "pipe.txt")
    assert skips(read(tmp_path, max_file_bytes=3000)) == {
        str(tmp_path / "binary.txt"): "binary file",
        str(tmp_path / "empty.md"): "empty",
        str(tmp_path / "front-matter-only.md"): "empty",
        str(tmp_path / "garbage.txt"): "undecodable text",
        str(tmp_path / "big.txt"): "larger than 3000 bytes (--max-file-mb)",
        str(tmp_path / "image.xyz"): "unsupported extension .xyz",
        str(tmp_path / "Makefile"): "no file extension",
        str(tmp_path / "blank.jsonl"): "empty",
        str(tmp_path / "pipe.txt"): "not a regular file (a device, pipe or socket)",
    }


def test_size_limit_reads_in_megabytes_and_spares_streamed_jsonl(tmp_path):
    big = write(tmp_path / "big.md", "word " * 300_000)
    assert only_skip(big, max_file_bytes=1024 * 1024) == "larger than 1 MB (--max-file-mb)"
    stream = write(tmp_path / "big.jsonl", json.dumps({"id": "r", "text": "t" * 2000}) + "\n")
    assert only_document(stream, max_file_bytes=100).text == "t" * 2000


def test_symlinks_are_followed_and_loops_and_repeats_are_reported(tmp_path):
    root = tmp_path / "root"
    write(root / "real" / "a.txt", "alpha")
    (root / "real" / "loop").symlink_to(root)
    (root / "alias").symlink_to(root / "real")
    (root / "link.txt").symlink_to(root / "real" / "a.txt")
    (root / "self.txt").symlink_to(root / "self.txt")
    (root / "dangling.txt").symlink_to(root / "nowhere.txt")
    items = read(root)
    assert list(documents(items)) == ["alias/a.txt"]  # sorted: "alias" comes before "real"
    assert skips(items) == {
        str(root / "alias" / "loop"): "symlink loop",
        str(root / "dangling.txt"): "broken symlink",
        str(root / "link.txt"): f"same file as {root / 'alias' / 'a.txt'}",
        str(root / "real"): f"same folder as {root / 'alias'}",
        str(root / "self.txt"): "symlink loop",
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_and_folder(tmp_path):
    write(tmp_path / "locked.txt", "secret").chmod(0)
    write(tmp_path / "closed" / "inside.txt", "secret")
    (tmp_path / "closed").chmod(0)
    try:
        assert skips(read(tmp_path)) == {
            str(tmp_path / "locked.txt"): "unreadable: Permission denied",
            str(tmp_path / "closed"): "unreadable: Permission denied",
        }
    finally:
        (tmp_path / "closed").chmod(0o755)


# --- the walk ---------------------------------------------------------------------------------------------


def test_walk_is_sorted_skips_hidden_entries_silently_and_names_ids_relative_to_the_root(tmp_path):
    root = tmp_path / "docs"
    for name in ["b.txt", "a/z.txt", "a/b/c.txt", "A.txt", ".hidden.txt", ".git/config.txt", "a/.stagegraph/x.txt"]:
        write(root / name, f"text of {name}")
    items = read(root)
    assert [item.id for item in items] == ["A.txt", "a/b/c.txt", "a/z.txt", "b.txt"]
    assert documents(items)["a/b/c.txt"].text == "text of a/b/c.txt"
    assert only_document(root / ".hidden.txt").id == ".hidden.txt"  # named explicitly, it is read


def test_ids_stay_unique_across_files_and_paths(tmp_path):
    write(tmp_path / "one" / "notes.txt", "first")
    write(tmp_path / "two" / "notes.txt", "second")
    write(tmp_path / "one" / "r.jsonl", json.dumps({"id": "notes.txt", "text": "a record"}) + "\n")
    items = read(tmp_path / "one", tmp_path / "two")
    assert [d.text for d in documents(items).values()] == ["first"]
    duplicate = f"duplicate document id 'notes.txt' (first from {tmp_path / 'one' / 'notes.txt'})"
    assert skips(items) == {
        f"{tmp_path / 'one' / 'r.jsonl'}:1": duplicate, str(tmp_path / "two" / "notes.txt"): duplicate,
    }


def test_summary_counts_files_bytes_documents_and_skips(tmp_path):
    write(tmp_path / "a.txt", "12345")
    write(tmp_path / "r.jsonl", '{"id": "x", "text": "t"}\n{"id": "y", "text": "u"}\n{"id": "z"}\n')
    write(tmp_path / "bin.txt", b"\x00\x00")
    summary = IngestSummary()
    items = read(tmp_path, summary=summary)
    assert summary.documents == 3 == len(documents(items))
    assert summary.files_read == 2
    assert summary.bytes_read == 5 + (tmp_path / "r.jsonl").stat().st_size
    assert [str(s) for s in summary.skipped] == [
        f"{tmp_path / 'bin.txt'}: binary file", f"{tmp_path / 'r.jsonl'}:3: record without text",
    ]


def test_missing_paths_and_bad_limits_are_refused_before_the_walk(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        read_paths([tmp_path / "absent"])  # not iterated: the check is immediate
    with pytest.raises(InputError, match="positive size limit"):
        read_paths([tmp_path], max_file_bytes=0)


def test_progress_bar_can_be_silenced(tmp_path, capsys):
    write(tmp_path / "a.txt", "text")
    list(read_paths([tmp_path], progress=False))
    assert capsys.readouterr().err == ""
    list(read_paths([tmp_path], progress=True))
    assert "reading files" in capsys.readouterr().err
