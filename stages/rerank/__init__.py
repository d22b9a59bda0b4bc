"""The cross-encoder rerank stage and what it is built from.

* `cross_encoder` - `CrossEncoderReranker`: the graph stage (`type: cross_encoder`) and the chapter's reranker;
* `model`         - finding, checking and loading cross-encoders; the fast torch scorer;
* `onnx`          - the ONNX Runtime backends (fp32, int8);
* `blend`         - blending the model's score with the upstream ranking;
* `score_cache`   - the optional (query, document) score cache;
* `pair_head`     - the cosine pair head of rerankers fine-tuned from a bi-encoder;
* `late_interaction` - `LateInteractionReranker`: ColBERT-style MaxSim stage (`type: late_interaction`).
"""

from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker

__all__ = ["CrossEncoderReranker"]
