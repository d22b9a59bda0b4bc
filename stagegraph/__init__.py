"""stagegraph: composable retrieval pipelines with per-stage quality and latency."""

__version__ = "0.1.0"
