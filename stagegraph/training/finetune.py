"""Fine-tuning a cross-encoder on a dataset's qrels, with negatives mined by a pipeline's first stages.

What a first attempt here taught (BCE, one epoch, lr 3e-5, a random head: the model learned only the
label prior) shaped the recipe:

* **a listwise loss**: each training group is one query with one judged-relevant passage and
  `negatives` passages sampled from the first stage's top `mine_depth` (judged-relevant passages
  excluded), scored together; the loss is the softmax cross-entropy of the positive within its
  group, so the model must *order* passages of one query, not predict a base rate (`loss="bce"` is
  kept for comparison);
* **a higher learning rate for the new head** (the one-logit classifier, `head_lr`) than for the
  pretrained encoder (`lr`), warm-up then linear decay, several epochs with fresh negatives each;
* **a head that starts somewhere**: all-MiniLM-L6-v2 is a bi-encoder trained with mean pooling, so
  its [CLS] state hardly varies and a [CLS] classifier (`head="cls"`) stayed at the constant-loss
  point here; the default `head="cosine"` (`stagegraph.stages.rerank.pair_head`) scores the cosine of the query
  and passage segments' mean states, which ranks like a bi-encoder before any training;
* **a small, fast base**: the packaged all-MiniLM-L6-v2 weights cut to their first `layers`
  transformer layers (2 layers score several times faster than 6), with the word embeddings frozen (half the
  parameters; a few hundred queries cannot retrain them);
* **a fixed number of steps** (`max_steps`), seeded: every machine trains the same model (up to
  float noise), so its figures can be pinned; the learning-rate schedule decays over those steps.
  Or **a time budget** (`time_budget_s`): the first steps are timed and the plan shrunk to fit, the
  same time on a slow machine but a different model.

The data preparation takes the first stage's rankings as input, so this module needs no pipeline:
`stagegraph.training.train` runs the graph and calls `train_cross_encoder`, then `rerank_dev` checks
the result on held-out queries. The model directory written by `save_model` loads in
`CrossEncoderReranker`; its scores are logits (identity activation), which blend well.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from stagegraph.progress import progress_bar

from stagegraph.corpora.types import Corpus, Qrels, Queries
from stagegraph.pipeline.ranking import Ranking
from stagegraph.stages.rerank.model import RerankerLoadError

DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"
CALIBRATION_STEPS = 5  # steps timed before a time budget resizes the plan


class TrainConfig(BaseModel):
    """Every setting of a fine-tuning run (saved with the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = DEFAULT_BASE
    layers: int | None = Field(2, ge=1, description="keep the first N transformer layers (None: all)")
    max_length: int = Field(192, ge=16, le=512)
    epochs: int = Field(3, ge=1)
    negatives: int = Field(7, ge=1, description="negatives per group (one positive each)")
    mine_depth: int = Field(30, ge=2, description="negatives come from the first stage's top N")
    positives_per_query: int = Field(2, ge=1, description="groups per query and epoch, at most")
    batch_groups: int = Field(4, ge=1, description="groups per optimiser step")
    lr: float = Field(7e-5, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    warmup: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    loss: Literal["listwise", "bce"] = "listwise"
    #: "cosine": score the query and passage segments' mean states (stages.rerank_pairhead), which starts
    #: from the bi-encoder's ranking; "cls": the usual [CLS] classifier, which starts from nothing.
    head: Literal["cosine", "cls"] = "cosine"
    freeze_embeddings: bool = True
    dev_fraction: float = Field(0.2, ge=0, lt=1)
    min_dev: int = Field(10, ge=0)
    max_dev: int | None = Field(200, ge=1, description="at most this many dev queries")
    dev_depth: int | None = Field(None, ge=1, description="dev rerank depth (None: the pipeline reranker's)")
    max_pairs: int | None = Field(None, ge=1, description="cap on pairs per epoch")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimiser steps (the schedule decays over them): the same model on every machine"
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="fit the number of steps to this many seconds (measured on the first steps)"
    )
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    device: str = Field("auto", description="torch device: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")


@dataclass(frozen=True)
class Group:
    query: str
    positive: int  # corpus row
    negatives: tuple[int, ...]


@dataclass
class TrainStats:
    epochs_done: int = 0
    steps: int = 0
    pairs: int = 0
    seconds: float = 0.0
    epoch_loss: list[float] = field(default_factory=list)
    stopped_early: bool = False  # the time budget cut the planned steps
    planned_steps: int = 0

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- data


def positives_of(qid: str, qrels: Qrels, corpus: Corpus) -> list[int]:
    """Rows of the documents judged relevant (grade >= 1) for `qid`, highest grade first."""
    judged = sorted(qrels.for_query(qid).items(), key=lambda kv: (-kv[1], kv[0]))
    return [corpus.row_of(d) for d, g in judged if g >= 1 and corpus.has(d)]


def split_train_dev(queries: Queries, qrels: Qrels, corpus: Corpus, cfg: TrainConfig) -> tuple[Queries, Queries]:
    """Queries with a positive, shuffled with the seed, cut into (fit, dev)."""
    usable = [i for i, qid in enumerate(queries.ids) if positives_of(qid, qrels, corpus)]
    if len(usable) < 2:
        raise ValueError(
            f"only {len(usable)} training queries have a relevant document in the corpus; "
            "fine-tuning needs judged queries (check the split and the qrels)"
        )
    rng = random.Random(cfg.seed)
    rng.shuffle(usable)
    n_dev = 0
    if cfg.dev_fraction > 0:
        n_dev = max(cfg.min_dev, round(cfg.dev_fraction * len(usable)))
        n_dev = min(n_dev, len(usable) // 2, cfg.max_dev or len(usable))
    dev, fit = sorted(usable[:n_dev]), sorted(usable[n_dev:])
    return queries.select(fit), queries.select(dev)


def build_groups(
    queries: Queries,
    mined: Sequence[Ranking],
    qrels: Qrels,
    corpus: Corpus,
    cfg: TrainConfig,
    epoch: int,
) -> list[Group]:
    """One epoch's groups: fresh negatives from each query's mined top `mine_depth`, seeded per epoch."""
    rng = np.random.default_rng([cfg.seed, epoch])
    groups: list[Group] = []
    for qid, text, ranking in zip(queries.ids, queries.texts, mined):
        positives = positives_of(qid, qrels, corpus)
        if not positives:
            continue
        judged_relevant = set(positives)
        pool = [int(r) for r in ranking.doc_rows[: cfg.mine_depth] if int(r) not in judged_relevant]
        chosen = positives if len(positives) <= cfg.positives_per_query else list(
            rng.choice(positives, size=cfg.positives_per_query, replace=False)
        )
        for pos in chosen:
            if len(pool) >= cfg.negatives:
                negs = rng.choice(pool, size=cfg.negatives, replace=False).tolist()
            else:  # a short pool: top it up with random documents that are not judged relevant
                extra = [int(r) for r in rng.choice(len(corpus), size=4 * cfg.negatives) if int(r) not in judged_relevant]
                negs = (pool + [r for r in extra if r not in pool])[: cfg.negatives]
            groups.append(Group(text, int(pos), tuple(int(n) for n in negs)))
    order = rng.permutation(len(groups))
    groups = [groups[i] for i in order]
    if cfg.max_pairs is not None:
        groups = groups[: max(1, cfg.max_pairs // (1 + cfg.negatives))]
    return groups


# --------------------------------------------------------------------------- model


def load_base(cfg: TrainConfig) -> tuple[Any, Any]:
    """The base encoder with a fresh one-logit head, cut to `cfg.layers` layers; and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from stagegraph.indexes.encoder import ModelNotFoundError, resolve_model_path

    try:
        path = str(resolve_model_path(cfg.base))
    except ModelNotFoundError as exc:
        raise RerankerLoadError(f"cannot load the base model for fine-tuning: {exc}") from exc
    from stagegraph.stages.rerank.model import quiet_loading

    with quiet_loading(False), _silence_load_report():
        tokenizer = AutoTokenizer.from_pretrained(path)
        if cfg.head == "cosine":
            from stagegraph.stages.rerank.pair_head import MODEL_TYPE, from_bert

            if json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE:
                # an earlier stagegraph reranker: continue fine-tuning it
                model = AutoModelForSequenceClassification.from_pretrained(path)
                if cfg.layers is not None:
                    truncate_layers(model, cfg.layers)
                return model, tokenizer
            try:
                return from_bert(path, layers=cfg.layers), tokenizer
            except ValueError as exc:
                raise RerankerLoadError(f"{exc}; use --head cls for this base model") from exc
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    if cfg.layers is not None:
        truncate_layers(model, cfg.layers)
    return model, tokenizer


@contextlib.contextmanager
def _silence_load_report() -> Iterator[None]:
    """transformers lists the new head's weights as MISSING at length; that is expected here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def truncate_layers(model: Any, layers: int) -> None:
    """Keep the first `layers` transformer layers of a BERT-like (or DistilBERT) encoder."""
    base = model.base_model
    holder = getattr(getattr(base, "encoder", None), "layer", None)
    if holder is not None:
        if layers < len(holder):
            base.encoder.layer = holder[:layers]
        model.config.num_hidden_layers = len(base.encoder.layer)
        return
    holder = getattr(getattr(base, "transformer", None), "layer", None)
    if holder is not None:
        if layers < len(holder):
            base.transformer.layer = holder[:layers]
        model.config.n_layers = len(base.transformer.layer)
        return
    raise ValueError(f"cannot cut {type(model).__name__} to {layers} layers; pass layers=None to keep them all")


def _param_groups(model: Any, cfg: TrainConfig) -> list[dict]:
    head, body, no_decay = [], [], []
    for name, param in model.named_parameters():
        if cfg.freeze_embeddings and "word_embeddings" in name:
            param.requires_grad_(False)
            continue
        if name.startswith(("classifier", "pre_classifier")) or name in {"scale", "bias"}:
            head.append(param)  # the new, randomly initialised scoring layer
        elif param.ndim < 2:
            no_decay.append(param)
        else:
            body.append(param)
    return [
        {"params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0},
        {"params": head, "lr": cfg.head_lr, "weight_decay": 0.0},
    ]


def _group_loss(logits: Any, cfg: TrainConfig) -> Any:
    import torch
    import torch.nn.functional as F

    if cfg.loss == "listwise":  # the positive is column 0 of each group
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    weight = torch.tensor(float(cfg.negatives), device=logits.device)  # balance one positive against the negatives
    return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)


def train_cross_encoder(
    model: Any,
    tokenizer: Any,
    groups_for_epoch: Any,
    corpus: Corpus,
    cfg: TrainConfig,
    *,
    progress: bool = True,
) -> TrainStats:
    """Fine-tune `model` in place; `groups_for_epoch(epoch)` gives that epoch's groups."""
    import torch

    from stagegraph.indexes.devices import DeviceError, resolve_device
    from stagegraph.thread_counts import limited

    try:
        device = resolve_device(cfg.device)
    except DeviceError as exc:
        raise RerankerLoadError(f"cannot fine-tune: {exc}") from exc
    model.to(device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    epochs = [groups_for_epoch(e) for e in range(cfg.epochs)]
    steps_per_epoch = [math.ceil(len(g) / cfg.batch_groups) for g in epochs]
    total = max(1, sum(steps_per_epoch))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warm = max(1, int(cfg.warmup * total))
    optimiser = torch.optim.AdamW(_param_groups(model, cfg))
    base_lrs = [g["lr"] for g in optimiser.param_groups]
    stats = TrainStats(planned_steps=total)
    started = time.perf_counter()
    group_size = 1 + cfg.negatives
    model.train()
    with limited(cfg.threads), progress_bar(total=total, desc="fine-tuning", unit="step", disable=not progress) as bar:
        for epoch, groups in enumerate(epochs):
            losses = []
            for lo in range(0, len(groups), cfg.batch_groups):
                batch = groups[lo : lo + cfg.batch_groups]
                queries = [g.query for g in batch for _ in range(group_size)]
                docs = [corpus.doc_text(r) for g in batch for r in (g.positive, *g.negatives)]
                feats = tokenizer(queries, docs, truncation="longest_first", max_length=cfg.max_length,
                                  padding=True, return_tensors="pt").to(device)
                logits = model(**feats).logits.view(len(batch), group_size)
                loss = _group_loss(logits, cfg)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scale = (stats.steps + 1) / warm if stats.steps < warm else max(0.0, (total - stats.steps) / (total - warm + 1))
                for group, lr in zip(optimiser.param_groups, base_lrs):
                    group["lr"] = lr * scale
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
                stats.steps += 1
                stats.pairs += len(docs)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}")
                if cfg.time_budget_s is not None and stats.steps == CALIBRATION_STEPS:
                    # Fit the plan to this machine: as many steps as the budget allows, with the
                    # learning-rate schedule decaying over those steps rather than cut off mid-way.
                    per_step = (time.perf_counter() - started) / stats.steps
                    affordable = max(stats.steps + 1, int(cfg.time_budget_s / per_step))
                    if affordable < total:
                        total = affordable
                        warm = min(warm, max(1, int(cfg.warmup * total)))
                        stats.stopped_early = True
                        bar.total = total
                if stats.steps >= total:
                    break
            stats.epoch_loss.append(float(np.mean(losses)) if losses else float("nan"))
            stats.epochs_done = epoch + 1
            if stats.steps >= total:
                break
    stats.seconds = time.perf_counter() - started
    model.eval()
    model.to("cpu")  # saved and checked from the CPU; the dev check picks its own device
    return stats


def save_model(model: Any, tokenizer: Any, directory: Path) -> None:
    """Write a cross-encoder directory that `CrossEncoder` / `CrossEncoderReranker` load; scores are logits."""
    config = model.config
    config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    config.architectures = [type(model).__name__]
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
