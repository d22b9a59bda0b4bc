"""What runs in a graph: retrievers, the candidate pool, the cross-encoder reranker, metrics."""

from stagegraph.stages.base import Arity, Environment, Ranking, Stage, StageBase, StageConfig, StageError

__all__ = ["Arity", "Environment", "Ranking", "Stage", "StageBase", "StageConfig", "StageError"]
