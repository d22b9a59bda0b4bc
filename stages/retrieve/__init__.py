"""Built-in retrieval stages, re-exported from their own modules so the registry finds them.

`stagegraph.pipeline.registry` imports this module lazily; importing it runs the `@register` decorators of
`BM25Retriever` (`type: bm25`), `DenseRetriever` (`type: dense`) and `SparseRetriever` (`type: sparse`).
"""

from stagegraph.stages.retrieve.bm25 import BM25Retriever

try:
    from stagegraph.stages.retrieve.dense import DenseRetriever
except ImportError:  # the dense retriever module is optional in this build
    DenseRetriever = None  # type: ignore[assignment,misc]

try:
    from stagegraph.stages.retrieve.sparse import SparseRetriever
except ImportError:  # the learned-sparse module is optional in this build
    SparseRetriever = None  # type: ignore[assignment,misc]

__all__ = ["BM25Retriever", "DenseRetriever", "SparseRetriever"]
