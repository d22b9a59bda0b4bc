"""Scale-out on Ray: evaluation sharded by query, encoding sharded by document, on an existing
cluster or a local one. An optional extra: `pip install "stagegraph[ray]"`.

* `cluster` - connect to a cluster (`--ray-address`, `$RAY_ADDRESS`) or start a local one with safe
  settings (loopback only, usage reporting off), and shut down only what was started;
* `executor` - `RayExecutor`: each worker warms the pipeline once from shared storage and runs its
  shards of the queries; the driver assembles the rankings in query order;
* `encode` - a Ray Data pipeline that encodes texts with the model loaded once per worker.

`session(config)` opens both for an `ExecutorConfig` (`executor: ray` in YAML, `--executor ray`):

    with session(ExecutorConfig(type="ray", workers=2)) as executor:
        result = pipeline.execute(queries, env=env, mode="batch", executor=executor)
        env.encode = executor.encoder()      # or only shard the encoding of an index build
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from stagegraph.pipeline.executor import ExecutorConfig
from stagegraph.scale.cluster import ClusterError, RayCluster
from stagegraph.scale.executor import RayExecutor

__all__ = ["ClusterError", "RayCluster", "RayExecutor", "session"]


@contextlib.contextmanager
def session(config: ExecutorConfig | str | dict, *, progress: bool = True) -> Iterator[RayExecutor]:
    """A `RayExecutor` on the cluster `config` names; its actors and a cluster it started stop after."""
    config = ExecutorConfig.of(config)
    if config.type != "ray":
        raise ValueError(f"session() opens a Ray executor, not {config.type!r}")
    with RayCluster(config.address, workers=config.workers) as cluster:
        executor = RayExecutor(cluster, workers=config.workers, progress=progress)
        try:
            yield executor
        finally:
            executor.close()
