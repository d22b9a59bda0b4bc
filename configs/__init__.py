"""The bundled pipeline configs and pinned expectations, shipped as package data (`stagegraph.configs`).

`bundled(name)` finds a config by file name (`hybrid-rerank.yaml`) or stem (`hybrid-rerank`), so the
command line takes `stagegraph eval hybrid-rerank ...` from any directory, installed or not.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent
EXPECTATIONS_DIR = CONFIGS_DIR / "expectations"


def bundled(name: str) -> Path | None:
    """The bundled config called `name` (`hybrid`, `hybrid.yaml` or `configs/hybrid.yaml`), or None."""
    stem = Path(name)
    if stem.parts[:1] == ("configs",):
        stem = Path(*stem.parts[1:])
    for candidate in (CONFIGS_DIR / stem, CONFIGS_DIR / stem.with_suffix(".yaml")):
        if candidate.is_file() and candidate.suffix == ".yaml":
            return candidate
    return None


def names() -> list[str]:
    """The stems of the bundled pipeline configs."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml") if p.stem != "demo-expectations")
