"""The ONNX Runtime backend of the rerank stage: fp32, and int8 by dynamic quantisation.

The Hugging Face model inside a loaded `CrossEncoder` is exported with `torch.onnx.export` (the
TorchScript exporter, `dynamo=False`: it needs only the `onnx` package, not onnxscript or optimum,
whose pins would drag sentence-transformers back), with dynamic batch and sequence axes and eager
attention, which traces cleanly. ONNX Runtime's BERT fusions (attention, LayerNorm, GELU) are applied
when its transformer optimiser accepts the model; int8 is `quantize_dynamic` over the fused fp32 file
(int8 weights, activations quantised per batch at run time).

Files are cached under the given directory (`work_dir/onnx/<model identity>/`), written to a temp
name and renamed, so a crash never leaves half a model behind. Sessions run with a fixed intra-op
thread count and with spinning disabled: ONNX Runtime's threads otherwise busy-wait between calls
and starve torch when both run in one process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stagegraph.atomic import atomic_path
from stagegraph.stages.rerank.model import RerankerLoadError, score_batched

log = logging.getLogger(__name__)

FORMAT = "v1"  # bump when the export recipe changes, so stale files are not reused


def _require_onnx() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RerankerLoadError(
            "backend 'onnx'/'onnx-int8' needs ONNX Runtime: `pip install onnxruntime onnx`, "
            "or set `backend: torch` in the reranker's config."
        ) from exc
    return onnxruntime


def export_onnx(model: Any, target: Path) -> Path:
    """Export a `*ForSequenceClassification` model to `target` (logits output), unless it exists."""
    if target.is_file():
        return target
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any, names: Sequence[str]):
            super().__init__()
            self.inner, self.names = inner, list(names)

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(self.names, tensors))).logits

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if _accepts(model, n)]
    previous = getattr(model.config, "_attn_implementation", None)
    try:
        if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        dummy = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
        axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
        wrapper = Logits(model, names).eval()
        with atomic_path(target) as tmp, torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapper, dummy, str(tmp), dynamo=False, input_names=names, output_names=["logits"],
                dynamic_axes=axes, opset_version=17, do_constant_folding=True,
            )
            _optimise(tmp, model.config)
    except Exception as exc:  # noqa: BLE001 - report any exporter failure the same way
        raise RerankerLoadError(
            f"exporting the cross-encoder to ONNX failed ({exc}); use `backend: torch`, or check that "
            "the `onnx` package is installed (`pip install onnx`)."
        ) from exc
    finally:
        if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(previous)
    return target


def _accepts(model: Any, name: str) -> bool:
    import inspect

    return name in inspect.signature(model.forward).parameters


def _optimise(path: Path, config: Any) -> None:
    """Fuse BERT attention/LayerNorm/GELU in place with ONNX Runtime's optimiser, when it applies."""
    if getattr(config, "model_type", "") not in {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "stagegraph_pair_bert"}:
        return
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        heads = int(getattr(config, "num_attention_heads", 0))
        hidden = int(getattr(config, "hidden_size", 0))
        model_type = "bert" if config.model_type in {"roberta", "xlm-roberta", "electra", "stagegraph_pair_bert"} else config.model_type
        with _quiet_loggers("onnxruntime", "onnx_model", "fusion_base", "fusion_utils", "onnx_model_bert"):
            optimised = optimize_model(str(path), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=1)
            optimised.save_model_to_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the unfused graph is still correct, only slower
        log.info("ONNX Runtime's transformer optimiser did not apply (%s); using the plain export", exc)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """ONNX Runtime's optimiser and quantiser log every fusion and tensor at INFO (the quantiser on
    the root logger, ""); keep them to warnings while they run."""
    loggers = [logging.getLogger(n) if n else logging.getLogger() for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of `source` (weights int8 per output channel, activations per batch), unless cached.

    Per-channel weight scales matter: one scale per tensor cost the fine-tuned sample reranker a
    visible part of its nDCG@10, per channel kept it, at the same speed; `reduce_range` (the 7-bit
    option for CPUs without VNNI) was worse still (docs/reranking.md, "Speed": the int8 quality table).
    """
    if target.is_file():
        return target
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import onnx

    with atomic_path(target) as tmp, _quiet_loggers("onnxruntime", "onnxruntime.quantization", ""):
        quantize_dynamic(
            str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
            # fused contrib ops (Attention, SkipLayerNorm) defeat ONNX shape inference: say they are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return target


def make_session(path: Path, threads: int | None) -> Any:
    ort = _require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or 0)  # 0 = ONNX Runtime's default (physical cores)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxScorer:
    """Scores pairs with an ONNX Runtime session; the same tokenisation, batching and activation as torch."""

    def __init__(self, session: Any, tokenizer: Any, activation: Any, max_length: int, batch_size: int, backend: str):
        self.session = session
        self.tokenizer = tokenizer
        self.activation = activation
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.backend = backend
        self.input_names = [i.name for i in session.get_inputs()]

    @classmethod
    def build(
        cls,
        cross_encoder: Any,
        max_length: int,
        batch_size: int,
        *,
        quantize: bool,
        threads: int | None,
        cache_dir: Path,
        progress: bool = False,
    ) -> OnnxScorer:
        _require_onnx()
        cache_dir = Path(cache_dir)
        fp32 = export_onnx(cross_encoder.model, cache_dir / f"model-{FORMAT}.onnx")
        path = quantize_int8(fp32, cache_dir / f"model-{FORMAT}-int8-per-channel.onnx") if quantize else fp32
        session = make_session(path, threads)
        backend = "onnx-int8" if quantize else "onnx"
        return cls(session, cross_encoder.tokenizer, cross_encoder.activation_fn, max_length, batch_size, backend)

    def logits(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        ids = arrays["input_ids"]
        feed = {name: arrays[name] if name in arrays else np.zeros_like(ids) for name in self.input_names}
        out = self.session.run(["logits"], feed)[0]
        if self.activation is not None:
            import torch

            with torch.inference_mode():
                out = self.activation(torch.from_numpy(out)).numpy()
        return np.asarray(out, dtype=np.float32).reshape(len(out), -1)[:, 0]

    def score(self, queries: Sequence[str], docs: Sequence[str], progress: bool = False) -> np.ndarray:
        return score_batched(self, queries, docs, progress)
