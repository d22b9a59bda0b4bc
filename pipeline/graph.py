"""The shape of a pipeline as plain data: composition nodes, flattened steps, and their checks.

Composition builds a tree of nodes: `StageNode` (one stage), `Sequence` (`a >> b`), `Parallel`
(`a | b`), `Cutoff` (`x % k`) and `Scope` (a nested pipeline's `filter` and `name`, kept when it is
composed into another: every step inside gets the filter and-ed into its queries). `flatten`
turns a tree into `Step`s in execution order, each naming its upstream steps; `check` validates
them, and every error names the stage and the fix:

* stage names are unique;
* a retriever (arity NONE) takes no input; a reranker (ONE) takes exactly one; a fusing stage
  (MANY) takes two or more;
* a piece may still lack its upstream (it starts with a reranker, to be put after a retriever),
  but it cannot mix entries that need input with entries that do not;
* there is no cycle;
* sizes agree across stages: a stage fed one list returns no more than its upstream can give
  (`k`), and a stage's own `check_inputs(upstream)` hook sees every upstream step's name and limit
  (a reranker's `depth`, a pool's branch weights).

A *complete* pipeline (`check(..., complete=True)`) also starts with retrievers only and ends in
exactly one step, its output. `draw` renders steps as an indented tree. Nothing here runs a stage;
`stagegraph.pipeline.compose.Pipeline` is the object users hold, and the YAML codec
(`stagegraph.pipeline.config`) reads and writes these nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagegraph.corpora.filters import combine
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


@dataclass(frozen=True, eq=False)
class Scope(Node):
    """A nested pipeline's own settings, kept inside a larger composition: its `filter` applies to
    every step inside it (and-ed with the query's), its `name` labels the group."""

    node: Node
    filter: dict[str, Any] | None = None
    name: str | None = None


# -- steps ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One stage in a flattened pipeline: its upstream step names and an optional cut-off."""

    name: str
    stage: Stage
    inputs: tuple[str, ...]
    cutoff: int | None = None
    #: the filter of the nested pipeline(s) this step sits in, and-ed into its queries' filters
    filter: dict[str, Any] | None = field(default=None, compare=False)
    #: the name of the nested pipeline this step sits in (None: the top level)
    scope: str | None = None

    @property
    def limit(self) -> int | None:
        """The most documents the step can return per query: its cut-off, or its stage's `k`."""
        k = getattr(self.stage.config, "k", None)
        caps = [c for c in (self.cutoff, k if isinstance(k, int) and not isinstance(k, bool) else None) if c]
        return min(caps) if caps else None


def flatten(node: Node) -> list[Step]:
    """The steps of `node` in composition order (checked by `check`)."""
    out: list[Step] = []
    _flatten(node, (), out, None, _Where())
    return out


@dataclass(frozen=True)
class _Where:
    """The scope a node is flattened in: the and of the enclosing filters, the innermost name."""

    filter: dict[str, Any] | None = None
    name: str | None = None


def _flatten(node: Node, upstream: tuple[str, ...], out: list[Step], cutoff: int | None, where: _Where) -> tuple[str, ...]:
    """Append `node`'s steps to `out`, fed by `upstream`; return the names of its outputs."""
    if isinstance(node, StageNode):
        out.append(Step(node.stage.name, node.stage, upstream, cutoff, where.filter, where.name))
        return (node.stage.name,)
    if isinstance(node, Scope):
        inner = _Where(combine(where.filter, node.filter), node.name or where.name)
        return _flatten(node.node, upstream, out, cutoff, inner)
    if isinstance(node, Cutoff):
        return _flatten(node.node, upstream, out, node.k if cutoff is None else min(cutoff, node.k), where)
    if isinstance(node, Sequence):
        current = upstream
        for i, part in enumerate(node.parts):
            current = _flatten(part, current, out, cutoff if i == len(node.parts) - 1 else None, where)
        return current
    if isinstance(node, Parallel):
        if cutoff is not None:
            raise PipelineError("`% k` applies to one stage or a sequence, not to parallel branches; cut each branch instead")
        outputs: list[str] = []
        for branch in node.branches:
            outputs.extend(_flatten(branch, upstream, out, None, where))
        return tuple(outputs)
    raise PipelineError(f"unknown pipeline node {node!r}")


def expression(node: Node) -> str:
    """`node` written as the operators that build it: `(bm25 | dense) >> pool % 10`."""
    if isinstance(node, StageNode):
        return node.stage.name
    if isinstance(node, Scope):
        return f"{node.name or 'pipeline'}[{expression(node.node)}]"
    if isinstance(node, Cutoff):
        inner = expression(node.node)
        return f"({inner}) % {node.k}" if isinstance(node.node, (Sequence, Parallel)) else f"{inner} % {node.k}"
    if isinstance(node, Sequence):
        return " >> ".join(f"({expression(p)})" if isinstance(p, Parallel) else expression(p) for p in node.parts)
    if isinstance(node, Parallel):
        return " | ".join(f"({expression(b)})" if isinstance(b, Sequence) else expression(b) for b in node.branches)
    return repr(node)


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
    for step in ordered:
        _check_sizes(step, by_name)
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


def _check_sizes(step: Step, by_name: dict[str, Step]) -> None:
    """A stage fed one list cannot return more than that list holds; the stage's own hook checks the rest."""
    if not step.inputs:
        return
    limits = [(name, by_name[name].limit) for name in step.inputs]
    k = getattr(step.stage.config, "k", None)
    if Arity(step.stage.arity) is Arity.ONE and isinstance(k, int) and not isinstance(k, bool):
        name, limit = limits[0]
        if limit is not None and k > limit:
            raise PipelineError(
                f"stage {step.name!r} ({type(step.stage).__name__}) returns k={k} documents but {name!r} gives it at "
                f"most {limit}; set {step.name}'s k <= {limit}, or raise {name}'s k"
            )
    hook = getattr(step.stage, "check_inputs", None)
    if callable(hook):
        try:
            hook(limits)
        except PipelineError:
            raise
        except InputError as exc:
            raise PipelineError(f"stage {step.name!r}: {exc}") from None


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
#: settings a reader of the tree always wants, default or not
ALWAYS_SHOWN = ("model", "k")


def describe(step: Step) -> str:
    """One line: the step's name, type, every setting that differs from its default, the model and k."""
    config = step.stage.config
    changed = config.model_dump(mode="json", exclude_defaults=True, exclude={"name"})
    everything = config.model_dump(mode="json")
    settings = {f: everything[f] for f in type(config).model_fields if f in changed or f in ALWAYS_SHOWN}
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    cut = f" % {step.cutoff}" if step.cutoff else ""
    scope = f" filter={step.filter}" if step.filter else ""
    return f"{step.name} [{step.stage.type_name}{': ' + shown if shown else ''}]{cut}{scope}"


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
