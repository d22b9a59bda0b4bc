"""Composition nodes built by the stage operators: `a >> b`, `a | b`, `x % k`.

These are inert descriptions of a pipeline's shape. `pipeline.graph.Graph` validates them and turns
them into steps; nothing here runs a stage. Precedence follows Python: `>>` binds tighter than `|`,
so write `(bm25 | dense) >> pool`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Node:
    """A piece of a pipeline: one stage, a sequence, parallel branches, or a cut-off."""

    def __rshift__(self, other: Any) -> Node:
        return Sequence.of(self, as_node(other))

    def __rrshift__(self, other: Any) -> Node:
        return Sequence.of(as_node(other), self)

    def __or__(self, other: Any) -> Node:
        return Parallel.of(self, as_node(other))

    def __ror__(self, other: Any) -> Node:
        return Parallel.of(as_node(other), self)

    def __mod__(self, k: int) -> Node:
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"`% k` needs a positive integer cut-off, got {k!r}")
        return Cutoff(self, k)


@dataclass(eq=False)
class StageNode(Node):
    stage: Any


@dataclass(eq=False)
class Sequence(Node):
    parts: tuple[Node, ...]

    @classmethod
    def of(cls, left: Node, right: Node) -> Sequence:
        flat: list[Node] = []
        for part in (left, right):
            flat.extend(part.parts if isinstance(part, Sequence) else [part])
        return cls(tuple(flat))


@dataclass(eq=False)
class Parallel(Node):
    branches: tuple[Node, ...]

    @classmethod
    def of(cls, left: Node, right: Node) -> Parallel:
        flat: list[Node] = []
        for part in (left, right):
            flat.extend(part.branches if isinstance(part, Parallel) else [part])
        return cls(tuple(flat))


@dataclass(eq=False)
class Cutoff(Node):
    """Keep the first `k` documents of what `node` outputs (a stage, or a sequence's last stage)."""

    node: Node
    k: int


def as_node(obj: Any) -> Node:
    """A `Node` for a stage or node; a clear `TypeError` for anything else."""
    if isinstance(obj, Node):
        return obj
    if hasattr(obj, "run") and hasattr(obj, "arity"):
        return StageNode(obj)
    raise TypeError(
        f"cannot compose {obj!r}: `>>`, `|` and `%` take stages (objects with `run` and `arity`) or "
        "pipelines built from them"
    )
