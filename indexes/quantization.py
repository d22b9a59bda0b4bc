"""Quantized dense vectors: which settings work together, and the codes (docs/quantized-dense.md).

* `quantize_problem(quantize, factory, truncate_dim, model_dim, rescore_dtype)`: one line saying why
  a combination cannot work, with the fix (the dense stage's composition check and the index' build
  both ask it);
* `truncate(vectors, dim)`: Matryoshka truncation, the first `dim` dimensions renormalised;
* `binary_codes(vectors)`: the sign bits packed 8 to a byte, by sentence-transformers' quantizer.

The indexes built from them (FAISS SQ8 and binary Flat, the int8 rescoring vectors) are
`stagegraph.indexes.dense.DenseIndex`'s.
"""

from __future__ import annotations

import numpy as np

QUANTIZE = ("none", "int8", "binary")
RESCORE_DTYPES = ("float32", "int8")


def truncate(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """Matryoshka truncation: the first `dim` dimensions of each row, L2-renormalised (None, or a
    `dim` at least the width: the rows unchanged)."""
    if dim is None or dim >= vectors.shape[1]:
        return vectors
    out = np.ascontiguousarray(vectors[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0).astype(np.float32)


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """The sign bits of `vectors` packed 8 to a byte (sentence-transformers' `ubinary` precision)."""
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:  # pragma: no cover - older sentence-transformers
        from sentence_transformers.quantization import quantize_embeddings
    return np.ascontiguousarray(quantize_embeddings(np.asarray(vectors, dtype=np.float32), precision="ubinary"))


def quantize_problem(quantize: str, factory: str, truncate_dim: int | None, model_dim: int | None,
                     rescore_dtype: str = "float32") -> str | None:
    """One line saying why these quantization settings cannot work, with the fix (None: they can).
    `model_dim`: the width of the model's vectors (None: not known yet)."""
    if quantize not in QUANTIZE:
        return f"quantize: {quantize!r} is not one of none, int8, binary"
    if rescore_dtype not in RESCORE_DTYPES:
        return f"rescore_dtype: {rescore_dtype!r} is not one of float32, int8"
    if rescore_dtype == "int8" and quantize != "binary":
        return ("rescore_dtype: int8 keeps one-byte rescoring vectors for a binary index; "
                + ("an int8 index would rescore with its own codes: set rescore_dtype: float32"
                   if quantize == "int8" else "set quantize: binary, or leave rescore_dtype out"))
    if quantize != "none" and factory != "Flat":
        return (f"quantize: {quantize} scans compact codes exhaustively and takes index: Flat, not {factory!r}; "
                "set index: Flat (or quantize: none for a compressed FAISS index such as IVF1024,PQ32)")
    if truncate_dim is not None and model_dim is not None and truncate_dim > model_dim:
        return f"truncate_dim: {truncate_dim} is more than the model's {model_dim} dimensions; set truncate_dim <= {model_dim} or leave it out"
    width = truncate_dim if truncate_dim is not None else model_dim
    if quantize == "binary" and width is not None and width % 8:
        return (f"quantize: binary packs 8 dimensions a byte, and {width} is not a multiple of 8; "
                f"set truncate_dim: {width - width % 8 or 8} (a multiple of 8)")
    return None
