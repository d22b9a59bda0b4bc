"""Precomputed document vectors ("bring your own vectors"): one per corpus row, and the model that made them.

A user with an embedding service writes each record's vector into a JSONL field (`--vector-field
embedding` on `stagegraph ingest`, `RecordFields(vector="embedding", vector_model=...)` in Python)
and declares which model made them (`vector_model`, the name a dense stage's `model:` uses). A
dense stage bound to an environment whose `vectors` is a `CorpusVectors` indexes those vectors
instead of encoding the documents; queries are still encoded by the stage's model, so the stage
refuses a `model` other than the declared one (and the declared model must be loadable here).

* `as_vector(values)`: a record's value checked and made a float32 row: a non-empty list of finite
  numbers, else `ValueError` with the reason (the callers add the record's id);
* `CorpusVectors(model, array, fingerprint)`: the rows' vectors, aligned with the corpus rows;
  `fingerprint` names their content (it keys the dense index built from them, so a changed vector
  never reuses an index built from the old one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def as_vector(values: Any) -> np.ndarray:
    """`values` (a list of numbers, or float32 bytes) as a 1-D float32 array; `ValueError` saying what is wrong."""
    if isinstance(values, (bytes, bytearray)):
        if not values or len(values) % 4:
            raise ValueError(f"holds {len(values)} bytes, not a whole number of float32 values")
        array = np.frombuffer(bytes(values), dtype=np.float32)
    elif isinstance(values, np.ndarray) or (isinstance(values, Sequence) and not isinstance(values, str)):
        if isinstance(values, Sequence) and any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            bad = next(v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)))
            raise ValueError(f"holds {type(bad).__name__} {str(bad)[:20]!r}; a vector is a list of numbers")
        array = np.asarray(values, dtype=np.float32)
    else:
        raise ValueError(f"is {type(values).__name__}, not a list of numbers")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"has shape {array.shape}; a vector is a non-empty flat list of numbers")
    if not np.isfinite(array).all():
        raise ValueError("holds NaN or an infinity (or a number too large for float32)")
    return array


def vector_fingerprint(model: str, array: np.ndarray) -> str:
    """SHA-256 of the model name and the float32 bytes of every row."""
    digest = hashlib.sha256(model.encode("utf-8") + b"\x00")
    digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CorpusVectors:
    """Precomputed vectors of a corpus' rows (row i of `array` belongs to corpus row i), made by `model`."""

    model: str
    array: np.ndarray = field(repr=False)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.array.ndim != 2 or self.array.dtype != np.float32:
            raise ValueError(f"CorpusVectors needs a 2-D float32 array, not {self.array.dtype} {self.array.shape}")
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", vector_fingerprint(self.model, self.array))

    @classmethod
    def of(cls, model: str, rows: Sequence[Any]) -> CorpusVectors:
        """From one vector (list of numbers) per corpus row; every row must have the same length."""
        vectors = [as_vector(r) for r in rows]
        dims = {len(v) for v in vectors}
        if len(dims) > 1:
            raise ValueError(f"the vectors have different lengths ({sorted(dims)}); one model makes one length")
        width = dims.pop() if dims else 0
        return cls(model, np.stack(vectors) if vectors else np.zeros((0, width), dtype=np.float32))

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def __len__(self) -> int:
        return int(self.array.shape[0])

