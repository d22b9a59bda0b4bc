"""A stagegraph stack as a LlamaIndex retriever (`pip install "stagegraph[llamaindex]"`: llama-index-core).

    retriever = LlamaIndexRetriever(sg.open(collection="my-notes"), k=5)
    nodes = retriever.retrieve("what is a gguf file?")
    engine = RetrieverQueryEngine.from_args(retriever, llm=...)

Each result is a `NodeWithScore`: `score` is the hit's score, `node` a `TextNode` with `id_` (the chunk
id), `text` and `metadata` (`stagegraph.interop.hits.hit_metadata`). The provenance keys (ids, ranks,
scores, `stages`) are excluded from what LlamaIndex shows an LLM or an embedder; the chunk's own
metadata is not.
"""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"stagegraph.interop.llamaindex needs llama-index-core ({exc}); pip install \"stagegraph[llamaindex]\"") from exc

from stagegraph.interop.hits import PROVENANCE_KEYS, hit_metadata, searcher

__all__ = ["LlamaIndexRetriever", "to_nodes"]


def to_nodes(result: Any) -> list[NodeWithScore]:
    """A `SearchResult`'s hits as LlamaIndex nodes with scores."""
    hidden = list(PROVENANCE_KEYS)
    return [
        NodeWithScore(node=TextNode(id_=hit.id, text=hit.text, metadata=hit_metadata(hit, result.generation),
                                    excluded_llm_metadata_keys=hidden, excluded_embed_metadata_keys=hidden),
                      score=hit.score)
        for hit in result.hits
    ]


class LlamaIndexRetriever(BaseRetriever):
    """LlamaIndex `BaseRetriever` over a stack (or a `Runner`, or a warmed pipeline)."""

    def __init__(self, stack: Any, k: int = 10, filter: dict[str, Any] | None = None, **kwargs: Any):
        self.stack = searcher(stack)
        self.k = k
        self.filter = filter
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return to_nodes(self.stack.search(query_bundle.query_str, k=self.k, filter=self.filter))
