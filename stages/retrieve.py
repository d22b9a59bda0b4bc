"""Built-in retrieval stages, re-exported from their own modules so the registry finds them.

`stages.registry` imports this module lazily; importing it runs the `@register` decorators of
`BM25Retriever` (`type: bm25`) and `DenseRetriever` (`type: dense`).
"""

from stages.bm25_retriever import BM25Retriever

try:
    from stages.dense_retriever import DenseRetriever
except ImportError:  # the dense retriever module is optional in this build
    DenseRetriever = None  # type: ignore[assignment,misc]

__all__ = ["BM25Retriever", "DenseRetriever"]
