"""A content-addressed, on-disk cache of stage outputs.

The key of a step is a hash of (the entry format, the stage's fingerprint, the keys of its upstream
steps, its cut-off, the query ids and texts, the corpus fingerprint). A stage's fingerprint covers
its settings, the identity of what it reads, its code version and the versions of the libraries its
results depend on (`stagegraph.stages.base.StageBase.fingerprint`); because upstream keys are part
of the key, changing any stage changes the key of everything downstream, while an unchanged prefix
of the pipeline is read back instead of re-run. Entries (rankings with their provenance) are written
atomically, so a crash leaves no half-written entry; a damaged entry is a miss.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stagegraph import atomic
from stagegraph.hashing import stable_hash
from stagegraph.pipeline.ranking import Ranking, StepTrace

#: Bump when the entry layout changes: every old entry then misses instead of being misread.
ENTRY_FORMAT = 2
_FIELDS = ("score", "rank", "model_score", "blended_with")


def step_key(
    stage_fingerprint: str,
    upstream_keys: Sequence[str],
    cutoff: int | None,
    queries_fingerprint: str,
    corpus_fingerprint: str,
) -> str:
    return stable_hash(
        {
            "format": ENTRY_FORMAT,
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
                steps = [str(n) for n in data["steps"]]
                columns = {
                    (j, f): data[f"trace_{j}_{f}"] for j in range(len(steps)) for f in _FIELDS if f"trace_{j}_{f}" in data
                }
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a damaged entry is a miss, and is recomputed
            return None
        out = []
        for start, end in zip(offsets[:-1], offsets[1:]):
            traces = {}
            for j, step in enumerate(steps):
                rank = columns[(j, "rank")][start:end]
                if len(rank) and np.isnan(rank).all():
                    continue  # this ranking had no trace of that step
                parts = [columns[(j, f)][start:end] if (j, f) in columns else None for f in _FIELDS]
                traces[step] = StepTrace(*parts)
            out.append(Ranking(rows[start:end], scores[start:end], traces))
        return out

    def save(self, key: str, rankings: Sequence[Ranking]) -> None:
        lengths = np.array([len(r) for r in rankings], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        steps: list[str] = []
        for r in rankings:
            steps.extend(s for s in r.provenance if s not in steps)
        arrays: dict[str, np.ndarray] = {
            "offsets": offsets,
            "rows": np.concatenate([r.doc_rows for r in rankings]) if rankings else np.empty(0, np.int64),
            "scores": np.concatenate([r.scores for r in rankings]) if rankings else np.empty(0, np.float32),
            "steps": np.array(steps, dtype=str),
        }
        for j, step in enumerate(steps):
            for f in _FIELDS:
                if f not in ("score", "rank") and all(
                    getattr(r.provenance.get(step), f, None) is None for r in rankings
                ):
                    continue
                arrays[f"trace_{j}_{f}"] = np.concatenate(
                    [_column(r, step, f) for r in rankings]
                ) if rankings else np.empty(0, np.float32)
        with atomic.atomic_file(self._path(key), "wb") as fh:
            np.savez(fh, **arrays)


def _column(ranking: Ranking, step: str, field: str) -> np.ndarray:
    trace = ranking.provenance.get(step)
    values = None if trace is None else getattr(trace, field)
    if values is None:
        return np.full(len(ranking), np.nan, dtype=np.float32)
    return np.asarray(values, dtype=np.float32)
