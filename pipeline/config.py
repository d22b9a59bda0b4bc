"""Pipelines as data: YAML/dict configs <-> `Graph`, with errors that name the file, field and fix.

Two equivalent shapes are accepted:

```yaml
pipeline:                      # nested: a list is a sequence (>>), `parallel:` are branches (|)
  - parallel:
      - {type: bm25, name: bm25, k: 100}
      - {type: dense, name: dense, k: 100}
  - {type: pool, name: pool, method: rrf, k: 100}
  - {cutoff: 10, of: {type: cross_encoder, name: rerank}}   # `% 10`
```

```yaml
steps:                         # explicit: each stage names its inputs
  - {type: bm25, name: bm25}
  - {type: dense, name: dense}
  - {type: pool, name: pool, inputs: [bm25, dense]}
```

Each stage entry is `type:` plus the fields of that stage's pydantic `Config`; types resolve through
`stages.registry`, so plugin stages work the same way.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stagegraph.pipeline.graph import Graph, GraphError, Step
from stagegraph.stages.compose import Cutoff, Node, Parallel, Sequence, StageNode
from stagegraph.pipeline.registry import UnknownStageType, stage_class


class ConfigError(ValueError):
    """A pipeline config is invalid; the message names the source, the field and the allowed values."""


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline config file (examples live in configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a pipeline config is a mapping with a `pipeline:` or `steps:` list")
    return dict(data)


def load_graph(path: str | os.PathLike[str], overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Graph:
    """Read a YAML pipeline; `overrides` maps a stage name or type to fields to replace."""
    config = load_config(path)
    if overrides:
        config = apply_overrides(config, overrides)
    return graph_from_config(config, source=str(path))


def save_graph(graph: Graph, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(yaml.safe_dump(graph_to_config(graph), sort_keys=False), encoding="utf-8")


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


# -- dict -> Graph --------------------------------------------------------------------------------
def graph_from_config(config: Any, source: str = "<config>") -> Graph:
    if isinstance(config, list):
        config = {"pipeline": config}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: a pipeline config is a mapping with a `pipeline:` or `steps:` list")
    known = {"name", "description", "pipeline", "steps"}
    extra = set(config) - known
    if extra:
        raise ConfigError(f"{source}: unknown top-level field(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(known))}")
    has_pipeline, has_steps = "pipeline" in config, "steps" in config
    if has_pipeline == has_steps:
        raise ConfigError(f"{source}: give exactly one of `pipeline:` (nested) or `steps:` (explicit inputs)")
    try:
        if has_pipeline:
            return Graph(_node(config["pipeline"], source, "pipeline"))
        return Graph(_steps(config["steps"], source))
    except GraphError as exc:
        raise ConfigError(f"{source}: {exc}") from None


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
    if "cutoff" in entry:
        if set(entry) != {"cutoff", "of"}:
            raise ConfigError(f"{source}: {where}: a cut-off is written `{{cutoff: K, of: <stage>}}`")
        k = entry["cutoff"]
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ConfigError(f"{source}: {where}.cutoff must be a positive integer, got {k!r}")
        return Cutoff(_node(entry["of"], source, f"{where}.of"), k)
    return StageNode(_stage(entry, source, where))


def _stage(entry: Mapping[str, Any], source: str, where: str, ignore: tuple[str, ...] = ()):
    if "type" not in entry:
        raise ConfigError(f"{source}: {where} has no `type:`; every stage entry names its type")
    try:
        cls = stage_class(entry["type"])
    except UnknownStageType as exc:
        raise ConfigError(f"{source}: {where}.type: {exc}") from None
    fields = {k: v for k, v in entry.items() if k != "type" and k not in ignore}
    try:
        config = cls.Config.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(_describe_validation(exc, cls, source, where)) from None
    return cls.from_config(config)


def _describe_validation(exc: ValidationError, cls: type, source: str, where: str) -> str:
    allowed = ", ".join(cls.Config.model_fields)
    lines = [f"{source}: {where} (type {cls.type_name!r}) is invalid:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(stage)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown field; allowed fields: {allowed}"
        lines.append(f"  {where}.{field}: {message}")
    return "\n".join(lines)


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


# -- Graph -> dict --------------------------------------------------------------------------------
def graph_to_config(graph: Graph) -> dict[str, Any]:
    """The graph as a plain dict that `graph_from_config` reads back to an equivalent graph."""
    if graph.root is None:
        return {
            "steps": [
                {**s.stage.to_config(), **({"inputs": list(s.inputs)} if s.inputs else {})} for s in graph.steps
            ]
        }
    entry = _entry(graph.root)
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
    raise ConfigError(f"cannot write graph node {node!r} as config")
