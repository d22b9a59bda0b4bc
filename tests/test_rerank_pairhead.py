"""The cosine pair head: a cross-encoder that starts from its encoder's segment-mean similarity."""

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_sentence_transformer

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker
from stagegraph.stages.rerank.pair_head import PairBertForSequenceClassification, from_bert
from stagegraph.training.finetune import save_model

PAIRS = [
    ("dense vector search", "the index stores dense vectors for search"),
    ("cancer gene", "protein cells in the blood"),
    ("rank fusion", "fusion of rank lists from sparse and dense retrieval pool " * 3),
]


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("pair")
    base = make_tiny_sentence_transformer(root / "base")
    model = from_bert(str(base), layers=1, scale=5.0)
    out = root / "pair"
    save_model(model.eval(), AutoTokenizer.from_pretrained(str(base)), out)
    return out


def test_scores_are_the_scaled_cosine_of_the_segment_means(pair_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(pair_model)).eval()
    assert isinstance(model, PairBertForSequenceClassification) and model.config.num_hidden_layers == 1
    tok = AutoTokenizer.from_pretrained(str(pair_model))
    ours = CrossEncoderReranker(str(pair_model), max_length=64).predict(PAIRS)
    for (q, d), score in zip(PAIRS, ours):
        f = tok(q, d, return_tensors="pt")
        with torch.no_grad():
            states = model.bert(**f).last_hidden_state[0]
        seg = f["token_type_ids"][0].bool()
        cos = torch.nn.functional.cosine_similarity(states[~seg].mean(0), states[seg].mean(0), dim=0)
        assert score == pytest.approx(5.0 * float(cos), abs=1e-5)  # identity activation: logits


def test_padding_does_not_change_a_score(pair_model):
    reranker = CrossEncoderReranker(str(pair_model), max_length=64, batch_size=8)
    alone = [reranker.predict([p])[0] for p in PAIRS]
    together = reranker.predict(PAIRS)  # padded to the longest pair
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_onnx_export_matches_torch(pair_model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    corpus = Corpus([f"d{i}" for i in range(len(PAIRS))], [""] * len(PAIRS), [d for _, d in PAIRS])
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    pool = [Ranking.from_scores(np.arange(len(PAIRS)), np.zeros(len(PAIRS)))]
    out = {}
    for backend in ("torch", "onnx"):
        stage = CrossEncoderReranker(str(pair_model), max_length=64, depth=10, k=10, backend=backend, score_cache="off")
        stage.warm_up(env)
        out[backend] = stage.run(Queries(["q"], [PAIRS[2][0]]), [pool])[0]
    np.testing.assert_array_equal(out["torch"].doc_rows, out["onnx"].doc_rows)
    np.testing.assert_allclose(out["torch"].scores, out["onnx"].scores, atol=1e-4)
