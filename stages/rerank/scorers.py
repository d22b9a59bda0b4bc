"""Which scorer a cross-encoder stage runs: one built for a concrete backend (torch fp32, torch bf16,
ONNX Runtime fp32 or int8), or the one `backend: auto` chooses on the model's calibration set.

`build_scorer` turns a loaded cross-encoder into a backend's scorer; `choose_auto` resolves `auto`
(the rule itself is `stagegraph.stages.rerank.calibration.choose_backend`) and keeps its decision in
`work_dir/rerank_backend/`, keyed by the model, the settings, the CPU and the library versions, so it
is measured once per machine. The stage (`cross_encoder.py`) only asks for a scorer, passing its
config; this module reads only the settings named in `ScorerSettings` and never imports the stage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from stagegraph.hashing import library_versions, stable_hash
from stagegraph.pipeline.threads import usable_cores
from stagegraph.stages.rerank.blend import BlendSpec
from stagegraph.stages.rerank.calibration import CANDIDATES, TOLERANCE, BackendChoice, choose_backend, load_calibration
from stagegraph.stages.rerank.cpu import backend_support, cpu_features
from stagegraph.stages.rerank.model import load_cross_encoder, locate, model_fingerprint

log = logging.getLogger(__name__)


class ScorerSettings(Protocol):
    """What building a scorer reads of a cross-encoder stage's config (`CrossEncoderConfig` has them)."""

    @property
    def model(self) -> str: ...
    @property
    def max_length(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def device(self) -> str: ...


def load_for(config: ScorerSettings, backend: str, progress: bool) -> Any:
    """The sentence-transformers CrossEncoder a backend starts from (ONNX exports from a CPU copy)."""
    device = config.device if backend in ("torch", "torch-bf16") else "cpu"
    return load_cross_encoder(config.model, config.max_length, device=device, progress=progress)


def build_scorer(config: ScorerSettings, backend: str, cross_encoder: Any, work_dir: Path, progress: bool) -> Any:
    """The scorer of a concrete backend; ONNX exports are cached under `work_dir/onnx/`."""
    if backend in ("torch", "torch-bf16"):
        from stagegraph.stages.rerank.model import TorchScorer

        return TorchScorer(cross_encoder, config.max_length, config.batch_size, bf16=backend == "torch-bf16")
    from stagegraph.stages.rerank.onnx import OnnxScorer

    return OnnxScorer.build(
        cross_encoder, config.max_length, config.batch_size, quantize=backend == "onnx-int8", threads=usable_cores(),
        cache_dir=work_dir / "onnx" / model_fingerprint(config.model)[:16], progress=progress,
    )


def choose_auto(config: ScorerSettings, blend: BlendSpec, work_dir: Path, *, read_only: bool, progress: bool,
                name: str) -> tuple[Any, BackendChoice]:
    """Resolve `backend: auto`: (the chosen backend's scorer, the decision with every trial and why)."""
    features = cpu_features()
    calibration = load_calibration(locate(config.model))
    cross_encoder = load_for(config, "torch", progress)
    on_cpu = str(next(cross_encoder.model.parameters()).device) == "cpu"
    if calibration is None or not calibration.queries or not on_cpu:
        why = ("the model has no calibration set (train-reranker writes one beside the model)" if on_cpu
               else "auto chooses among CPU backends and this model runs on a GPU")
        choice = BackendChoice(chosen="torch", reason=f"kept torch fp32: {why}", cpu=features.summary())
        log.info("stage %r: %s", name, choice.line())
        return build_scorer(config, "torch", cross_encoder, work_dir, progress), choice
    key = stable_hash({
        "model": model_fingerprint(config.model), "max_length": config.max_length, "batch_size": config.batch_size,
        "blend": blend.model_dump(), "cpu": list(features.flags), "tolerance": TOLERANCE,
        "libraries": library_versions(("torch", "onnxruntime", "transformers")),
    })
    record = work_dir / "rerank_backend" / f"{key[:20]}.json"
    choice = None
    if record.is_file():
        try:
            choice = BackendChoice.model_validate_json(record.read_text(encoding="utf-8"))
            choice.cached = True
        except (OSError, ValueError):
            choice = None
    if choice is None:
        supported = [(backend, *backend_support(backend, features)) for backend in CANDIDATES]
        built: dict[str, Any] = {}

        def build(backend: str) -> Any:
            if backend not in built:
                built[backend] = build_scorer(config, backend, cross_encoder, work_dir, progress)
            return built[backend]

        choice, _ = choose_backend(build, supported, calibration, blend, cpu=features.summary())
        if not read_only:
            from stagegraph.atomic import write_text

            write_text(record, choice.model_dump_json(indent=2))
        scorer = built[choice.chosen]
    else:
        scorer = build_scorer(config, choice.chosen, cross_encoder, work_dir, progress)
    log.info("stage %r: %s%s", name, choice.line(), " (decided at an earlier warm-up on this machine)" if choice.cached else "")
    return scorer, choice
