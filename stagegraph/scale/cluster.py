"""A Ray cluster to run on: an existing one, or a local one this process starts (and alone stops).

Ray reports usage to its authors by default, binds more than loopback on some platforms and asks for
an auth token in recent releases; stagegraph never phones home, so before Ray is imported the
process gets `RAY_USAGE_STATS_ENABLED=0`, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` and, for a local
cluster, `RAY_AUTH_MODE=disabled` (each unless already set). An address that does not answer is
refused within seconds, naming the address and what to check, instead of hanging in `ray.init`.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from stagegraph.errors import InputError, StageError

SAFE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
PROBE_TIMEOUT_S = 3.0
#: variables the workers need as the driver has them (where models are, offline mode, threads)
FORWARDED_ENV = ("STAGEGRAPH_MODELS", "STAGEGRAPH_RERANKER", "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE",
                 "RAY_USAGE_STATS_ENABLED")


def worker_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


class ClusterError(StageError):
    """The Ray cluster cannot be reached or started; the message names the address and what to check."""


def import_ray() -> Any:
    for name, value in SAFE_ENV.items():
        os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError as exc:
        raise InputError('the Ray executor needs Ray: pip install "stagegraph[ray]" (or pip install "ray[data]")') from exc
    return ray


def _probe(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not HOST:PORT (the head node's GCS port, 6379 by default)")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            return
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check that `ray start --head` runs "
            "there, that the port is open to this machine, and the address given (--ray-address or $RAY_ADDRESS)"
        ) from None


def worker_failure(exc: BaseException, what: str) -> StageError:
    """One line for an error raised on a worker: the innermost cause, not Ray's wrapped traceback."""
    seen, inner = set(), exc
    while id(inner) not in seen:
        seen.add(id(inner))
        nested = getattr(inner, "cause", None) or inner.__cause__
        if not isinstance(nested, BaseException):
            break
        inner = nested
    if isinstance(inner, StageError | InputError):
        return StageError(str(inner))
    first = next((line.strip() for line in str(inner).splitlines() if line.strip()), type(inner).__name__)
    return StageError(f"{what} failed on a Ray worker: {type(inner).__name__}: {first}")


class RayCluster:
    """`with RayCluster(address=None, workers=2) as ray: ...`: connected or local, cleaned up after."""

    def __init__(self, address: str | None = None, *, workers: int | None = None):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.workers = workers
        self.started = False
        self.ray: Any = None

    def __enter__(self) -> RayCluster:
        ray = self.ray = import_ray()
        for name in ("ray", "ray.data"):  # its INFO lines (execution plans, progress) would flood our output
            logging.getLogger(name).setLevel(logging.WARNING)
        remote = self.address if self.address and self.address != "local" else None
        if remote:
            _probe(remote.removeprefix("ray://"))
        if ray.is_initialized():  # this process already joined a cluster (a notebook, a test session): use it
            return self
        runtime_env = {"env_vars": worker_env()}
        if remote:
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
            except Exception as exc:  # noqa: BLE001
                raise ClusterError(f"cannot join the Ray cluster at {self.address}: {exc}") from exc
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            cpus = max(1, self.workers or os.cpu_count() or 1)
            try:
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                         _node_ip_address="127.0.0.1", runtime_env=runtime_env)
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds when it cannot start
                raise ClusterError(f"cannot start a local Ray cluster: {exc}") from exc
            self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started and self.ray is not None:
            self.ray.shutdown()
            self.started = False

    def worker_count(self) -> int:
        if self.workers:
            return self.workers
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        return max(1, cpus)
