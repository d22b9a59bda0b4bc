"""`Graph`: a validated pipeline, flattened into named steps in execution order.

A graph is built from composition nodes (`a >> b`, `a | b`, `x % k`, see `stages.compose`) or from
a list of explicit steps (each naming its inputs). Validation happens here, once, when the graph is
built, and every error names the stage and the fix:

* stage names are unique;
* a retriever (arity NONE) starts a chain and takes no input;
* a reranker (arity ONE) needs exactly one upstream list;
* a fusing stage (arity MANY) needs two or more;
* the graph has no cycle and ends in exactly one stage (its output).

`str(graph)` draws the graph as an indented tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagegraph.stages.base import Arity, Stage
from stagegraph.stages.compose import Cutoff, Node, Parallel, Sequence, StageNode, as_node


class GraphError(ValueError):
    """The pipeline's shape is invalid; the message names the stage and the fix."""


@dataclass(frozen=True)
class Step:
    """One stage in a flattened graph: its upstream step names and an optional cut-off."""

    name: str
    stage: Stage
    inputs: tuple[str, ...]
    cutoff: int | None = None


class Graph:
    """A validated pipeline: `steps` in topological order, ending in `output`."""

    def __init__(self, pipeline: Any):
        self.root: Node | None = None
        if isinstance(pipeline, (list, tuple)) and all(isinstance(s, Step) for s in pipeline):
            steps = list(pipeline)
        else:
            self.root = as_node(pipeline)
            steps = []
            _flatten(self.root, (), steps, None)
        self.steps: list[Step] = _validate(steps)
        self.output: str = self.steps[-1].name
        for step in self.steps:
            try:
                step.stage.input_names = step.inputs
            except AttributeError:  # a stage class with __slots__ and no such slot: it does not care
                pass

    # -- access ---------------------------------------------------------------------------------
    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no stage named {name!r} in the graph; stages: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def stages(self) -> list[Stage]:
        return [s.stage for s in self.steps]

    def levels(self) -> list[list[Step]]:
        """Steps grouped so that each group depends only on earlier groups (parallel branches)."""
        depth: dict[str, int] = {}
        for step in self.steps:
            depth[step.name] = 1 + max((depth[i] for i in step.inputs), default=-1)
        groups: list[list[Step]] = [[] for _ in range(max(depth.values()) + 1)]
        for step in self.steps:
            groups[depth[step.name]].append(step)
        return groups

    # -- config ---------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        from stagegraph.pipeline.config import graph_to_config

        return graph_to_config(self)

    @classmethod
    def from_config(cls, config: Any, source: str = "<config>") -> Graph:
        from stagegraph.pipeline.config import graph_from_config

        return graph_from_config(config, source=source)

    # -- display --------------------------------------------------------------------------------
    def __str__(self) -> str:
        lines = ["Graph"]
        _draw(self.output, {s.name: s for s in self.steps}, "", True, lines)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Graph({' -> '.join(self.names)})"


def _describe(step: Step) -> str:
    settings = step.stage.config.model_dump(exclude_defaults=True, exclude={"name"})
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    cut = f" % {step.cutoff}" if step.cutoff else ""
    return f"{step.name} [{step.stage.type_name}{': ' + shown if shown else ''}]{cut}"


def _draw(name: str, by_name: dict[str, Step], prefix: str, last: bool, lines: list[str]) -> None:
    step = by_name[name]
    lines.append(f"{prefix}{'└── ' if last else '├── '}{_describe(step)}")
    child_prefix = prefix + ("    " if last else "│   ")
    for i, upstream in enumerate(step.inputs):
        _draw(upstream, by_name, child_prefix, i == len(step.inputs) - 1, lines)


def _flatten(node: Node, upstream: tuple[str, ...], out: list[Step], cutoff: int | None) -> tuple[str, ...]:
    """Append `node`'s steps to `out`, fed by `upstream`; return the names of its outputs."""
    if isinstance(node, StageNode):
        out.append(Step(node.stage.name, node.stage, upstream, cutoff))
        return (node.stage.name,)
    if isinstance(node, Cutoff):
        return _flatten(node.node, upstream, out, node.k if cutoff is None else min(cutoff, node.k))
    if isinstance(node, Sequence):
        current = upstream
        for i, part in enumerate(node.parts):
            current = _flatten(part, current, out, cutoff if i == len(node.parts) - 1 else None)
        return current
    if isinstance(node, Parallel):
        if cutoff is not None:
            raise GraphError("`% k` applies to one stage or a sequence, not to parallel branches; cut each branch instead")
        outputs: list[str] = []
        for branch in node.branches:
            outputs.extend(_flatten(branch, upstream, out, None))
        return tuple(outputs)
    raise GraphError(f"unknown graph node {node!r}")


def _validate(steps: list[Step]) -> list[Step]:
    if not steps:
        raise GraphError("the graph is empty; give it at least one retrieval stage")
    by_name: dict[str, Step] = {}
    for step in steps:
        if step.name in by_name:
            raise GraphError(
                f"two stages are named {step.name!r}; give each a unique `name=` (e.g. {step.name}_2)"
            )
        by_name[step.name] = step
    for step in steps:
        for upstream in step.inputs:
            if upstream not in by_name:
                raise GraphError(f"stage {step.name!r} reads from {upstream!r}, which is not a stage in this graph")
        _check_arity(step)
    ordered = _topological(steps, by_name)
    consumed = {i for s in steps for i in s.inputs}
    ends = [s.name for s in ordered if s.name not in consumed]
    if len(ends) != 1:
        raise GraphError(
            f"the graph ends in {len(ends)} stages ({', '.join(ends)}); it must end in one: "
            "join parallel branches with a fusing stage such as CandidatePool"
        )
    # Put the single output last, keeping a valid topological order.
    return [s for s in ordered if s.name != ends[0]] + [by_name[ends[0]]]


def _check_arity(step: Step) -> None:
    n = len(step.inputs)
    arity = Arity(step.stage.arity)
    kind = type(step.stage).__name__
    if arity is Arity.NONE and n:
        raise GraphError(
            f"stage {step.name!r} ({kind}) is a retriever and takes no input, but {', '.join(step.inputs)} "
            "feed it; start a chain with it, or put it in a parallel branch"
        )
    if arity is Arity.ONE and n != 1:
        if n == 0:
            raise GraphError(
                f"stage {step.name!r} ({kind}) reranks candidates but nothing is upstream; "
                "put a retriever before it, e.g. `BM25Retriever(...) >> stage`"
            )
        raise GraphError(
            f"stage {step.name!r} ({kind}) takes one candidate list but gets {n} ({', '.join(step.inputs)}); "
            "fuse them first with a CandidatePool"
        )
    if arity is Arity.MANY and n < 2:
        raise GraphError(
            f"stage {step.name!r} ({kind}) fuses several inputs but gets {n}; feed it parallel branches, "
            "e.g. `(bm25 | dense) >> pool`"
        )


def _topological(steps: list[Step], by_name: dict[str, Step]) -> list[Step]:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    order: list[Step] = []

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise GraphError(f"the graph has a cycle: {' -> '.join(cycle)}; a stage cannot feed itself")
        state[name] = 1
        for upstream in by_name[name].inputs:
            visit(upstream, path + [name])
        state[name] = 2
        order.append(by_name[name])

    for step in steps:
        visit(step.name, [])
    return order
