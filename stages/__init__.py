"""What runs in a pipeline: retrievers (`retrieve/`), the candidate pool (`fusion/`) and the
cross-encoder reranker (`rerank/`), all built on `base.StageBase`."""
