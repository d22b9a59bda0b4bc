"""Persisted data structures: the BM25 index, the dense (FAISS) index, tokenizers, manifests."""
