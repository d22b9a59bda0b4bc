"""`Pipeline`: what composing stages gives you, a value that describes a whole pipeline.

`a >> b`, `a | b` and `x % k` on stages (or on pipelines) return a `Pipeline`, checked at the operator
that built it (duplicate names, a pool fed by one list, a retriever fed by anything, a reranker
asked for more than its upstream gives: an error naming the stage and the fix). A pipeline is
itself a stage, so it nests inside another composition, keeping its own `filter` and `name` there
(a `stagegraph.pipeline.graph.Scope`); and it is immutable, printable, hashable to a fingerprint
and written to YAML with every setting. Running it takes one step more, binding it to documents:

    pipe = (BM25Retriever(k=100) | DenseRetriever(k=100)) >> CandidatePool("rrf", k=100) >> CrossEncoderReranker(...)
    print(pipe)                          # the tree
    runner = pipe.bind(corpus)           # load or build every index and model, once
    result = runner.search("query", k=10)  # hits with per-stage provenance and timings
    rankings = runner.run(queries)       # one ranking per query (batch)
    run = runner.execute(queries, mode="online", cache=...)   # every step's rankings and timings
    text = pipe.to_yaml(); same = Pipeline.from_yaml(text)

`pipe.warm_up(corpus)` is `bind` that also keeps the runner as the pipeline's own, so the course
chapter's `pipe.warm_up(corpus); pipe.search(...)` keeps working; `pipe.execute(queries, env=env)`
binds for that one run. A piece that still needs candidates (`rerank >> rerank2`) or that ends in
several branches (`a | b`) is a valid pipeline to compose with, and an error to run.
`evaluate(pipe, dataset)` (in `stagegraph.evaluation`) measures the same value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from stagegraph.corpora.filters import combine
from stagegraph.corpora.types import Queries
from stagegraph.errors import InputError
from stagegraph.hashing import stable_hash
from stagegraph.pipeline import config as codec
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.executor import ExecutorConfig, Mode, RunResult, Timing
from stagegraph.pipeline.graph import (
    Cutoff,
    Node,
    Parallel,
    PipelineError,
    Scope,
    Sequence as SequenceNode,
    StageNode,
    Step,
    check,
    draw,
    entry_arity,
    expression,
    flatten,
    levels,
    outputs_of,
)
from stagegraph.pipeline.hits import SearchResult
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.runner import Runner
from stagegraph.pipeline.stage import Environment, StageConfig, environment_for

__all__ = ["Composable", "Pipeline", "as_node"]


def as_node(obj: Any) -> Node:
    """The composition node of a stage or pipeline; a clear `TypeError` for anything else."""
    if isinstance(obj, Pipeline):
        if obj.filter or obj.config.name:  # its own settings travel with it
            return Scope(obj.node, obj.filter, obj.config.name)
        return obj.node
    if isinstance(obj, Node):
        return obj
    if hasattr(obj, "run") and hasattr(obj, "arity"):
        return StageNode(obj)
    raise TypeError(
        f"cannot compose {obj!r}: `>>`, `|` and `%` take stages (objects with `run` and `arity`) or "
        "pipelines built from them"
    )


class Composable:
    """The composition operators, shared by every stage (`StageBase`) and by `Pipeline`.

    Python's precedence applies: `>>` binds tighter than `|`, so write `(bm25 | dense) >> pool`.
    """

    def __rshift__(self, other: Any) -> Pipeline:
        return Pipeline(SequenceNode.of(as_node(self), as_node(other)), executor=joint_executor(self, other))

    def __rrshift__(self, other: Any) -> Pipeline:
        return Pipeline(SequenceNode.of(as_node(other), as_node(self)), executor=joint_executor(other, self))

    def __or__(self, other: Any) -> Pipeline:
        return Pipeline(Parallel.of(as_node(self), as_node(other)), executor=joint_executor(self, other))

    def __ror__(self, other: Any) -> Pipeline:
        return Pipeline(Parallel.of(as_node(other), as_node(self)), executor=joint_executor(other, self))

    def __mod__(self, k: int) -> Pipeline:
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise PipelineError(f"`% k` needs a positive integer cut-off, got {k!r}")
        return Pipeline(Cutoff(as_node(self), k), executor=joint_executor(self))


def joint_executor(*parts: Any) -> ExecutorConfig | None:
    """The executor a composition of `parts` runs on: the one distributed executor among them (None:
    local); two different distributed executors cannot be joined, and the error says so."""
    chosen = {p.executor for p in parts if isinstance(p, Pipeline) and p.executor.distributed}
    if len(chosen) > 1:
        raise PipelineError(
            "the pipelines composed name different executors (" + ", ".join(sorted(repr(c.model_dump()) for c in chosen))
            + "); give the composition one: Pipeline(a >> b, executor=...)"
        )
    return next(iter(chosen), None)


class Pipeline(Composable):
    """A checked composition of stages, and a value: a stage itself, printable, YAML, and bound to
    documents (`bind`) to search, run and evaluate.

    `Pipeline(x, name=None, filter=None, executor=None)` takes a stage, a composition node, a list
    of `Step`s (the explicit `steps:` form) or another pipeline (whose filter is and-ed with
    `filter`, never replaced). `filter` applies to every query (and-ed with the query's own), also
    when this pipeline is nested in another; `executor` is where batch runs and index builds run
    (`local`, or `ray` through `stagegraph.scale`).
    """

    type_name: ClassVar[str] = "pipeline"
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, pipeline: Any, *, name: str | None = None, filter: dict[str, Any] | None = None,
                 executor: Any = None):
        self.root: Node | None
        inherited_filter, inherited_executor = None, None
        if isinstance(pipeline, Pipeline):
            self.root, steps = pipeline.root, list(pipeline.steps)
            inherited_filter, inherited_executor = pipeline.filter, pipeline.executor
            name = name if name is not None else pipeline.config.name
        elif isinstance(pipeline, (list, tuple)) and pipeline and all(isinstance(s, Step) for s in pipeline):
            self.root, steps = None, list(pipeline)
        else:
            self.root = as_node(pipeline)
            steps = flatten(self.root)
        try:  # a complete pipeline keeps its output last; a piece is checked as a piece
            self.steps: list[Step] = check(steps, complete=True)
        except PipelineError:
            self.steps = check(steps)
        self.config = StageConfig(name=name)
        if filter is not None and not isinstance(filter, dict):
            raise InputError(f"filter must be a mapping such as {{'tenant': 'a'}}, not {type(filter).__name__}")
        #: a metadata filter every query of this pipeline gets (and-ed with the query's own)
        self.filter = combine(inherited_filter, filter)
        #: where batch runs and index builds run (`local`, or `ray` through `stagegraph.scale`)
        self.executor = ExecutorConfig.of(executor if executor is not None else inherited_executor)
        self.arity = entry_arity(self.steps)
        self._runner: Runner | None = None  # what warm_up bound, for pipe.search(...) after it

    # -- shape ----------------------------------------------------------------------------------
    @property
    def node(self) -> Node:
        """The composition tree (a pipeline read from an explicit `steps:` list has none)."""
        if self.root is None:
            raise PipelineError(
                "a pipeline read from an explicit `steps:` list cannot be nested in another composition; "
                "write it with operators or the nested `pipeline:` form"
            )
        return self.root

    @property
    def complete(self) -> bool:
        """True when it starts with retrievers and ends in one stage: it can run on its own."""
        try:
            check(self.steps, complete=True)
        except PipelineError:
            return False
        return True

    def require_complete(self) -> None:
        """Raise the `PipelineError` that says what a piece lacks to be run on its own."""
        check(self.steps, complete=True)

    @property
    def outputs(self) -> list[str]:
        """The steps nothing else reads (one for a complete pipeline)."""
        return outputs_of(self.steps)

    @property
    def output(self) -> str:
        """The name of the one step whose rankings are the pipeline's result."""
        ends = self.outputs
        if len(ends) != 1:
            self.require_complete()
        return ends[0]

    @property
    def name(self) -> str:
        return self.config.name or self.outputs[-1]

    @property
    def names(self) -> list[str]:
        """Every step's name, in execution order."""
        return [s.name for s in self.steps]

    @property
    def stages(self) -> list[Any]:
        """Every step's stage value, in execution order."""
        return [s.stage for s in self.steps]

    def step(self, name: str) -> Step:
        """The step called `name`; a `KeyError` listing the names otherwise."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no stage named {name!r} in the pipeline; stages: {', '.join(self.names)}")

    def levels(self) -> list[list[Step]]:
        """Steps grouped by depth: the steps of one group can run side by side."""
        return levels(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __str__(self) -> str:
        title = "Pipeline" + (f" {self.config.name!r}" if self.config.name else "")
        title += f" filter={self.filter}" if self.filter else ""
        return draw(self.steps, title)

    def __repr__(self) -> str:
        shape = expression(self.root) if self.root is not None else " -> ".join(self.names)
        return f"Pipeline({shape})"

    def fingerprint(self) -> str:
        """A hash of every step: its stage's fingerprint, inputs, cut-off and filter scope, and the
        pipeline's own filter."""
        return stable_hash({
            "steps": [(s.name, s.stage.fingerprint(), list(s.inputs), s.cutoff, s.filter) for s in self.steps],
            "filter": self.filter,
        })

    # -- binding ----------------------------------------------------------------------------------
    def bind(self, target: Any = None, *, work_dir: str | os.PathLike[str] | None = None,
             progress: bool | None = None) -> Runner:
        """This pipeline bound to `target` (a `Corpus`, a `Dataset`, an `Environment` or a
        collection): every index and model loaded or built now, once. The value is not changed."""
        return Runner(self, environment_for(target, work_dir=work_dir, progress=progress))

    def warm_up(self, target: Any = None, *, work_dir: str | os.PathLike[str] | None = None,
                progress: bool | None = None) -> Runner:
        """`bind`, keeping the runner as this pipeline's own, so `pipe.search(...)` works after it
        (the course chapter's and notebooks' shape); returns the runner."""
        runner = self.bind(target, work_dir=work_dir, progress=progress)
        previous, self._runner = self._runner, runner
        if previous is not None:
            previous.close()
        return runner

    @property
    def runner(self) -> Runner:
        """What `warm_up` bound; an `InputError` saying how to bind before it."""
        if self._runner is None:
            raise InputError("the pipeline is not bound to documents; call runner = pipe.bind(corpus) "
                             "(or pipe.warm_up(corpus), or a dataset or collection) first")
        return self._runner

    @property
    def environment(self) -> Environment:
        """The environment `warm_up` bound this pipeline to."""
        return self.runner.env

    # -- running, through the runner --------------------------------------------------------------
    def run(self, queries: Queries | Iterable[str] | str, inputs: Sequence[Sequence[Ranking]] = ()) -> list[Ranking]:
        """One ranking per query from the output step, all queries at once (batch mode)."""
        if inputs:
            raise PipelineError(
                f"pipeline {self.name!r} starts with retrievers and takes no upstream input; "
                "nest it in a composition instead of feeding it rankings"
            )
        return self.runner.run(queries)

    def execute(
        self,
        queries: Queries | Iterable[str] | str,
        *,
        env: Environment | None = None,
        mode: Mode = "online",
        cache: StageCache | None = None,
        warmup: int = 0,
        timing: Timing = "concurrent",
        progress: bool | None = None,
        executor: Any = None,
    ) -> RunResult:
        """`Runner.execute` on `env` (bound for this run only, each stage on first need, so a stage
        whose rankings the cache holds is never loaded), or on what `warm_up` bound."""
        options = dict(mode=mode, cache=cache, warmup=warmup, timing=timing, progress=progress, executor=executor)
        if env is None:
            return self.runner.execute(queries, **options)
        with Runner(self, env, eager=False) as runner:
            return runner.execute(queries, **options)

    def search(self, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> SearchResult:
        """`Runner.search` on what `warm_up` bound."""
        return self.runner.search(query, k=k, filter=filter)

    def search_batch(self, queries: Iterable[str], k: int = 10, filter: dict[str, Any] | None = None) -> list[SearchResult]:
        """`Runner.search_batch` on what `warm_up` bound."""
        return self.runner.search_batch(queries, k=k, filter=filter)

    def check_filter(self, filter: dict[str, Any] | None) -> None:
        """`Runner.check_filter` on what `warm_up` bound."""
        self.runner.check_filter(filter)

    def close(self) -> None:
        """Close what `warm_up` bound (a runner from `bind` is closed by its holder)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- as data ----------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The pipeline as plain data (`from_config` reads it back): every stage with every setting."""
        config = codec.to_config(self.root, self.steps)
        if self.executor.distributed:
            config = {"executor": self.executor.model_dump(exclude_defaults=True) | {"type": self.executor.type}, **config}
        if self.config.name:
            config = {"name": self.config.name, **config}
        return {"filter": self.filter, **config} if self.filter else config

    def to_yaml(self) -> str:
        """`to_config` as YAML."""
        return codec.dump_yaml(self.to_config())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `to_yaml` to `path` atomically."""
        return codec.save_config(self.to_config(), path)

    @classmethod
    def from_config(cls, config: Any, source: str = "<config>") -> Pipeline:
        """The pipeline of a config dict (or list): errors name `source` and the field."""
        root, steps = codec.from_config(config, source=source)
        try:
            extras = config if isinstance(config, dict) else {}
            pipe = cls(root if root is not None else steps, filter=extras.get("filter"),
                       executor=extras.get("executor"), name=extras.get("name"))
            pipe.require_complete()
        except (PipelineError, InputError) as exc:
            raise codec.ConfigError(f"{source}: {exc}") from None
        return pipe

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike[str], overrides: dict[str, dict[str, Any]] | None = None) -> Pipeline:
        """Read a YAML pipeline from a string, a file, or a bundled config name (`hybrid-rerank`)."""
        config, source = codec.read_yaml(text_or_path)
        if overrides:
            config = codec.apply_overrides(config, overrides)
        return cls.from_config(config, source=source)


def as_pipeline(obj: Any) -> Pipeline:
    """`obj` if it is a pipeline, else the one-stage (or composed) pipeline of it."""
    return obj if isinstance(obj, Pipeline) else Pipeline(obj)
