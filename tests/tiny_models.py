"""Tiny random BERT models for tests: the real loading code paths, kilobytes of weights.

`make_tiny_sentence_transformer(path)` writes a sentence-transformers bi-encoder (BERT with a
32-wide hidden layer and 2 layers, mean pooling) and `make_tiny_cross_encoder(path)` a
cross-encoder (`BertForSequenceClassification`, one label). Both share a small WordPiece vocabulary
of lower-case English words plus the characters, so any text tokenises to something. The weights are
random but seeded, so two builds with the same seed are byte-identical models.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a of and in to is for on with by from that this be are as at or an it was which"
    " cell cells protein gene genes cancer patients disease treatment study results risk blood"
    " heat flow wing pressure boundary layer shock wave air speed model data method system time"
    " retrieval search query document index dense sparse vector rank score fusion pool"
).split()


#: the words of `rerank_corpus`: a few topics, so that rerankers' inputs share terms with the queries
RERANK_WORDS = "the cell protein gene cancer retrieval search query document index dense sparse vector rank score".split()


def rerank_corpus(n: int = 40, seed: int = 7):
    """A corpus of `n` seeded passages of 2-89 `RERANK_WORDS` (what the rerank stages' tests score)."""
    import numpy as np

    from stagegraph.corpora.types import Corpus

    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(RERANK_WORDS, size=int(rng.integers(2, 90)))) for _ in range(n)]
    return Corpus([f"d{i}" for i in range(n)], [f"title {RERANK_WORDS[i % len(RERANK_WORDS)]}" for i in range(n)], texts)


def rerank_queries():
    """Three queries over `rerank_corpus`'s words."""
    from stagegraph.corpora.types import Queries

    return Queries(["q1", "q2", "q3"], ["dense protein retrieval", "cancer gene", "rank fusion of sparse vectors"])


def rerank_pools(n_docs: int, n_queries: int, depth: int = 25, seed: int = 3):
    """One seeded random upstream ranking of `depth` distinct rows per query (what the rerank stages rerank)."""
    import numpy as np

    from stagegraph.pipeline.ranking import Ranking

    rng = np.random.default_rng(seed)
    return [Ranking.from_scores(rng.choice(n_docs, size=depth, replace=False), rng.random(depth)) for _ in range(n_queries)]


def _vocab() -> list[str]:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    seen: dict[str, None] = {}
    for token in SPECIAL + chars + pieces + WORDS:
        seen.setdefault(token, None)
    return list(seen)


def _write_tokenizer(path: Path, max_length: int) -> object:
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True, model_max_length=max_length)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def _bert_config(vocab_size: int, max_length: int, **extra: object) -> object:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(max_length, 64),
        **extra,
    )


def make_tiny_sentence_transformer(path: str | Path, *, seed: int = 0, max_length: int = 128) -> Path:
    """Write a tiny sentence-transformers model (BERT + mean pooling) to `path`; return `path`."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertModel

    path = Path(path)
    hf_dir = path / "_hf"
    tokenizer = _write_tokenizer(hf_dir, max_length)
    torch.manual_seed(seed)
    BertModel(_bert_config(len(tokenizer), max_length)).save_pretrained(str(hf_dir))
    transformer = Transformer(str(hf_dir), max_seq_length=max_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(path))
    _remove_tree(hf_dir)
    return path


def make_tiny_cross_encoder(path: str | Path, *, seed: int = 0, max_length: int = 128) -> Path:
    """Write a tiny cross-encoder (`BertForSequenceClassification`, num_labels=1) to `path`."""
    import torch
    from transformers import BertForSequenceClassification

    path = Path(path)
    tokenizer = _write_tokenizer(path, max_length)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(_bert_config(len(tokenizer), max_length, num_labels=1))
    model.save_pretrained(str(path))
    return path


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
