"""Token embeddings of a collection's chunks, one store per segment, for the late-interaction stage.

A store is the directory `env.artefact_dir("late_interaction", key)` (key: the segment's fingerprint,
the model's content identity, `document_length`, the document prefix, the dtype and this format's
version) holding

* `tokens.npy`: every chunk's token embeddings one after another, `[tokens, dim]`, float16 or float32;
* `offsets.npy`: int64 `[rows + 1]`, chunk `r`'s tokens are `tokens[offsets[r]:offsets[r + 1]]`;
* `info.json`: format, segment fingerprint, rows, dim, dtype.

A collection's writer builds the store of each new segment when it publishes a generation (the stage
declares `indexes_corpus`), through the collection's text cache, so a merged or re-ingested segment
encodes only texts it has not seen; readers memory-map both arrays (`np.load(mmap_mode="r")`), so
opening a store costs no RAM and a rerank reads only its candidates' rows. Stores are written with
`atomic_dir` (a crash leaves none half-written); a damaged or foreign one reads as missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from stagegraph.atomic import atomic_dir
from stagegraph.hashing import stable_hash

FORMAT_VERSION = 1


class TokenStore:
    """One segment's token embeddings (memory-mapped): `store[row]` is chunk `row`'s `[tokens, dim]`."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        self.tokens = tokens
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> np.ndarray:
        return self.tokens[self.offsets[row]: self.offsets[row + 1]]

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes + self.offsets.nbytes)


def store_key(segment_fingerprint: str, model_identity: str, document_length: int, prefix: str, dtype: str) -> str:
    payload = {"segment": segment_fingerprint, "model": model_identity, "document_length": document_length,
               "prefix": prefix, "dtype": dtype, "format": FORMAT_VERSION}
    return stable_hash(payload)[:16]


def save_store(directory: Path, embeddings: Sequence[np.ndarray], *, fingerprint: str, dim: int, dtype: str) -> None:
    """Write the store of one segment's chunks (`embeddings[row]`: `[tokens, dim]`), atomically."""
    offsets = np.zeros(len(embeddings) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in embeddings])
    tokens = np.concatenate(embeddings).astype(dtype, copy=False) if embeddings else np.empty((0, dim), dtype=dtype)
    with atomic_dir(Path(directory)) as tmp:
        np.save(tmp / "tokens.npy", tokens)
        np.save(tmp / "offsets.npy", offsets)
        (tmp / "info.json").write_text(json.dumps({"format": FORMAT_VERSION, "segment": fingerprint,
                                                   "rows": len(embeddings), "dim": dim, "dtype": dtype}),
                                       encoding="utf-8")


def load_store(directory: Path, fingerprint: str) -> TokenStore | None:
    """The saved store of this segment, memory-mapped; None when missing, another segment's or damaged."""
    try:
        info = json.loads((Path(directory) / "info.json").read_text(encoding="utf-8"))
        if info.get("format") != FORMAT_VERSION or info.get("segment") != fingerprint:
            return None
        tokens = np.load(Path(directory) / "tokens.npy", mmap_mode="r", allow_pickle=False)
        offsets = np.load(Path(directory) / "offsets.npy", allow_pickle=False)
        sound = (tokens.ndim == 2 and tokens.shape[1] == info["dim"] and str(tokens.dtype) == info["dtype"]
                 and offsets.shape == (info["rows"] + 1,) and offsets[0] == 0 and offsets[-1] == len(tokens)
                 and bool(np.all(np.diff(offsets) >= 0)))
        return TokenStore(tokens, offsets) if sound else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def encode_through_cache(encode: Callable[[list[str]], list[np.ndarray]], texts: Sequence[str], cache: object,
                         namespace: str, *, dim: int, dtype: str) -> tuple[list[np.ndarray], int]:
    """Every text's token embeddings (`dtype`), from a per-text cache (`TextCache`) where it has them,
    `encode`d (and put in the cache) otherwise. Returns them and how many texts were encoded."""
    from stagegraph.indexes.text_cache import text_key

    keys = [text_key(t) for t in texts]
    found = cache.get_many(namespace, sorted(set(keys)))  # type: ignore[attr-defined]
    out: list[np.ndarray | None] = [None if key not in found else
                                    np.frombuffer(found[key], dtype=dtype).reshape(-1, dim) for key in keys]
    todo = sorted({key: i for i, key in reversed(list(enumerate(keys))) if out[i] is None}.values())
    if todo:
        fresh = [e.astype(dtype) for e in encode([texts[i] for i in todo])]
        cache.put_many(namespace, ((keys[i], e.tobytes()) for i, e in zip(todo, fresh)))  # type: ignore[attr-defined]
        by_key = {keys[i]: e for i, e in zip(todo, fresh)}
        out = [by_key[keys[i]] if e is None else e for i, e in enumerate(out)]
    return out, len(todo)  # type: ignore[return-value]
