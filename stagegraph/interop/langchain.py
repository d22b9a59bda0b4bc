"""A stagegraph stack as a LangChain retriever (`pip install "stagegraph[langchain]"`: langchain-core).

    retriever = LangChainRetriever(stack=sg.open(collection="my-notes"), k=5)
    docs = retriever.invoke("what is a gguf file?")

Each `langchain_core.documents.Document` has `page_content` (the chunk's text), `id` (the chunk id) and
`metadata` (`stagegraph.interop.hits.hit_metadata`: the chunk's metadata, its rank and score, and each
step's rank and score under `stages`). `filter` is a stagegraph metadata filter applied to every query.
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, field_validator
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"stagegraph.interop.langchain needs langchain-core ({exc}); pip install \"stagegraph[langchain]\"") from exc

from stagegraph.interop.hits import hit_metadata, searcher

__all__ = ["LangChainRetriever", "to_documents"]


def to_documents(result: Any) -> list[Document]:
    """A `SearchResult`'s hits as LangChain documents."""
    return [Document(page_content=hit.text, id=hit.id, metadata=hit_metadata(hit, result.generation))
            for hit in result.hits]


class LangChainRetriever(BaseRetriever):
    """`BaseRetriever` over a stack (or a `Runner`, or a warmed pipeline): the top `k` hits per query."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stack: Any
    k: int = 10
    filter: dict[str, Any] | None = None

    @field_validator("stack")
    @classmethod
    def _searches(cls, value: Any) -> Any:
        return searcher(value)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return to_documents(self.stack.search(query, k=self.k, filter=self.filter))

    def batch_documents(self, queries: list[str]) -> list[list[Document]]:
        """Many queries in one `search_batch` (one pipeline run) rather than one run each."""
        return [to_documents(r) for r in self.stack.search_batch(queries, k=self.k, filter=self.filter)]
