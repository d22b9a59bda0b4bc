"""The one hasher: content identities for settings, strings, files and installed libraries.

* `stable_hash(payload)`: a JSON rendering with sorted keys, so equal settings hash equally whatever
  their key order; every fingerprint and cache key in stagegraph is built with it;
* `hash_strings(parts)`: length-prefixed strings, so ("ab", "c") and ("a", "bc") differ;
* `sha256_file(path)`: a file's checksum, read in blocks;
* `check_files(directory, files, ...)`: a directory's files against the checksums a manifest
  recorded (index manifests and collection generations both check theirs with it);
* `library_versions(names)`: the installed version of each distribution, for fingerprints, index
  manifests and reports.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def stable_hash(payload: Any) -> str:
    """SHA-256 of a JSON rendering with sorted keys: equal settings give equal hashes."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_strings(parts: Iterable[str]) -> str:
    """SHA-256 over length-prefixed UTF-8 strings (no two sequences of strings collide by joining).
    A lone surrogate is hashed as its own code unit ("surrogatepass"), so no string makes it fail."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_files(
    directory: str | Path, files: Mapping[str, str], *, owner: str, fix: str, checksums: bool = True
) -> str | None:
    """The one-line error for the first of `files` (path relative to `directory` -> SHA-256) that is
    missing or, with `checksums`, has other content: "{owner}: the file {path} is missing; {fix}" or
    "{owner}: the file {path} is damaged (checksum mismatch); {fix}". None when all are intact."""
    for rel, expected in files.items():
        file = Path(directory) / rel
        if not file.is_file():
            return f"{owner}: the file {rel} is missing; {fix}"
        if checksums and sha256_file(file) != expected:
            return f"{owner}: the file {rel} is damaged (checksum mismatch); {fix}"
    return None


@functools.lru_cache(maxsize=None)
def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def library_versions(distributions: Iterable[str], *, python: bool = False) -> dict[str, str]:
    """`{distribution: installed version}` ("not installed" when absent), with Python's if asked."""
    found = {"python": platform.python_version()} if python else {}
    found.update({name: _version(name) for name in distributions})
    return found
