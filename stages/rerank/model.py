"""Cross-encoder models for the rerank stage: finding, checking, loading, and scoring pairs fast.

* `model_fingerprint(name)` identifies a model before anything is loaded: the content identity of
  its directory when it is on disk (see `stagegraph.indexes.encoder.model_identity`), else the name itself.
* `load_cross_encoder(name, max_length)` resolves the name like every other model in stagegraph (a
  local path, `$STAGEGRAPH_MODELS`, an installed package, the Hugging Face cache) and loads it with
  sentence-transformers' `CrossEncoder`. A model that is missing, broken, or not a cross-encoder (a
  bi-encoder such as all-MiniLM-L6-v2 has no classification head; one with several labels gives no
  single score) raises `RerankerLoadError`, whose message says what to do instead.
* `TorchScorer.score(queries, docs)` scores pairs exactly as `CrossEncoder.predict` does (same
  tokenizer call, truncation `longest_first` to `max_length`, same activation), but tokenises all
  pairs once, sorts them by *token* length so that each batch pads little, and pads with numpy.
  `pad_batches` is shared with the ONNX backend (`stagegraph.stages.rerank.onnx`). With
  `bf16=True` the forward pass runs under bfloat16 autocast (`torch.autocast`: matmuls in bf16,
  reductions such as softmax and LayerNorm kept in fp32) on a copy of the model whose Linear weights
  are stored in bf16, the `torch-bf16` backend; the scores come back as float32.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stagegraph.errors import StageError
from stagegraph.indexes.encoder import quiet_transformers
from stagegraph.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"
TRAIN_HINT = (
    "stagegraph train-reranker configs/hybrid-rerank.yaml --dataset sample --split train "
    "--out models/reranker-sample"
)


class RerankerLoadError(StageError):
    """The cross-encoder cannot be loaded; the message names the model and the fix."""


def locate(name: str) -> Path | None:
    """The local directory of model `name`, or None when no local copy exists (nothing loaded)."""
    from stagegraph.indexes.encoder import ModelNotFoundError, resolve_model_path

    try:
        return Path(resolve_model_path(name))
    except (ModelNotFoundError, OSError):
        return None


def model_fingerprint(name: str) -> str:
    """Content identity of the model directory when it is on disk, else `name:<name>`."""
    from stagegraph.indexes.encoder import model_identity

    path = locate(name)
    if path is None:
        return f"name:{name}"
    try:
        return model_identity(path)
    except OSError:
        return f"name:{name}"


def read_stagegraph_metadata(name: str) -> dict[str, Any]:
    """The `stagegraph_reranker.json` that `train-reranker` writes beside a model ({} when absent)."""
    path = locate(name)
    meta = path / "stagegraph_reranker.json" if path is not None else None
    if meta is None or not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RerankerLoadError(f"{meta} is not valid JSON ({exc}); retrain with `{TRAIN_HINT}` or delete it") from exc


def check_is_cross_encoder(name: str, path: Path) -> None:
    """Refuse a directory whose config declares no sequence-classification head with one label."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise RerankerLoadError(
            f"{name!r} ({path}) has no config.json, so it is not a Hugging Face model directory. "
            f"Pass the directory that holds config.json and the weights, or train one: `{TRAIN_HINT}`."
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise RerankerLoadError(
            f"{name!r} ({path}) is not a cross-encoder: its config declares {archs or 'no architecture'}, "
            "not a *ForSequenceClassification head, so its reranking scores would come from a random, "
            "untrained head. Use a cross-encoder (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2 where the "
            f"hub is reachable), or fine-tune this model into one: `{TRAIN_HINT} --base {name}`."
        )
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    if labels != 1:
        raise RerankerLoadError(
            f"{name!r} ({path}) has {labels} output labels; a reranker needs one relevance score per pair. "
            "Use a cross-encoder with num_labels=1 (all ms-marco cross-encoders are)."
        )


def load_cross_encoder(name: str, max_length: int, *, device: str | None = "cpu", progress: bool = False) -> Any:
    """A `sentence_transformers.CrossEncoder` for `name` on `device` (see `stagegraph.indexes.devices`), or `RerankerLoadError`."""
    from stagegraph.indexes.devices import DeviceError, resolve_device
    from stagegraph.indexes.encoder import ModelNotFoundError, resolve_model_path

    try:
        device = resolve_device(device)
    except DeviceError as exc:
        raise RerankerLoadError(f"cannot load the cross-encoder {name!r}: {exc}") from exc

    try:
        path = Path(resolve_model_path(name))
    except ModelNotFoundError as exc:
        raise RerankerLoadError(
            f"cannot load the cross-encoder {name!r}. {exc} Without the hub, fine-tune a reranker "
            f"locally and pass its directory: `{TRAIN_HINT}`, then use --reranker models/reranker-sample."
        ) from exc
    check_is_cross_encoder(name, path)
    from sentence_transformers import CrossEncoder

    import stagegraph.stages.rerank.pair_head  # noqa: F401 - registers the cosine pair head with transformers

    with quiet_loading(progress):
        try:
            model = CrossEncoder(str(path), max_length=max_length, device=device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means "this directory is unusable"
            raise RerankerLoadError(
                f"the cross-encoder {name!r} was found at {path} but could not be loaded: {exc}. "
                f"Check that the directory is complete (config, tokenizer, weights), or retrain it: `{TRAIN_HINT}`."
            ) from exc
    limit = token_positions(model.model.config)
    if limit is not None and max_length > limit:
        raise RerankerLoadError(
            f"max_length {max_length} exceeds the {limit} token positions the cross-encoder {name!r} has; "
            f"set max_length <= {limit}"
        )
    return model


#: model types whose position ids start after the padding index (RoBERTa's convention)
OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "xlm-roberta-xl"})


def token_positions(config: Any) -> int | None:
    """How many tokens a transformer's position embeddings cover (None: no such limit is known)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(config, "model_type", "") in OFFSET_POSITIONS:
        return positions - (int(getattr(config, "pad_token_id", 1) or 1) + 1)
    return positions


@contextlib.contextmanager
def quiet_loading(progress: bool) -> Iterator[None]:
    """Load without sentence-transformers' INFO chatter (and without weight-loading bars unless `progress`)."""
    st_log = logging.getLogger("sentence_transformers")
    level = st_log.level
    st_log.setLevel(logging.WARNING)
    try:
        with contextlib.nullcontext() if progress else quiet_transformers():
            yield
    finally:
        st_log.setLevel(level)


# --------------------------------------------------------------------------- tokenising and batching


def tokenize_pairs(tokenizer: Any, queries: Sequence[str], docs: Sequence[str], max_length: int) -> dict[str, list]:
    """Token ids of every pair, unpadded, truncated as `CrossEncoder.predict` truncates them."""
    enc = tokenizer(
        list(queries), list(docs), truncation="longest_first", max_length=max_length, padding=False
    )
    names = [n for n in tokenizer.model_input_names if n in enc]
    return {n: enc[n] for n in names}


def pad_batches(
    encoded: dict[str, list], batch_size: int, pad_id: int, padding_side: str = "right"
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (positions, int64 arrays) per batch, longest pairs first, each batch padded to its own max.

    Sorting by token length is what keeps padding small: a batch of 16 pairs of ~200 tokens is not
    padded to the one 512-token pair elsewhere in the list.
    """
    ids = encoded["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable")
    for lo in range(0, len(order), batch_size):
        positions = order[lo : lo + batch_size]
        width = int(lengths[positions[0]])
        arrays: dict[str, np.ndarray] = {}
        for name, rows in encoded.items():
            fill = pad_id if name == "input_ids" else 0
            out = np.full((len(positions), width), fill, dtype=np.int64)
            for j, p in enumerate(positions):
                row = rows[p]
                if padding_side == "left":
                    out[j, width - len(row) :] = row
                else:
                    out[j, : len(row)] = row
            arrays[name] = out
        if "attention_mask" not in arrays:
            mask = np.zeros((len(positions), width), dtype=np.int64)
            for j, p in enumerate(positions):
                n = len(ids[p])
                if padding_side == "left":
                    mask[j, width - n :] = 1
                else:
                    mask[j, :n] = 1
            arrays["attention_mask"] = mask
        yield positions, arrays


class TorchScorer:
    """Scores (query, document) pairs with a loaded `CrossEncoder`'s transformer on its device: fp32,
    or under bfloat16 autocast (`bf16=True`)."""

    def __init__(self, cross_encoder: Any, max_length: int, batch_size: int = 16, *, bf16: bool = False):
        import torch

        self.bf16 = bool(bf16)
        self.backend = "torch-bf16" if self.bf16 else "torch"
        self.cross_encoder = cross_encoder
        self.model = cross_encoder.model
        if self.bf16:
            # A copy whose Linear weights are bf16 once, so autocast does not re-cast them on every
            # call (with blocks of a few pairs that cast cost more than the bf16 matmuls saved);
            # autocast still runs LayerNorm and softmax in fp32, so the scores are autocast's.
            import copy

            self.model = copy.deepcopy(self.model)
            for module in self.model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(torch.bfloat16)
        self.model.eval()
        self.tokenizer = cross_encoder.tokenizer
        self.activation = cross_encoder.activation_fn
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.device = next(self.model.parameters()).device
        self._torch = torch

    def logits(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        feats = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            out = self.model(**feats).logits.float()
            if self.activation is not None:
                out = self.activation(out)
        return out.reshape(len(out), -1)[:, 0].float().cpu().numpy()

    def score(self, queries: Sequence[str], docs: Sequence[str], progress: bool = False) -> np.ndarray:
        """float32 scores aligned with the pairs (the values `CrossEncoder.predict` returns)."""
        return score_batched(self, queries, docs, progress)


def score_batched(scorer: Any, queries: Sequence[str], docs: Sequence[str], progress: bool = False) -> np.ndarray:
    """Tokenise all pairs, run `scorer.logits` over length-sorted padded batches, restore the order."""
    out = np.empty(len(queries), dtype=np.float32)
    if not len(queries):
        return out
    tokenizer = scorer.tokenizer
    encoded = tokenize_pairs(tokenizer, queries, docs, scorer.max_length)
    pad_id = tokenizer.pad_token_id or 0
    show = progress and len(queries) >= 256
    with progress_bar(total=len(queries), desc="reranking pairs", unit="pair", disable=not show) as bar:
        for positions, arrays in pad_batches(encoded, scorer.batch_size, pad_id, tokenizer.padding_side):
            out[positions] = scorer.logits(arrays)
            bar.update(len(positions))
    return out
