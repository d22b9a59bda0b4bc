"""What this CPU can do for the reranker's numeric backends: read from the machine, never assumed.

`cpu_features()` reads the instruction-set flags the kernel reports (`/proc/cpuinfo` on Linux) and
torch's own view (`torch.backends.cpu.get_cpu_capability()`), once per process. What the backends
need from them:

* `torch-bf16` (bfloat16 autocast) is fast only with bf16 dot products in hardware: AVX-512 BF16
  (`avx512_bf16`) or AMX (`amx_bf16`); elsewhere oneDNN emulates bf16 and it is slower than fp32;
* `onnx-int8` (ONNX Runtime's dynamic int8 MatMuls) uses VNNI (`avx512_vnni` or `avx_vnni`) or AMX
  int8 where present; without them it runs on AVX2 byte multiplies (correct, with less speed-up).

`backend_support(backend, features)` says whether `backend: auto` may try a backend here, and why
(the ONNX backends also need ONNX Runtime installed).
On a machine whose flags cannot be read (not Linux), bf16 is not offered: nothing is assumed.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import BaseModel, ConfigDict

#: Flags that matter to the backends, in the order they are reported.
RELEVANT = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


class CpuFeatures(BaseModel):
    """The flags of this CPU that the backends care about, and torch's dispatch level."""

    model_config = ConfigDict(frozen=True)

    flags: tuple[str, ...] = ()
    torch_capability: str = ""
    source: str = ""  # where the flags were read ("/proc/cpuinfo", or "unavailable")

    @property
    def bf16(self) -> bool:
        """bf16 dot products in hardware (AVX-512 BF16 or AMX)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot products in hardware (AVX-512 VNNI, AVX-VNNI or AMX int8)."""
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    def summary(self) -> str:
        shown = ", ".join(self.flags) or "none of " + "/".join(RELEVANT)
        return f"{shown} (torch dispatch {self.torch_capability or 'unknown'}; read from {self.source})"


def _read_flags(path: Path = Path("/proc/cpuinfo")) -> tuple[tuple[str, ...], str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return (), "unavailable"
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            present = set(line.split(":", 1)[1].split())
            return tuple(f for f in RELEVANT if f in present), str(path)
    return (), f"{path} (no flags line)"


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's features (read once per process)."""
    flags, source = _read_flags()
    capability = ""
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - torch's view is extra information only
        capability = ""
    return CpuFeatures(flags=flags, torch_capability=capability, source=source)


@functools.cache
def _onnx_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def backend_support(backend: str, features: CpuFeatures) -> tuple[bool, str]:
    """(may `auto` try it here, why), for one of the concrete backends."""
    if backend.startswith("onnx") and not _onnx_installed():
        return False, "ONNX Runtime is not installed (pip install onnxruntime onnx)"
    if backend in ("torch", "onnx"):
        return True, "fp32 runs everywhere"
    if backend == "torch-bf16":
        if features.bf16:
            which = "AMX" if "amx_bf16" in features.flags else "AVX-512 BF16"
            return True, f"the CPU has {which}"
        return False, "the CPU has neither AVX-512 BF16 nor AMX (bf16 would be emulated, slower than fp32)"
    if backend == "onnx-int8":
        if features.vnni:
            return True, "the CPU has VNNI (int8 dot products)"
        return True, "no VNNI: int8 runs on AVX2 byte multiplies"
    return False, f"unknown backend {backend!r}"
