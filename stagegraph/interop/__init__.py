"""Interop: a stagegraph stack or pipeline inside the IR and RAG libraries people already use, and
their components inside a stagegraph pipeline. Each adapter is a module of its own that imports its
library (an optional extra), so `import stagegraph` never pulls any of them in:

| module | what | extra |
| --- | --- | --- |
| `stagegraph.interop.pyterrier` | `StagegraphTransformer`: a stack/pipeline as a PyTerrier `Transformer`; `PyTerrierRetriever`, `PyTerrierReranker`: a PyTerrier transformer as a stage | `pyterrier` |
| `stagegraph.interop.langchain` | `LangChainRetriever`: a stack as a LangChain `BaseRetriever` | `langchain` |
| `stagegraph.interop.llamaindex` | `LlamaIndexRetriever`: a stack as a LlamaIndex `BaseRetriever` | `llamaindex` |
| `stagegraph.interop.haystack` | `HaystackRetriever`: a stack as a Haystack component | `haystack` |

Every adapter searches through the object's own `search_batch`/`search` (a `Stack` from
`stagegraph.open`, a `Runner`, or a pipeline after `warm_up`) and hands back the library's own
document type carrying the hit's metadata, its score and its provenance (`stagegraph.interop.hits`).
See docs/interop.md.
"""
