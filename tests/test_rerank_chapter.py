"""The course chapter's reranker usage, run exactly as the chapter shows it (with a tiny model)."""

import copy

import numpy as np
import pytest
from tiny_models import make_tiny_cross_encoder

from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker


@pytest.fixture(scope="module")
def model_name(tmp_path_factory):
    return str(make_tiny_cross_encoder(tmp_path_factory.mktemp("chapter") / "ce", max_length=512))


CANDIDATES = [
    {"text": "Quantised GGUF files let a 7B model run in 6 GB of VRAM.", "source": "gguf.md", "meta": {"page": 1}},
    {"content": "A cross-encoder reads the query and the passage together.", "source": "rerank.md"},
    {"text": "Dense retrieval embeds passages once and searches vectors.", "source": "dense.md", "id": 7},
    {"text": "BM25 scores exact terms with saturation and length normalisation.", "source": "bm25.md"},
    {"text": "vLLM batches requests with paged attention on the GPU.", "source": "vllm.md"},
]


def test_chapter_usage_works_unchanged(model_name):
    reranker = CrossEncoderReranker(model_name, max_length=512)
    query = "how does a cross encoder rerank passages"
    results = reranker.rerank(query, CANDIDATES, top_k=3)
    assert len(results) == 3
    scores = [r["cross_encoder_score"] for r in results]
    assert all(type(s) is float for s in scores)
    assert scores == sorted(scores, reverse=True)
    for r in results:  # metadata travels with each copy
        original = next(c for c in CANDIDATES if c["source"] == r["source"])
        assert {k: v for k, v in r.items() if k != "cross_encoder_score"} == original

    from sentence_transformers import CrossEncoder

    texts = [c.get("text") or c.get("content") for c in CANDIDATES]
    naive = CrossEncoder(model_name, max_length=512).predict([(query, t) for t in texts])
    expected = [CANDIDATES[i]["source"] for i in np.argsort(-naive, kind="stable")[:3]]
    assert [r["source"] for r in results] == expected
    assert len(reranker.rerank(query, CANDIDATES)) == len(CANDIDATES)  # default top_k=10 > 5 candidates


def test_inputs_are_not_mutated_and_results_are_copies(model_name):
    before = copy.deepcopy(CANDIDATES)
    results = CrossEncoderReranker(model_name, max_length=512).rerank("vram", CANDIDATES, top_k=5)
    assert CANDIDATES == before
    assert all("cross_encoder_score" not in c for c in CANDIDATES)
    assert not any(r is c for r in results for c in CANDIDATES)


def test_a_candidate_without_text_or_content_names_its_index(model_name):
    reranker = CrossEncoderReranker(model_name, max_length=512)
    bad = [{"text": "fine"}, {"content": "fine too"}, {"body": "no usable field"}]
    with pytest.raises(ValueError, match="candidate 2"):
        reranker.rerank("q", bad)
    with pytest.raises(TypeError, match="candidate 1"):
        reranker.rerank("q", [{"text": "ok"}, "a bare string"])
    assert reranker.rerank("q", []) == []
