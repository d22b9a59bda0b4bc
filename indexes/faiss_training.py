"""Making a FAISS factory string trainable on the vectors at hand, and training it.

`adapt_factory` lowers IVF list counts and PQ code sizes to what `n` vectors can train (FAISS's
k-means wants >= 39 points per centroid) and warns when it changes anything; `train_and_add` trains
on a seeded sample and adds every row in chunks, with a progress bar; `skip_polysemous_training`
turns off the slow PQ code reordering only Hamming-filtered search needs. Used by
`stagegraph.indexes.dense.DenseIndex.build`.
"""

from __future__ import annotations

import math
import re
import warnings

import faiss
import numpy as np
from stagegraph.progress import progress_bar

MIN_POINTS_PER_LIST = 39  # FAISS k-means warns below this many training points per centroid
ADD_CHUNK = 65_536


def adapt_factory(factory: str, n: int, dim: int) -> str:
    """`factory` with IVF list counts and PQ code sizes lowered to what `n` vectors can train.

    Warns when it changes anything. Raises `ValueError` for an empty corpus with a trained index.
    """
    spec = factory.strip()
    needs_training = bool(re.search(r"IVF|PQ|SQ|LSH|PCA|OPQ|RQ|LSQ", spec))
    if needs_training and n == 0:
        raise ValueError(f"Cannot train the FAISS index {factory!r} on an empty corpus; use 'Flat'.")

    notes: list[str] = []

    def clamp_ivf(match: re.Match[str]) -> str:
        nlist = int(match.group(1))
        limit = max(1, n // MIN_POINTS_PER_LIST)
        if nlist <= limit:
            return match.group(0)
        notes.append(
            f"{factory!r}: {nlist} IVF lists need >= {nlist * MIN_POINTS_PER_LIST} vectors to train, the corpus "
            f"has {n}; using IVF{limit}."
        )
        return f"IVF{limit}"

    def clamp_pq(match: re.Match[str]) -> str:
        prefix, m, nbits = match.group(1), match.group(2), int(match.group(4) or 8)
        limit = max(1, min(nbits, int(math.floor(math.log2(max(n / MIN_POINTS_PER_LIST, 2))))))
        if n < 2 ** limit:
            raise ValueError(
                f"Cannot train the PQ codes of {factory!r} on {n} vector(s) (even {limit}-bit codes need "
                f"{2 ** limit}); use index 'Flat' for a corpus this small."
            )
        if nbits <= limit:
            return match.group(0)
        notes.append(
            f"{factory!r}: {nbits}-bit PQ codes need >= {MIN_POINTS_PER_LIST * 2 ** nbits} vectors to train, "
            f"the corpus has {n}; using {limit}-bit codes."
        )
        return f"{prefix}PQ{m}x{limit}"

    spec = re.sub(r"IVF(\d+)(?=[,_])", clamp_ivf, spec)
    spec = re.sub(r"(^|,|_)PQ(\d+)(x(\d+))?(?=$|,|np)", clamp_pq, spec)
    for note in notes:
        warnings.warn(note, stacklevel=3)  # points at the caller of DenseIndex.build
    return spec


def skip_polysemous_training(index: faiss.Index) -> None:
    """FAISS's factory turns on polysemous training for `PQ` (not `PQ...np`): a slow code reordering
    that only helps Hamming-filtered search, which this index never uses."""
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexIVF):
        inner = faiss.downcast_index(faiss.extract_index_ivf(inner))
    if getattr(inner, "do_polysemous_training", False):
        inner.do_polysemous_training = False


def train_and_add(index: faiss.Index, vectors: np.ndarray, built: str, train_sample: int, seed: int, progress: bool) -> None:
    """Train on a seeded sample of `train_sample` rows when the index needs it, then add every row."""
    n = len(vectors)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        size = min(n, max(1, train_sample))
        sample = vectors if size == n else vectors[np.sort(rng.choice(n, size, replace=False))]
        index.train(sample)
    with progress_bar(total=n, desc=f"Building {built}", unit="vec", disable=not progress or n <= ADD_CHUNK) as bar:
        for lo in range(0, n, ADD_CHUNK):
            index.add(vectors[lo : lo + ADD_CHUNK])
            bar.update(min(ADD_CHUNK, n - lo))
