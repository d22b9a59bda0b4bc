"""Suite-wide rules: the shared evaluation datasets, and what CI may not skip.

`shared_dataset(name)` gives `../shared/datasets/<name>` (or `$STAGEGRAPH_DATASETS/<name>`). When
it is absent the test is skipped on a developer's machine, but FAILS when `CI=true`: CI always has
the datasets beside the clone, so a missing one is a broken setup, never a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def shared_dataset(name: str) -> Path:
    roots = [Path(p) for p in os.environ.get("STAGEGRAPH_DATASETS", "").split(os.pathsep) if p] + [SHARED]
    for root in roots:
        if (root / name / "corpus.jsonl").is_file():
            return root / name
    message = f"the shared dataset {name!r} is not under {', '.join(map(str, roots))}"
    if in_ci():
        pytest.fail(f"CI=true but {message}: CI must have ../shared/datasets beside the clone")
    pytest.skip(message)
