"""Fine-tuning cross-encoders for a pipeline: hard negatives mined by its first stages, a held-out check.

* `finetune`  - the training loop (`TrainConfig`, `fine_tune`, saving a model with its metadata);
* `heldout`   - checking a reranker on held-out queries and choosing its blend with the first stage;
* `train`     - `train_reranker(pipeline, dataset, ...)`: mining, training and checking in one call.
"""
