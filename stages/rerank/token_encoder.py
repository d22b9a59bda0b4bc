"""The model side of late interaction: a ColBERT-shaped encoder that turns texts into token embeddings.

* `TokenEncoder`: a Hugging Face encoder plus the model's linear projection (a sentence-transformers
  `Dense` module in `1_Dense/`, the layout PyLate saves), one L2-normalised vector per token, padding
  dropped; the query and document prefixes from `config_sentence_transformers.json`; an in-process
  cache of passages' token embeddings (least recently used dropped first).
* `load_token_encoder(model, device)`: the model loaded once per process and device.
* `maxsim(query, documents)`: ColBERT's score, the sum over query tokens of the best dot product.
* `write_random_colbert(path)`: a ColBERT-shaped model with random weights, for tests, docs and benchmarks.

The rerank stage that uses them is `stagegraph.stages.rerank.late_interaction`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stagegraph.errors import StageError
from stagegraph.indexes.devices import DeviceError, resolve_device
from stagegraph.loaded_once import LoadedOnce
from stagegraph.progress import progress_bar
from stagegraph.stages.rerank.model import locate, model_fingerprint, quiet_loading


class TokenEncoder:
    """A loaded late-interaction model: encoder + projection, and the passages' token-embedding cache."""

    def __init__(self, path: Path, device: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.device = device  # resolved (`indexes.devices.resolve_device`)
        with quiet_loading(False):
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.encoder = AutoModel.from_pretrained(str(path)).to(self.device).eval()
        self.projection = _load_projection(path, self.device)
        meta = _read_json(path / "config_sentence_transformers.json")
        self.query_prefix = str(meta.get("query_prefix") or "")
        self.document_prefix = str(meta.get("document_prefix") or "")
        self.lock = threading.Lock()
        self.cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._torch = torch

    @property
    def dim(self) -> int:
        """The width of a token embedding (the projection's output, else the encoder's hidden size)."""
        return int(self.projection.out_features if self.projection is not None else self.encoder.config.hidden_size)

    def encode(self, texts: Sequence[str], max_length: int, batch_size: int, prefix: str = "", *,
               progress: bool = False, label: str = "") -> list[np.ndarray]:
        """One float32 array [tokens, dim] per text: projected, L2-normalised, padding dropped."""
        torch = self._torch
        out: list[np.ndarray] = []
        batches = range(0, len(texts), batch_size)
        for lo in progress_bar(batches, desc=label, unit="batch", disable=not progress or len(batches) < 2):
            chunk = [prefix + t for t in texts[lo: lo + batch_size]]
            enc = self.tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                hidden = self.encoder(**enc).last_hidden_state
                if self.projection is not None:
                    hidden = self.projection(hidden)
                hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
            hidden = hidden.float().cpu().numpy()
            mask = enc["attention_mask"].cpu().numpy().astype(bool)
            out.extend(h[m] for h, m in zip(hidden, mask))
        return out

    def documents(self, texts: Sequence[str], max_length: int, batch_size: int, cache: bool, limit: int,
                  dtype: str = "float32") -> tuple[list[np.ndarray], int]:
        """Token embeddings of passages (`dtype`), from the in-process cache where it has them, and how
        many were encoded."""
        keys = [(max_length, self.document_prefix, dtype, hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest())
                for t in texts]
        found: list[np.ndarray | None] = [None] * len(texts)
        if cache:
            with self.lock:
                for i, key in enumerate(keys):
                    hit = self.cache.get(key)
                    if hit is not None:
                        self.cache.move_to_end(key)
                        found[i] = hit
        todo = [i for i, f in enumerate(found) if f is None]
        new = [e.astype(dtype) for e in self.encode([texts[i] for i in todo], max_length, batch_size, self.document_prefix)]
        for i, emb in zip(todo, new):
            found[i] = emb
        if cache and todo:
            with self.lock:
                for i, emb in zip(todo, new):
                    self.cache[keys[i]] = emb
                while len(self.cache) > limit:
                    self.cache.popitem(last=False)
        return found, len(todo)  # type: ignore[return-value]


def maxsim(query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """ColBERT's score of each passage: sum over query tokens of the best dot product with its tokens."""
    if not documents:
        return np.zeros(0, dtype=np.float32)
    longest = max(len(d) for d in documents)
    dim = query.shape[1]
    padded = np.zeros((len(documents), longest, dim), dtype=np.float32)
    valid = np.zeros((len(documents), longest), dtype=bool)
    for i, d in enumerate(documents):
        padded[i, : len(d)] = d
        valid[i, : len(d)] = True
    sims = np.einsum("qd,ntd->nqt", query.astype(np.float32), padded)
    sims = np.where(valid[:, None, :], sims, -np.inf)
    return sims.max(axis=2).sum(axis=1).astype(np.float32)


_MODELS = LoadedOnce()


def load_token_encoder(model: str, device: str) -> TokenEncoder:
    """The model loaded once per process and device (its passage cache shared by every stage using it)."""
    path = locate(model)
    if path is None:
        raise StageError(f"late_interaction model {model!r} is not a local directory nor in the local Hugging Face "
                         "cache; download it first (or give the directory's path)")
    try:
        resolved = resolve_device(device)
    except DeviceError as exc:
        raise StageError(f"late_interaction: {exc}") from None
    return _MODELS.get((model_fingerprint(model), resolved), lambda: TokenEncoder(path, resolved))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _load_projection(path: Path, device: str) -> Any:
    """The linear projection saved as a sentence-transformers `Dense` module in `1_Dense/` (None: none)."""
    import torch

    folder = path / "1_Dense"
    if not folder.is_dir():
        return None
    config = _read_json(folder / "config.json")
    weights_file = folder / "model.safetensors"
    if weights_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights_file))
    else:
        state = torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    weight = state["linear.weight"]
    bias = bool(config.get("bias", "linear.bias" in state))
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    layer.load_state_dict({k.removeprefix("linear."): v for k, v in state.items() if k.startswith("linear.")})
    return layer.to(device).eval()


def write_random_colbert(path: str | Path, *, layers: int = 2, hidden: int = 32, dim: int = 16, heads: int = 2,
                         seed: int = 0, max_length: int = 512) -> Path:
    """Write a ColBERT-shaped model with random weights to `path` (for tests, docs and benchmarks): a
    BERT encoder with a small WordPiece vocabulary and a `1_Dense` projection to `dim`. Nothing is
    downloaded; the scores mean nothing, the shapes and costs are real. Returns `path`."""
    import string

    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = ("the a of and in to is for on with by from that this be are as at or an it was cell protein gene "
             "cancer patients disease treatment study results risk retrieval search query document index dense "
             "sparse vector rank score fusion pool model data method system time").split()
    vocab = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits,
                           *string.punctuation, *("##" + c for c in string.ascii_lowercase + string.digits), *words])
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True, model_max_length=max_length).save_pretrained(str(path))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=max_length)
    BertModel(config).save_pretrained(str(path))
    dense = path / "1_Dense"
    dense.mkdir(exist_ok=True)
    (dense / "config.json").write_text(json.dumps({"in_features": hidden, "out_features": dim, "bias": False}), encoding="utf-8")
    save_file({"linear.weight": torch.randn(dim, hidden) / hidden ** 0.5}, str(dense / "model.safetensors"))
    return path
