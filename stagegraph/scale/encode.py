"""Dense encoding sharded by document: a Ray Data pipeline with the model loaded once per worker.

`ray_encoder(cluster)` returns the `encode(encoder, texts) -> float32 array` hook that
`Environment.encode` takes (dense stages call it at warm-up, for a corpus, a collection or only the
texts a collection's cache lacks). It reproduces a local `Encoder.encode` batch for batch: the
driver orders the texts longest first exactly as the encoder does and cuts the same model batches,
each batch travels as one row (an Arrow list of strings, never a pickled Python object, so Ray
Data's accounting sees its real size), and a stateful callable class loads the encoder once per
worker actor and embeds one batch per row. Every model call therefore sees the texts the local run
gives it; the embeddings differ at most in float rounding from a different thread count (1e-5 in
the tests), and the embedding cache, the FAISS build and the collection's generations that consume
them work unchanged. A worker's model must be the driver's (same content hash), or it refuses.
Rows come back in any order and are put in place by index; a progress bar counts the texts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from stagegraph.progress import progress_bar

from stagegraph.scale.cluster import RayCluster, worker_failure

#: model batches per Ray Data row batch handed to one actor call
GROUPS_PER_CALL = 4


class EncodeBatches:
    """The Ray Data callable class: one `Encoder` per actor, one model batch per row.

    `for_model(spec)` makes the subclass that carries the model's settings as a class attribute
    (shipped with the class), so no constructor argument sits in the object store."""

    spec: dict[str, Any] = {}

    @classmethod
    def for_model(cls, spec: dict[str, Any]) -> type[EncodeBatches]:
        return type("EncodeBatches", (cls,), {"spec": dict(spec)})

    def __init__(self):
        from stagegraph.indexes.encoder import Encoder
        from stagegraph.pipeline import threads

        spec = self.spec
        threads.pin(1)  # one actor per CPU
        self.encoder = Encoder(spec["model"], max_seq_length=spec["max_seq_length"], batch_size=spec["batch_size"],
                               device=spec["device"], threads=1, progress=False)
        if self.encoder.identity != spec["identity"]:
            raise RuntimeError(
                f"the model {spec['model']!r} on this worker ({self.encoder.resolved.path}) differs from the driver's "
                "(another content hash); install the same model on every node (or point $STAGEGRAPH_MODELS at shared storage)"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, vectors = [], []
        for positions, texts in zip(batch["rows"], batch["texts"]):
            vectors.append(self.encoder.encode([str(t) for t in texts], batch_size=len(texts), progress=False))
            rows.append(np.asarray(positions, dtype=np.int64))
        return {"row": np.concatenate(rows), "embedding": np.concatenate(vectors).astype(np.float32, copy=False)}


def model_batches(texts: list[str], batch_size: int) -> list[list[int]]:
    """The positions of each model batch, as `Encoder.encode` cuts them (longest text first)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]


def ray_encoder(cluster: RayCluster, workers: int | None = None, *, progress: bool = True) -> Callable[[Any, list[str]], np.ndarray]:
    """The `Environment.encode` hook that encodes over `cluster` with `workers` actors."""

    def encode(encoder: Any, texts: list[str]) -> np.ndarray:
        import pyarrow as pa

        ray = cluster.ray
        n = len(texts)
        if n == 0:
            return np.empty((0, encoder.dim), dtype=np.float32)
        groups = model_batches(texts, encoder.batch_size)
        table = pa.table({
            "rows": pa.array(groups, type=pa.list_(pa.int64())),
            "texts": pa.array([[texts[i] for i in g] for g in groups], type=pa.list_(pa.large_string())),
        })
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts texts; Ray's would print per operator
        actors = max(1, min(workers or cluster.worker_count(), len(groups)))
        spec = {"model": encoder.model_name, "identity": encoder.identity, "max_seq_length": encoder.max_seq_length,
                "batch_size": encoder.batch_size, "device": getattr(encoder, "device", "cpu")}
        # Blocks cut here, so no repartition task competes with the actors for the CPUs.
        step = max(1, -(-len(groups) // (actors * 8)))
        blocks = [table.slice(lo, step) for lo in range(0, len(groups), step)]
        dataset = ray.data.from_arrow(blocks).map_batches(
            EncodeBatches.for_model(spec), batch_size=GROUPS_PER_CALL, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1, zero_copy_batch=True,
        )
        out = np.empty((n, encoder.dim), dtype=np.float32)
        seen = 0
        with warnings.catch_warnings(), progress_bar(total=n, desc=f"Encoding {n} texts (ray, {actors} workers)", unit="doc",
                                             disable=not progress) as bar:
            warnings.simplefilter("ignore", DeprecationWarning)  # Ray Data's own, about its own settings
            try:
                for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
                    out[batch["row"]] = batch["embedding"]
                    seen += len(batch["row"])
                    bar.update(len(batch["row"]))
            except ray.exceptions.RayError as exc:
                raise worker_failure(exc, "encoding") from None
        if seen != n:
            raise RuntimeError(f"the Ray encoding returned {seen} of {n} embeddings")
        return out

    return encode
