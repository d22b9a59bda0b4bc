"""The YAML codec: pipeline configs (YAML or dicts) <-> composition nodes, with errors that name the
file, the field and the fix.

Two equivalent shapes are accepted:

```yaml
pipeline:                      # nested: a list is a sequence (>>), `parallel:` are branches (|)
  - parallel:
      - {type: bm25, name: bm25, k: 100}
      - {type: dense, name: dense, k: 100}
  - {type: pool, name: pool, method: rrf, k: 100}
  - {cutoff: 10, of: {type: cross_encoder, name: rerank}}   # `% 10`
```

A nested pipeline keeps its own filter and name: `{pipeline: [...], filter: {tenant: a}, name: inner}`
(what `Pipeline(..., filter=..., name=...)` composed into another pipeline writes).

```yaml
steps:                         # explicit: each stage names its inputs
  - {type: bm25, name: bm25}
  - {type: dense, name: dense}
  - {type: pool, name: pool, inputs: [bm25, dense]}
```

Each stage entry is `type:` plus the fields of that stage's pydantic `Config`; types resolve through
`stagegraph.pipeline.registry`, so plugin stages work the same way. This module reads and writes the
plain data of `stagegraph.pipeline.graph`; `Pipeline.from_yaml` / `to_yaml` are built on it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from stagegraph import atomic
from stagegraph.configs import bundled
from stagegraph.errors import ConfigError
from stagegraph.pipeline.graph import Cutoff, Node, Parallel, Scope, Sequence, StageNode, Step
from stagegraph.pipeline.registry import UnknownStageType, stage_class


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """A config file: the path itself when it exists, else the bundled config of that name."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    found = bundled(str(path))
    if found is not None:
        return found
    from stagegraph.configs import names

    raise ConfigError(
        f"{path}: no such pipeline config file; give a path, or a bundled config: {', '.join(names())}"
    )


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML config file (or a bundled config, by name)."""
    path = resolve_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.__class__.__name__}: {exc})") from None
    return _mapping(text, str(path))


def read_yaml(text_or_path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """(config mapping, source name) from YAML text, a file path or a bundled config name."""
    if isinstance(text_or_path, str) and ("\n" in text_or_path or text_or_path.lstrip().startswith(("pipeline:", "steps:", "{"))):
        return _mapping(text_or_path, "<yaml>"), "<yaml>"
    path = resolve_path(text_or_path)
    return load_config(path), str(path)


def _mapping(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a pipeline config is a mapping with a `pipeline:` or `steps:` list")
    return dict(data)


def dump_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)


def save_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    return atomic.write_text(path, dump_yaml(config))


def has_type(entry: Any, type_name: str) -> bool:
    """True when any stage entry of a config has `type: type_name`."""
    if isinstance(entry, Mapping):
        return entry.get("type") == type_name or any(has_type(v, type_name) for v in entry.values())
    if isinstance(entry, list):
        return any(has_type(v, type_name) for v in entry)
    return False


#: the environment variable naming the model of every cross-encoder stage (see `with_reranker`)
RERANKER_ENV = "STAGEGRAPH_RERANKER"


def with_reranker(config: Mapping[str, Any], model: str | None = None, installed: str | None = None) -> dict[str, Any]:
    """`config` with the model of every cross-encoder stage set. The one rule the CLI (`--reranker`),
    `stagegraph.open(..., reranker=)` and the server share; first match wins:

    1. `model`: an explicit choice (`--reranker`, `reranker=`);
    2. `$STAGEGRAPH_RERANKER`, when set;
    3. `installed`: the reranker a collection was given by `stagegraph train-reranker --collection`
       (its `reranker.json`, `stagegraph.collection.reranker_record`; None: searching no collection, or
       one without);
    4. the config's own `model:`.

    A `model` given for a config without a cross-encoder is an error; the environment variable and
    `installed` are then ignored (a pool-only config stays pool-only)."""
    chosen = model or os.environ.get(RERANKER_ENV) or installed or None
    if not chosen:
        return dict(config)
    if not has_type(config, "cross_encoder"):
        if model:
            raise ConfigError(f"reranker {model!r} was given, but the pipeline has no cross_encoder stage to use it; "
                              "use a config with one (e.g. hybrid-rerank)")
        return dict(config)
    return apply_overrides(config, {"cross_encoder": {"model": chosen}})


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of `config` where every stage whose `name` or `type` is a key gets those fields set."""
    config = copy.deepcopy(dict(config))
    matched: set[str] = set()

    def visit(entry: Any) -> None:
        if isinstance(entry, list):
            for item in entry:
                visit(item)
        elif isinstance(entry, dict):
            if "type" in entry:
                for key in (entry.get("name"), entry["type"]):
                    if key in overrides:
                        entry.update(overrides[key])
                        matched.add(key)
            for child in ("parallel", "of"):
                if child in entry:
                    visit(entry[child])

    visit(config.get("pipeline", config.get("steps", [])))
    unknown = set(overrides) - matched
    if unknown:
        raise ConfigError(f"no stage named or typed {', '.join(sorted(unknown))} in the config to override")
    return config


# -- dict -> nodes --------------------------------------------------------------------------------
def from_config(config: Any, source: str = "<config>") -> tuple[Node | None, list[Step] | None]:
    """(node tree, None) for the nested form, (None, steps) for the explicit form."""
    if isinstance(config, list):
        config = {"pipeline": config}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: a pipeline config is a mapping with a `pipeline:` or `steps:` list")
    known = {"name", "description", "pipeline", "steps", "filter", "executor"}
    if "filter" in config and not isinstance(config["filter"], (Mapping, type(None))):
        raise ConfigError(f"{source}: `filter:` is a mapping such as {{ext: md, year: {{$gte: 2024}}}}")
    extra = set(config) - known
    if extra:
        raise ConfigError(f"{source}: unknown top-level field(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(known))}")
    has_pipeline, has_steps = "pipeline" in config, "steps" in config
    if has_pipeline == has_steps:
        raise ConfigError(f"{source}: give exactly one of `pipeline:` (nested) or `steps:` (explicit inputs)")
    if has_pipeline:
        return _node(config["pipeline"], source, "pipeline"), None
    return None, _steps(config["steps"], source)


def _node(entry: Any, source: str, where: str) -> Node:
    if isinstance(entry, list):
        if not entry:
            raise ConfigError(f"{source}: {where} is an empty list; a sequence needs at least one stage")
        parts = [_node(item, source, f"{where}[{i}]") for i, item in enumerate(entry)]
        return parts[0] if len(parts) == 1 else Sequence(tuple(parts))
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{source}: {where} must be a stage (`type: ...`), a list, `parallel:` or `cutoff:`; got {entry!r}")
    if "parallel" in entry:
        branches = entry["parallel"]
        if set(entry) != {"parallel"} or not isinstance(branches, list) or len(branches) < 2:
            raise ConfigError(f"{source}: {where}.parallel must be a list of two or more branches and stand alone")
        return Parallel(tuple(_node(b, source, f"{where}.parallel[{i}]") for i, b in enumerate(branches)))
    if "pipeline" in entry:  # a nested pipeline with its own filter and name
        if not set(entry) <= {"pipeline", "filter", "name"}:
            raise ConfigError(f"{source}: {where}: a nested pipeline is written `{{pipeline: [...], filter: {{...}}, name: N}}`")
        scope_filter = entry.get("filter")
        if scope_filter is not None and not isinstance(scope_filter, Mapping):
            raise ConfigError(f"{source}: {where}.filter is a mapping such as {{ext: md, year: {{$gte: 2024}}}}")
        return Scope(_node(entry["pipeline"], source, f"{where}.pipeline"),
                     dict(scope_filter) if scope_filter else None, entry.get("name"))
    if "cutoff" in entry:
        if set(entry) != {"cutoff", "of"}:
            raise ConfigError(f"{source}: {where}: a cut-off is written `{{cutoff: K, of: <stage>}}`")
        k = entry["cutoff"]
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ConfigError(f"{source}: {where}.cutoff must be a positive integer, got {k!r}")
        return Cutoff(_node(entry["of"], source, f"{where}.of"), k)
    return StageNode(_stage(entry, source, where))


def _stage(entry: Mapping[str, Any], source: str, where: str, ignore: tuple[str, ...] = ()) -> Any:
    if "type" not in entry:
        raise ConfigError(f"{source}: {where} has no `type:`; every stage entry names its type")
    try:
        cls = stage_class(entry["type"])
    except UnknownStageType as exc:
        raise ConfigError(f"{source}: {where}.type: {exc}") from None
    fields = {k: v for k, v in entry.items() if k != "type" and k not in ignore}
    config = cls.Config.parse(fields, stage_type=cls.type_name, source=source, where=where)
    return cls.from_config(config)


def _steps(entries: Any, source: str) -> list[Step]:
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: `steps:` must be a non-empty list of stage entries")
    steps = []
    for i, entry in enumerate(entries):
        where = f"steps[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: {where} must be a stage entry with `type:`")
        inputs = entry.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise ConfigError(f"{source}: {where}.inputs must be a list of stage names")
        stage = _stage(entry, source, where, ignore=("inputs",))
        steps.append(Step(stage.name, stage, tuple(inputs)))
    return steps


# -- nodes -> dict --------------------------------------------------------------------------------
def to_config(root: Node | None, steps: list[Step]) -> dict[str, Any]:
    """A plain dict that `from_config` reads back to an equivalent pipeline."""
    if root is None:
        return {
            "steps": [{**s.stage.to_config(), **({"inputs": list(s.inputs)} if s.inputs else {})} for s in steps]
        }
    entry = _entry(root)
    return {"pipeline": entry if isinstance(entry, list) else [entry]}


def _entry(node: Node) -> Any:
    if isinstance(node, StageNode):
        return node.stage.to_config()
    if isinstance(node, Sequence):
        return [_entry(p) for p in node.parts]
    if isinstance(node, Parallel):
        return {"parallel": [_entry(b) for b in node.branches]}
    if isinstance(node, Cutoff):
        return {"cutoff": node.k, "of": _entry(node.node)}
    if isinstance(node, Scope):
        inner = _entry(node.node)
        scope: dict[str, Any] = {"pipeline": inner if isinstance(inner, list) else [inner]}
        if node.filter:
            scope["filter"] = node.filter
        if node.name:
            scope["name"] = node.name
        return scope
    raise ConfigError(f"cannot write pipeline node {node!r} as config")
