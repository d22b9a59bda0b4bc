"""A collection's own reranker: the model `stagegraph train-reranker --collection DIR` installed.

```
COLLECTION/
  reranker.json              InstalledReranker: which model, its cross-encoder stage, its held-out figures
  rerankers/<name>/          the model directory (a cross-encoder `CrossEncoderReranker` loads)
```

Both are written only when the model beat the pool on its held-out pseudo-queries; the model
directory first (atomically), then `reranker.json` (atomically, durable), so a reader sees the old
reranker or the new one, never half of one. Readers (`stagegraph.open(collection=DIR)`, `search`,
`serve`, `eval --collection`) pass `installed_model(DIR)` to `pipeline.config.with_reranker`, which
holds the one precedence rule: an explicit `--reranker`/`reranker=` first, then
`$STAGEGRAPH_RERANKER`, then this installed model, then the config's own model. `stagegraph.open`
with no config (the collection's own pipeline) also appends the installed cross-encoder stage when
that pipeline has none; a config given by name is used as written (a pool-only config stays pool-only).

A sharded collection has no installed reranker (training on one is refused, see
`stagegraph.training.collection`); removing `reranker.json` uninstalls.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stagegraph import atomic
from stagegraph.collection.layout import CollectionError

RECORD_FILE = "reranker.json"
MODELS_DIR = "rerankers"


class InstalledReranker(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the model directory, relative to the collection")
    stage: dict[str, Any] = Field(description="the cross-encoder stage appended to a pipeline that has none")
    installed: str
    held_out: dict[str, Any] = Field(default_factory=dict, description="pool vs pool + reranker on held-out pseudo-queries")


def record_path(root: str | Path) -> Path:
    return Path(root) / RECORD_FILE


def read_installed(root: str | Path | None) -> InstalledReranker | None:
    """The collection's installed reranker; None when it has none (or `root` is None)."""
    if root is None:
        return None
    path = record_path(root)
    if not path.is_file():
        return None
    try:
        record = InstalledReranker.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        raise CollectionError(f"{path} cannot be read ({type(exc).__name__}); retrain with `stagegraph train-reranker "
                              f"--collection {root}` or delete that file to search without it") from None
    if not (Path(root) / record.model).is_dir():
        raise CollectionError(f"{path} names the model {record.model}, which is not in {root}; retrain with "
                              f"`stagegraph train-reranker --collection {root}` or delete {path.name} to search without it")
    return record


def installed_model(root: str | Path | None) -> str | None:
    """The absolute path of the collection's installed reranker model, or None."""
    record = read_installed(root)
    return None if record is None else str((Path(root) / record.model).resolve())


def with_installed(config: dict[str, Any], root: str | Path | None, model: str | None = None, *,
                   append: bool = False) -> dict[str, Any]:
    """`config` with the reranker chosen by `with_reranker`'s rule for this collection; with `append`
    (the collection's own pipeline), an installed reranker's stage is added to a pipeline without one
    (unless an explicit `model` or `$STAGEGRAPH_RERANKER` names another: then it is that model's)."""
    from stagegraph.pipeline.config import has_type, with_reranker

    record = read_installed(root)
    if record is not None and append and not has_type(config, "cross_encoder") and "pipeline" in config:
        stage = dict(record.stage, model=str((Path(root) / record.model).resolve()))
        config = dict(config, pipeline=list(config["pipeline"]) + [stage])
    return with_reranker(config, model, None if record is None else str((Path(root) / record.model).resolve()))


def install(root: str | Path, model_dir: str | Path, stage: dict[str, Any], held_out: dict[str, Any]) -> InstalledReranker:
    """Copy `model_dir` into the collection (unless it is already there) and record it as its reranker."""
    root = Path(root)
    model_dir = Path(model_dir).resolve()
    models = (root / MODELS_DIR).resolve()
    if model_dir.parent != models:
        target = models / model_dir.name
        with atomic.atomic_dir(target) as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        model_dir = target
    stage = {k: v for k, v in stage.items() if k != "model"}
    record = InstalledReranker(
        model=str(model_dir.relative_to(root.resolve())), stage=stage,
        installed=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), held_out=held_out,
    )
    atomic.write_json(record_path(root), record.model_dump(mode="json"), durable=True)
    return record
