"""The document-embedding cache: a corpus encoded once per (model, max_seq_length, corpus).

Encoding is the slow part of a dense index (minutes for a few thousand documents on a laptop CPU),
while building a FAISS index from the vectors takes seconds. So the vectors are kept in their own
directory, keyed by the model's content identity, the truncation length and the corpus
fingerprint, and every FAISS index type (Flat, HNSW, IVF, PQ) is built from the same cached array.
The directory follows the index rules of `stagegraph.indexes.manifest`: `embeddings.npy` plus a manifest,
written atomically and checked (corpus, model, checksums) when read back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stagegraph.corpora.types import Corpus
from stagegraph.atomic import atomic_dir
from stagegraph.hashing import library_versions, stable_hash
from stagegraph.indexes.manifest import IndexLoadError, Manifest, read_manifest, write_manifest
from stagegraph.indexes.text_cache import TextCache

log = logging.getLogger(__name__)

KIND = "embeddings"
FORMAT_VERSION = 1
FILE = "embeddings.npy"
REBUILD_HINT = "delete that directory and run again: the embeddings are re-encoded"


class DocumentEncoder(Protocol):
    """What the cache needs from an encoder (`stagegraph.indexes.encoder.Encoder` is one)."""

    model_name: str
    identity: str
    max_seq_length: int | None
    dim: int

    def encode(self, texts: list[str], *, progress: bool | None = None, desc: str = ...) -> np.ndarray: ...


def embeddings_key(model_identity: str, max_seq_length: int | None, corpus_fingerprint: str) -> str:
    """A short hash naming the cache entry of this model, truncation and corpus."""
    return stable_hash([model_identity, max_seq_length, corpus_fingerprint])[:20]


def save_embeddings(
    directory: str | Path,
    embeddings: np.ndarray,
    *,
    corpus_fingerprint: str,
    model: str,
    model_identity: str,
    max_seq_length: int | None,
) -> None:
    """Write `embeddings` (n, dim float32) and their manifest to `directory`, atomically."""
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    with atomic_dir(directory) as tmp:
        np.save(tmp / FILE, array)
        write_manifest(
            tmp,
            Manifest(
                kind=KIND,
                format_version=FORMAT_VERSION,
                corpus_fingerprint=corpus_fingerprint,
                params={
                    "model": model,
                    "model_identity": model_identity,
                    "max_seq_length": max_seq_length,
                    "count": int(array.shape[0]),
                    "dim": int(array.shape[1]),
                },
                libraries=library_versions(["sentence-transformers", "torch", "numpy"], python=True),
                created_with="stagegraph indexes.embeddings",
            ),
        )


def load_embeddings(
    directory: str | Path,
    *,
    corpus_fingerprint: str,
    model_identity: str,
    max_seq_length: int | None,
    mmap: bool = False,
) -> np.ndarray:
    """Read cached embeddings; `IndexLoadError` when missing, damaged, or for another corpus/model."""
    directory = Path(directory)
    manifest = read_manifest(
        directory,
        kind=KIND,
        format_version=FORMAT_VERSION,
        corpus_fingerprint=corpus_fingerprint,
        rebuild_hint=REBUILD_HINT,
    )
    params = manifest.params
    if params.get("model_identity") != model_identity or params.get("max_seq_length") != max_seq_length:
        raise IndexLoadError(
            f"The embeddings at {directory} were made with model {params.get('model')!r} "
            f"(identity {str(params.get('model_identity'))[:12]}, max_seq_length {params.get('max_seq_length')}), "
            f"not with identity {model_identity[:12]} and max_seq_length {max_seq_length}: they are stale; "
            f"{REBUILD_HINT}."
        )
    array = np.load(directory / FILE, mmap_mode="r" if mmap else None)
    if array.dtype != np.float32 or array.ndim != 2 or array.shape != (params.get("count"), params.get("dim")):
        raise IndexLoadError(
            f"The embeddings at {directory} have shape {array.shape} and type {array.dtype}, not the "
            f"({params.get('count')}, {params.get('dim')}) float32 their manifest records; {REBUILD_HINT}."
        )
    return array


def cached_embeddings(
    encoder: DocumentEncoder,
    corpus: Corpus,
    root: str | Path,
    *,
    progress: bool = True,
    encode: Any = None,
) -> tuple[np.ndarray, Path, bool]:
    """The corpus' embeddings under `root/<key>`: read when valid, else encoded and saved.

    Returns (embeddings, directory, hit). An unusable entry (damaged, partial) is re-encoded with
    a warning; it can never be served.
    """
    key = embeddings_key(encoder.identity, encoder.max_seq_length, corpus.fingerprint)
    directory = Path(root) / key
    if directory.exists():
        try:
            array = load_embeddings(
                directory,
                corpus_fingerprint=corpus.fingerprint,
                model_identity=encoder.identity,
                max_seq_length=encoder.max_seq_length,
            )
            log.info("embeddings read from %s", directory)
            return array, directory, True
        except IndexLoadError as exc:
            log.warning("cached embeddings unusable, re-encoding: %s", exc)
    texts = corpus.doc_texts()
    if encode is not None:  # e.g. sharded over a cluster
        array = np.ascontiguousarray(encode(encoder, texts), dtype=np.float32)
    else:
        array = encoder.encode(texts, progress=progress, desc=f"Encoding {len(corpus)} documents")
    save_embeddings(
        directory,
        array,
        corpus_fingerprint=corpus.fingerprint,
        model=encoder.model_name,
        model_identity=encoder.identity,
        max_seq_length=encoder.max_seq_length,
    )
    return array, directory, False


def text_embeddings(
    encoder: DocumentEncoder, texts: list[str], cache: TextCache, *, progress: bool = True, encode: Any = None
) -> tuple[np.ndarray, int]:
    """Embeddings of `texts` from a per-text cache, encoding only the texts it lacks; (array, encoded).

    The namespace names the model's content identity and the truncation, so a vector is never
    served for another model or another `max_seq_length`.
    """
    namespace = f"embedding:{encoder.identity}:{encoder.max_seq_length}"
    dim = encoder.dim
    array, hit = cache.vectors(namespace, texts, dim)
    todo = np.flatnonzero(~hit)
    if len(todo):
        missing = [texts[i] for i in todo]
        fresh = (np.ascontiguousarray(encode(encoder, missing), dtype=np.float32) if encode is not None
                 else encoder.encode(missing, progress=progress, desc=f"Encoding {len(missing)} new texts"))
        array[todo] = fresh
        cache.put_vectors(namespace, missing, fresh)
    return array, int(len(todo))
