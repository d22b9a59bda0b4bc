"""The shape of a pipeline as plain data: composition nodes, flattened steps, and their checks.

Composition builds a tree of nodes: `StageNode` (one stage), `Sequence` (`a >> b`), `Parallel`
(`a | b`) and `Cutoff` (`x % k`). `flatten` turns a tree into `Step`s in execution order, each
naming its upstream steps; `check` validates them, and every error names the stage and the fix:

* stage names are unique;
* a retriever (arity NONE) takes no input; a reranker (ONE) takes exactly one; a fusing stage
  (MANY) takes two or more;
* a piece may still lack its upstream (it starts with a reranker, to be put after a retriever),
  but it cannot mix entries that need input with entries that do not;
* there is no cycle.

A *complete* pipeline (`check(..., complete=True)`) also starts with retrievers only and ends in
exactly one step, its output. `draw` renders steps as an indented tree. Nothing here runs a stage;
`stagegraph.pipeline.compose.Pipeline` is the object users hold, and the YAML codec
(`stagegraph.pipeline.config`) reads and writes these nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagegraph.errors import InputError
from stagegraph.pipeline.stage import Arity, Stage


class PipelineError(InputError):
    """The pipeline's shape is invalid; the message names the stage and the fix."""


# -- nodes ----------------------------------------------------------------------------------------
class Node:
    """A piece of a pipeline: one stage, a sequence, parallel branches, or a cut-off."""


@dataclass(frozen=True, eq=False)
class StageNode(Node):
    stage: Any


@dataclass(frozen=True, eq=False)
class Sequence(Node):
    parts: tuple[Node, ...]

    @classmethod
    def of(cls, left: Node, right: Node) -> Sequence:
        flat: list[Node] = []
        for part in (left, right):
            flat.extend(part.parts if isinstance(part, Sequence) else [part])
        return cls(tuple(flat))


@dataclass(frozen=True, eq=False)
class Parallel(Node):
    branches: tuple[Node, ...]

    @classmethod
    def of(cls, left: Node, right: Node) -> Parallel:
        flat: list[Node] = []
        for part in (left, right):
            flat.extend(part.branches if isinstance(part, Parallel) else [part])
        return cls(tuple(flat))


@dataclass(frozen=True, eq=False)
class Cutoff(Node):
    """Keep the first `k` documents of what `node` outputs (a stage, or a sequence's last stage)."""

    node: Node
    k: int


# -- steps ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One stage in a flattened pipeline: its upstream step names and an optional cut-off."""

    name: str
    stage: Stage
    inputs: tuple[str, ...]
    cutoff: int | None = None

    @property
    def limit(self) -> int | None:
        """The most documents the step can return per query: its cut-off, or its stage's `k`."""
        k = getattr(self.stage.config, "k", None)
        caps = [c for c in (self.cutoff, k if isinstance(k, int) and not isinstance(k, bool) else None) if c]
        return min(caps) if caps else None


def flatten(node: Node) -> list[Step]:
    """The steps of `node` in composition order (checked by `check`)."""
    out: list[Step] = []
    _flatten(node, (), out, None)
    return out


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
            raise PipelineError("`% k` applies to one stage or a sequence, not to parallel branches; cut each branch instead")
        outputs: list[str] = []
        for branch in node.branches:
            outputs.extend(_flatten(branch, upstream, out, None))
        return tuple(outputs)
    raise PipelineError(f"unknown pipeline node {node!r}")


def outputs_of(steps: list[Step]) -> list[str]:
    """The steps nothing else reads, in order."""
    consumed = {i for s in steps for i in s.inputs}
    return [s.name for s in steps if s.name not in consumed]


def entry_arity(steps: list[Step]) -> Arity:
    """What the piece needs upstream: NONE (it starts with retrievers), ONE or MANY inputs."""
    open_entries = [Arity(s.stage.arity) for s in steps if not s.inputs and Arity(s.stage.arity) is not Arity.NONE]
    if not open_entries:
        return Arity.NONE
    return Arity.MANY if Arity.MANY in open_entries else Arity.ONE


def check(steps: list[Step], *, complete: bool = False) -> list[Step]:
    """Validate `steps` and return them in a topological order (the single output last when complete)."""
    if not steps:
        raise PipelineError("the pipeline is empty; give it at least one retrieval stage")
    by_name: dict[str, Step] = {}
    for step in steps:
        if step.name in by_name:
            raise PipelineError(
                f"two stages are named {step.name!r}; give each a unique `name=` (e.g. {step.name}_2)"
            )
        by_name[step.name] = step
    for step in steps:
        for upstream in step.inputs:
            if upstream not in by_name:
                raise PipelineError(f"stage {step.name!r} reads from {upstream!r}, which is not a stage in this pipeline")
        _check_arity(step)
    entries = [s for s in steps if not s.inputs]
    needy = [s.name for s in entries if Arity(s.stage.arity) is not Arity.NONE]
    sources = [s.name for s in entries if Arity(s.stage.arity) is Arity.NONE]
    if needy and sources:
        raise PipelineError(
            f"{', '.join(needy)} need candidates from upstream but stand beside the retriever(s) "
            f"{', '.join(sources)}; put each reranker or pool after the retrievers that feed it"
        )
    ordered = _topological(steps, by_name)
    if not complete:
        return ordered
    if needy:
        step = by_name[needy[0]]
        raise PipelineError(
            f"stage {step.name!r} ({type(step.stage).__name__}) needs candidates but nothing is upstream; "
            f"put a retriever before it, e.g. `BM25Retriever(...) >> {step.name}`"
        )
    ends = outputs_of(ordered)
    if len(ends) != 1:
        raise PipelineError(
            f"the pipeline ends in {len(ends)} stages ({', '.join(ends)}); it must end in one: "
            "join parallel branches with a fusing stage such as CandidatePool"
        )
    return [s for s in ordered if s.name != ends[0]] + [by_name[ends[0]]]


def _check_arity(step: Step) -> None:
    n = len(step.inputs)
    arity = Arity(step.stage.arity)
    kind = type(step.stage).__name__
    if arity is Arity.NONE and n:
        raise PipelineError(
            f"stage {step.name!r} ({kind}) is a retriever and takes no input, but {', '.join(step.inputs)} "
            "feed it; start a chain with it, or put it in a parallel branch"
        )
    if arity is Arity.ONE and n > 1:
        raise PipelineError(
            f"stage {step.name!r} ({kind}) takes one candidate list but gets {n} ({', '.join(step.inputs)}); "
            "fuse them first with a CandidatePool"
        )
    if arity is Arity.MANY and n == 1:
        raise PipelineError(
            f"stage {step.name!r} ({kind}) fuses several inputs but gets one ({step.inputs[0]}); feed it "
            "parallel branches, e.g. `(bm25 | dense) >> pool`"
        )


def _topological(steps: list[Step], by_name: dict[str, Step]) -> list[Step]:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    order: list[Step] = []

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise PipelineError(f"the pipeline has a cycle: {' -> '.join(cycle)}; a stage cannot feed itself")
        state[name] = 1
        for upstream in by_name[name].inputs:
            visit(upstream, path + [name])
        state[name] = 2
        order.append(by_name[name])

    for step in steps:
        visit(step.name, [])
    return order


def levels(steps: list[Step]) -> list[list[Step]]:
    """Steps grouped so that each group depends only on earlier groups (parallel branches)."""
    depth: dict[str, int] = {}
    for step in steps:
        depth[step.name] = 1 + max((depth[i] for i in step.inputs), default=-1)
    groups: list[list[Step]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for step in steps:
        groups[depth[step.name]].append(step)
    return groups


# -- drawing --------------------------------------------------------------------------------------
def describe(step: Step) -> str:
    settings = step.stage.config.model_dump(exclude_defaults=True, exclude={"name"})
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    cut = f" % {step.cutoff}" if step.cutoff else ""
    return f"{step.name} [{step.stage.type_name}{': ' + shown if shown else ''}]{cut}"


def draw(steps: list[Step], title: str = "Pipeline") -> str:
    """An indented tree, one line per step, each output drawn from its inputs upwards."""
    by_name = {s.name: s for s in steps}
    lines = [title]
    ends = outputs_of(steps)
    for i, end in enumerate(ends):
        _draw(end, by_name, "", i == len(ends) - 1, lines)
    return "\n".join(lines)


def _draw(name: str, by_name: dict[str, Step], prefix: str, last: bool, lines: list[str]) -> None:
    step = by_name[name]
    lines.append(f"{prefix}{'└── ' if last else '├── '}{describe(step)}")
    child_prefix = prefix + ("    " if last else "│   ")
    for i, upstream in enumerate(step.inputs):
        _draw(upstream, by_name, child_prefix, i == len(step.inputs) - 1, lines)
