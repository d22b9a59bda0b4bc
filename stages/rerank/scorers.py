"""Which scorer a cross-encoder stage runs: one built for a concrete backend (torch fp32, torch bf16,
ONNX Runtime fp32 or int8), or the one `backend: auto` chooses on the model's calibration set; and
`load_scoring`, everything a stage loads with its model (`Scoring`: the scorer, the blend with the
upstream ranking, the adaptive-depth margin, the backend in force), which a bound stage holds and a
rebinding shares.

`build_scorer` turns a loaded cross-encoder into a backend's scorer; `choose_auto` resolves `auto`
(the rule itself is `stagegraph.stages.rerank.calibration.choose_backend`) and keeps its decision in
`work_dir/rerank_backend/`, keyed by the model, the settings, the CPU and the library versions, so it
is measured once per machine. The stage (`cross_encoder.py`) only asks for a scorer, passing its
config; this module reads only the settings named in `ScorerSettings` and never imports the stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stagegraph.hashing import library_versions, stable_hash
from stagegraph.pipeline.threads import usable_cores
from stagegraph.stages.rerank.blend import BlendSpec, RerankerMetadata
from stagegraph.stages.rerank.calibration import CANDIDATES, TOLERANCE, BackendChoice, choose_backend, load_calibration
from stagegraph.stages.rerank.cpu import backend_support, cpu_features
from stagegraph.stages.rerank.depth import AdaptiveCalibration
from stagegraph.stages.rerank.model import (
    TRAIN_HINT, RerankerLoadError, load_cross_encoder, locate, model_fingerprint, read_stagegraph_metadata,
)

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


# -- a stage's loaded model: the scorer and what is resolved with it --------------------------------
@dataclass
class Scoring:
    """A cross-encoder's loaded model and what was resolved with it: the scorer, the blend with the
    upstream ranking, the adaptive depth margin, and the backend in force (with `auto`'s decision)."""

    scorer: Any
    blend: BlendSpec
    margin: float | None
    backend: str
    backend_choice: BackendChoice | None = None


def load_scoring(config: Any, name: str, work_dir: Path, *, read_only: bool = False,
                 progress: bool = False) -> Scoring:
    """Load the model of `config` and resolve its blend, margin and backend (`RerankerLoadError`, one
    line, where it cannot)."""
    blend = resolve_blend(config)
    margin = resolve_margin(config, name)
    if config.backend == "auto":
        scorer, choice = choose_auto(config, blend, work_dir, read_only=read_only, progress=progress, name=name)
        return Scoring(scorer, blend, margin, choice.chosen, choice)
    if config.backend == "torch-bf16" and not cpu_features().bf16:
        log.warning("stage %r: backend torch-bf16 on a CPU without AVX-512 BF16 or AMX runs emulated bf16, "
                    "slower than fp32; use backend: auto or torch", name)
    scorer = build_scorer(config, config.backend, load_for(config, config.backend, progress), work_dir, progress)
    return Scoring(scorer, blend, margin, config.backend)


def resolve_margin(config: Any, name: str) -> float | None:
    """The adaptive-depth margin in force (None: adaptive depth is off)."""
    policy = config.adaptive_depth
    if policy is None:
        return None
    if policy.margin != "calibrated":
        return float(policy.margin)
    saved = read_stagegraph_metadata(config.model).get("adaptive_depth")
    if not saved:
        raise RerankerLoadError(
            f"stage {name!r}: adaptive_depth margin 'calibrated' needs a model trained by train-reranker "
            f"(it calibrates the margin on held-out queries), and {config.model!r} has none; "
            f"set adaptive_depth.margin to a number or retrain: `{TRAIN_HINT}`"
        )
    return AdaptiveCalibration.model_validate(saved).margin


def resolve_blend(config: Any) -> BlendSpec:
    """The blend in force: the config's alpha and upstream, else the model's saved choice, else pure CE."""
    saved = RerankerMetadata.model_validate(read_stagegraph_metadata(config.model)).blend
    alpha = saved.alpha if config.blend is None else config.blend
    upstream = config.blend_upstream or saved.upstream
    return BlendSpec(alpha=alpha, upstream=upstream)



def scorer_key(config: Any, backend: str) -> str:
    """Identity of a scorer's scores: the model, the truncation and the numeric backend."""
    return stable_hash({"model": model_fingerprint(config.model), "max_length": config.max_length, "backend": backend})
