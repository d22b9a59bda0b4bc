"""Index directories on disk: `manifest.json`, checksums, atomic writes and load-time checks.

Every persisted index (BM25, dense, embeddings) is a directory holding its data files and a
`manifest.json` that records the format version, the parameters it was built with, the corpus
fingerprint, library versions and a SHA-256 per file. Indexes are written with
`stagegraph.atomic.atomic_dir` (a temporary sibling renamed into place only when everything is
written), so a crash never leaves half an index behind and an existing index survives a failed
rebuild. `read_manifest`
refuses a missing, damaged, stale (other corpus) or incompatible (other format) index with a
message that says how to rebuild it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from stagegraph import atomic
from stagegraph.errors import StageError
from stagegraph.hashing import check_files, sha256_file

MANIFEST = "manifest.json"


class IndexLoadError(StageError):
    """An index cannot be used as it is; the message says why and how to rebuild it."""


class Manifest(BaseModel):
    kind: str
    format_version: int
    corpus_fingerprint: str
    params: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256
    libraries: dict[str, str] = Field(default_factory=dict)
    created_with: str = ""


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Checksum every file already in `directory` into `manifest` and write `manifest.json`."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(directory).as_posix()] = sha256_file(path)
    manifest = manifest.model_copy(update={"files": files})
    atomic.write_text(directory / MANIFEST, manifest.model_dump_json(indent=2))


def read_manifest(
    directory: str | os.PathLike[str],
    *,
    kind: str,
    format_version: int,
    corpus_fingerprint: str | None = None,
    verify_checksums: bool = True,
    rebuild_hint: str = "rebuild it with `stagegraph index CONFIG --dataset DATASET`",
) -> Manifest:
    """Load and check `directory/manifest.json`; raise `IndexLoadError` naming the problem and fix."""
    directory = Path(directory)
    path = directory / MANIFEST
    where = f"index at {directory}"
    if not path.is_file():
        raise IndexLoadError(f"No {MANIFEST} in the {where}: it is not an index or was not fully written; {rebuild_hint}.")
    try:
        manifest = Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise IndexLoadError(f"The {MANIFEST} of the {where} is damaged ({exc.__class__.__name__}); {rebuild_hint}.") from exc
    if manifest.kind != kind:
        raise IndexLoadError(f"The {where} is a {manifest.kind!r} index, not a {kind!r} index; {rebuild_hint}.")
    if manifest.format_version != format_version:
        raise IndexLoadError(
            f"The {where} has format version {manifest.format_version}; this stagegraph reads version "
            f"{format_version}; {rebuild_hint}."
        )
    if corpus_fingerprint is not None and manifest.corpus_fingerprint != corpus_fingerprint:
        raise IndexLoadError(
            f"The {where} was built for another corpus (fingerprint {manifest.corpus_fingerprint[:12]}, "
            f"this corpus is {corpus_fingerprint[:12]}): it is stale; {rebuild_hint}."
        )
    problem = check_files(directory, manifest.files, owner=f"The {where}", fix=f"{rebuild_hint}.",
                          checksums=verify_checksums)
    if problem:
        raise IndexLoadError(problem)
    return manifest
