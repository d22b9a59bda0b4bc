"""Walking the paths a user gives into documents: folders recursively, in sorted order, every file once.

`read_paths(paths)` yields a `Document` or a `Skipped` for everything it meets, deterministically:
entries of a folder in sorted order of their names, depth first. Hidden files and folders (a name
starting with ".": `.git`, `.stagegraph`) are passed over without a message; a path given explicitly
is read even when hidden. Symbolic links are followed; a link back to a folder being walked is a
"symlink loop", and a folder or file reached a second time (by another link, a hard link, or two
overlapping paths given) is skipped as "same folder/file as <first path>", all judged by (device,
inode) of the resolved target. A document's id is its path relative to the path given (POSIX form),
a single file's id its name, a record's id its own; an id already given earlier in the same walk is
skipped as a duplicate, so ids are unique in what `read_paths` yields.

`IngestSummary` counts what happened; pass one as `summary=` and it is filled as items are yielded.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from stagegraph.progress import Bar, progress_bar

from stagegraph.corpora.ingest.documents import Document, Skipped
from stagegraph.corpora.ingest.readers import RECORD_READERS, read_file
from stagegraph.corpora.ingest.records import RecordFields
from stagegraph.corpora.ingest.sources import DEFAULT_MAX_FILE_BYTES, NO_FILE_FACTS, FileFacts, SourceFile, os_error_reason
from stagegraph.errors import InputError

_Key = tuple[int, int]  # (st_dev, st_ino)
DEFAULT_FIELDS = RecordFields()


class IngestSummary(BaseModel):
    """What a walk gave: files that gave documents and their total size, the documents, and every skip."""

    model_config = ConfigDict(extra="forbid")

    files_read: int = 0
    bytes_read: int = 0
    documents: int = 0
    skipped: list[Skipped] = Field(default_factory=list)

    def record(self, item: Document | Skipped) -> None:
        if isinstance(item, Document):
            self.documents += 1
        else:
            self.skipped.append(item)


def read_paths(
    paths: list[Path],
    *,
    fields: RecordFields = DEFAULT_FIELDS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    file_facts: FileFacts = NO_FILE_FACTS,
    progress: bool = True,
    summary: IngestSummary | None = None,
) -> Iterator[Document | Skipped]:
    """Every document under `paths`, and a `Skipped` for each file, record or folder that gave none.

    Checks its arguments at once (`InputError` for a path that does not exist or a limit below 1 byte);
    the walk itself happens as the iterator is consumed.
    """
    roots = [Path(p) for p in paths]
    missing = [str(p) for p in roots if not os.path.lexists(p)]
    if missing:
        raise InputError(f"{missing[0]}: no such file or folder; give existing files or folders to read.")
    if max_file_bytes < 1:
        raise InputError(f"max_file_bytes is {max_file_bytes}; give a positive size limit (--max-file-mb).")
    return _read_roots(roots, fields, _Walker(max_file_bytes, file_facts), progress,
                       summary if summary is not None else IngestSummary())


def _read_roots(
    roots: list[Path], fields: RecordFields, walker: _Walker, progress: bool, summary: IngestSummary
) -> Iterator[Document | Skipped]:
    first_source: dict[str, str] = {}
    with progress_bar(desc="reading files", unit="file", disable=not progress) as bar:
        for root in roots:
            for found in walker.walk(root):
                for item, source in _items_of(found, fields, summary, bar):
                    item = _unique(item, source, first_source)
                    summary.record(item)
                    yield item


def _items_of(
    found: SourceFile | Skipped, fields: RecordFields, summary: IngestSummary, bar: Bar
) -> Iterator[tuple[Document | Skipped, str]]:
    """Each item of one file with the `source` a duplicate of it would be reported under."""
    if isinstance(found, Skipped):
        yield found, found.source
        return
    bar.update(1)
    gave_documents = False
    for item in read_file(found, fields):
        gave_documents = gave_documents or isinstance(item, Document)
        yield item, _source_of(found, item)
    if gave_documents:
        summary.files_read += 1
        summary.bytes_read += found.stat.st_size


def _source_of(found: SourceFile, item: Document | Skipped) -> str:
    if isinstance(item, Skipped):
        return item.source
    position = item.metadata.get("line", item.metadata.get("record")) if found.ext in RECORD_READERS else None
    return found.label if position is None else f"{found.label}:{position}"


def _unique(item: Document | Skipped, source: str, first_source: dict[str, str]) -> Document | Skipped:
    """The item, or a `Skipped` when its id was already given by another file or record of this walk."""
    if isinstance(item, Skipped):
        return item
    if item.id in first_source:
        return Skipped(source=source, reason=f"duplicate document id {item.id!r} (first from {first_source[item.id]})")
    first_source[item.id] = source
    return item


class _Walker:
    """Finds the regular files under the given paths, each (device, inode) once, in sorted order."""

    def __init__(self, max_file_bytes: int, file_facts: FileFacts = NO_FILE_FACTS):
        self.max_file_bytes = max_file_bytes
        self.file_facts = file_facts
        self.first_seen: dict[_Key, str] = {}

    def walk(self, root: Path) -> Iterator[SourceFile | Skipped]:
        yield from self._entry(root, root, ancestors=frozenset(), file_id=root.name)

    def _entry(
        self, path: Path, root: Path, ancestors: frozenset[_Key], file_id: str
    ) -> Iterator[SourceFile | Skipped]:
        try:
            st = os.stat(path)
        except OSError as err:
            yield Skipped(source=str(path), reason=os_error_reason(err, path))
            return
        key = (st.st_dev, st.st_ino)
        if stat_module.S_ISDIR(st.st_mode) and key in ancestors:
            yield Skipped(source=str(path), reason="symlink loop")
        elif key in self.first_seen:
            kind = "folder" if stat_module.S_ISDIR(st.st_mode) else "file"
            yield Skipped(source=str(path), reason=f"same {kind} as {self.first_seen[key]}")
        elif stat_module.S_ISDIR(st.st_mode):
            self.first_seen[key] = str(path)
            yield from self._folder(path, root, ancestors | {key})
        elif stat_module.S_ISREG(st.st_mode):
            self.first_seen[key] = str(path)
            yield SourceFile(path=path, id=file_id, stat=st, max_bytes=self.max_file_bytes, file_facts=self.file_facts)
        else:
            yield Skipped(source=str(path), reason="not a regular file (a device, pipe or socket)")

    def _folder(self, folder: Path, root: Path, ancestors: frozenset[_Key]) -> Iterator[SourceFile | Skipped]:
        try:
            with os.scandir(folder) as entries:
                names = sorted(entry.name for entry in entries if not entry.name.startswith("."))
        except OSError as err:
            yield Skipped(source=str(folder), reason=os_error_reason(err, folder))
            return
        for name in names:
            path = folder / name
            yield from self._entry(path, root, ancestors, file_id=path.relative_to(root).as_posix())
