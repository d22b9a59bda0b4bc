"""Which torch device a model runs on: `auto`, `cpu`, `cuda`, `cuda:N` or `mps`.

Owned here: turning the `device` setting of the dense encoder, the cross-encoder stage and
`train-reranker` into a torch device string, with an error that names the fix when the device asked
for is not there. `auto` (the default everywhere) takes the first CUDA GPU torch sees, else Apple's
MPS, else the CPU, as sentence-transformers does. The device changes speed, and scores only by float
rounding, so it stays out of fingerprints (cache keys). The ONNX backends of the reranker always run
on the CPU.
"""

from __future__ import annotations

import re

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceError(RuntimeError):
    """The device asked for does not exist on this machine (or is not a device name at all)."""


def _torch():
    import torch

    return torch


def _mps_available(torch) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | None = "auto") -> str:
    """The torch device for `device`; `None` means `auto`. Raises `DeviceError` with the fix."""
    name = (device or "auto").strip().lower()
    if not DEVICE_PATTERN.match(name):
        raise DeviceError(f"device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    torch = _torch()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available(torch) else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise DeviceError(
                f"device {device!r} was asked for, but torch {torch.__version__} ({build}) sees no CUDA GPU: "
                "set device: cpu (or auto), or install a CUDA build of torch on a machine with an NVIDIA GPU"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} was asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
        return name
    if name == "mps" and not _mps_available(torch):
        raise DeviceError(f"device {device!r} was asked for, but torch has no MPS backend here: set device: cpu or auto")
    return name
