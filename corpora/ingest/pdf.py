"""PDF files into documents with pypdf: the text of each page, a `Section(page=n)` where each page begins.

Pages are joined with a blank line; pages without text (figures, blank pages) add nothing and have
no section, but `metadata["pages"]` counts them all. The title is the PDF's own `/Title`, else the
file's stem. A PDF that needs a password is skipped ("encrypted PDF"); one encrypted with an empty
user password (owner restrictions only) opens and is read. A PDF without any text layer is skipped
too: it needs OCR first. pypdf is pure Python and handles the common damage (bad xref tables) itself;
whatever it still cannot parse is skipped as "damaged PDF (...)" rather than stopping the ingest.
"""

from __future__ import annotations

import io

from stagegraph.corpora.ingest.documents import Document, Section
from stagegraph.corpora.ingest.sources import SourceFile, Unreadable, make_document, normalize_newlines, read_bytes

PAGE_SEPARATOR = "\n\n"


def read_pdf(source: SourceFile) -> Document:
    data, digest = read_bytes(source)
    title, pages = pdf_pages(data)
    text_parts: list[str] = []
    sections: list[Section] = []
    offset = 0
    for number, page_text in enumerate(pages, start=1):
        if not page_text.strip():
            continue
        if text_parts:
            text_parts.append(PAGE_SEPARATOR)
            offset += len(PAGE_SEPARATOR)
        sections.append(Section(start=offset, page=number))
        text_parts.append(page_text)
        offset += len(page_text)
    if not text_parts:
        raise Unreadable("no text layer (a scanned PDF needs OCR first)")
    return make_document(
        source, content_hash=digest, title=title or source.path.stem, text="".join(text_parts),
        sections=sections, extra_facts={"pages": len(pages)},
    )


def pdf_pages(data: bytes) -> tuple[str, list[str]]:
    """`(title, text of each page)`; `Unreadable` for an encrypted or unparseable PDF."""
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise Unreadable("encrypted PDF")
        pages = [normalize_newlines(page.extract_text() or "").strip() for page in reader.pages]
        title = reader.metadata.title if reader.metadata is not None else None
    except Unreadable:
        raise
    except DependencyError:  # AES needs the `cryptography` package, even for an empty password
        raise Unreadable("encrypted PDF") from None
    except Exception as err:  # noqa: BLE001 - pypdf on arbitrary bytes: any failure means "cannot be read"
        message = " ".join(str(err).split()) or type(err).__name__
        raise Unreadable(f"damaged PDF ({message})") from None
    return (title.strip() if isinstance(title, str) else ""), pages

