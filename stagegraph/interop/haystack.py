"""A stagegraph stack as a Haystack component (`pip install "stagegraph[haystack]"`: haystack-ai).

    retriever = HaystackRetriever(sg.open(collection="my-notes"), top_k=5)
    retriever.run(query="what is a gguf file?")["documents"]
    rag = Pipeline(); rag.add_component("retriever", retriever); ...

`run(query, top_k=None, filters=None) -> {"documents": [haystack.Document]}`: each document has `id`
(the chunk id), `content`, `score` and `meta` (`stagegraph.interop.hits.hit_metadata`). `filters` is a
stagegraph metadata filter (`stagegraph.corpora.filters`), not Haystack's filter syntax.
"""

from __future__ import annotations

from typing import Any

try:
    from haystack import Document, component
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"stagegraph.interop.haystack needs haystack-ai ({exc}); pip install \"stagegraph[haystack]\"") from exc

from stagegraph.interop.hits import hit_metadata, searcher

__all__ = ["HaystackRetriever", "to_documents"]


def to_documents(result: Any) -> list[Document]:
    """A `SearchResult`'s hits as Haystack documents."""
    return [Document(id=hit.id, content=hit.text, score=hit.score, meta=hit_metadata(hit, result.generation))
            for hit in result.hits]


@component
class HaystackRetriever:
    """Haystack component over a stack (or a `Runner`, or a warmed pipeline)."""

    def __init__(self, stack: Any, top_k: int = 10, filters: dict[str, Any] | None = None):
        self.stack = searcher(stack)
        self.top_k = top_k
        self.filters = filters

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None) -> dict[str, list[Document]]:
        result = self.stack.search(query, k=top_k or self.top_k, filter=filters if filters is not None else self.filters)
        return {"documents": to_documents(result)}
