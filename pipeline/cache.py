"""A content-addressed, on-disk cache of stage outputs.

The key of a step is a hash of (the stage's fingerprint, the keys of its upstream steps, its cut-off,
the query ids and texts, the corpus fingerprint). Because upstream keys are part of it, changing any
stage changes the key of everything downstream: a changed stage can never serve a stale result,
while an unchanged prefix of the graph is read back instead of re-run. Entries are written to a
temporary file and renamed into place, so a crash leaves no half-written entry.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stagegraph.stages.base import Ranking, stable_hash


def step_key(
    stage_fingerprint: str,
    upstream_keys: Sequence[str],
    cutoff: int | None,
    queries_fingerprint: str,
    corpus_fingerprint: str,
) -> str:
    return stable_hash(
        {
            "stage": stage_fingerprint,
            "upstream": list(upstream_keys),
            "cutoff": cutoff,
            "queries": queries_fingerprint,
            "corpus": corpus_fingerprint,
        }
    )


class StageCache:
    """Rankings of one step for one batch of queries, stored as `<dir>/<key[:2]>/<key>.npz`."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def load(self, key: str) -> list[Ranking] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                offsets = data["offsets"]
                rows, scores = data["rows"], data["scores"]
                names = [str(n) for n in data["feature_names"]]
                features = {n: data[f"feature_{i}"] for i, n in enumerate(names)}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a damaged entry is a miss, and is recomputed
            return None
        out = []
        for start, end in zip(offsets[:-1], offsets[1:]):
            feats = {}
            for name, values in features.items():
                part = values[start:end]
                if part.size and not np.isnan(part).all():
                    feats[name] = part
            out.append(Ranking(rows[start:end], scores[start:end], feats))
        return out

    def save(self, key: str, rankings: Sequence[Ranking]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(r) for r in rankings], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        names = sorted({n for r in rankings for n in r.features})
        arrays: dict[str, np.ndarray] = {
            "offsets": offsets,
            "rows": np.concatenate([r.doc_rows for r in rankings]) if rankings else np.empty(0, np.int64),
            "scores": np.concatenate([r.scores for r in rankings]) if rankings else np.empty(0, np.float32),
            "feature_names": np.array(names, dtype=str),
        }
        for i, name in enumerate(names):
            arrays[f"feature_{i}"] = np.concatenate(
                [np.asarray(r.features.get(name, np.full(len(r), np.nan)), dtype=np.float32) for r in rankings]
            )
        fd, tmp = tempfile.mkstemp(prefix=".entry-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
