"""`Pipeline`: what composing stages gives you, and the object an application holds.

`a >> b`, `a | b` and `x % k` on stages (or on pipelines) return a `Pipeline`, checked at the operator
that built it (duplicate names, a pool fed by one list, a retriever fed by anything: an error
naming the stage and the fix). A pipeline is itself a stage, so it nests inside another
composition, and it is the one object every use goes through:

    pipe = (BM25Retriever(k=100) | DenseRetriever(k=100)) >> CandidatePool("rrf", k=100) >> CrossEncoderReranker(...)
    print(pipe)                          # the tree
    pipe.warm_up(corpus)                 # load or build every index and model
    result = pipe.search("query", k=10)  # hits with per-stage provenance and timings
    rankings = pipe.run(queries)         # the stage contract: one ranking per query (batch)
    run = pipe.execute(queries, mode="online", cache=...)   # every step's rankings and timings
    text = pipe.to_yaml(); same = Pipeline.from_yaml(text)

A piece that still needs candidates (`rerank >> rerank2`) or that ends in several branches (`a | b`)
is a valid pipeline to compose with, and an error to run. `evaluate(pipe, dataset)` (in
`stagegraph.evaluation`) measures the same object.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from stagegraph.corpora.filters import MetadataIndex, combine
from stagegraph.corpora.types import Corpus, Queries
from stagegraph.errors import InputError
from stagegraph.hashing import stable_hash
from stagegraph.pipeline import config as codec
from stagegraph.pipeline.cache import StageCache
from stagegraph.pipeline.executor import ExecutorConfig, Mode, RunResult, Timing, execute
from stagegraph.pipeline.graph import (
    Cutoff,
    Node,
    Parallel,
    PipelineError,
    Sequence as SequenceNode,
    StageNode,
    Step,
    check,
    draw,
    entry_arity,
    flatten,
    levels,
    outputs_of,
)
from stagegraph.pipeline.hits import SearchResult, search_results
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment, StageConfig

__all__ = ["Composable", "Pipeline", "as_node"]


def as_node(obj: Any) -> Node:
    """The composition node of a stage or pipeline; a clear `TypeError` for anything else."""
    if isinstance(obj, Pipeline):
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
        return Pipeline(SequenceNode.of(as_node(self), as_node(other)))

    def __rrshift__(self, other: Any) -> Pipeline:
        return Pipeline(SequenceNode.of(as_node(other), as_node(self)))

    def __or__(self, other: Any) -> Pipeline:
        return Pipeline(Parallel.of(as_node(self), as_node(other)))

    def __ror__(self, other: Any) -> Pipeline:
        return Pipeline(Parallel.of(as_node(other), as_node(self)))

    def __mod__(self, k: int) -> Pipeline:
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise PipelineError(f"`% k` needs a positive integer cut-off, got {k!r}")
        return Pipeline(Cutoff(as_node(self), k))


class Pipeline(Composable):
    """A checked composition of stages: a stage itself, and runnable, searchable, printable, YAML."""

    type_name: ClassVar[str] = "pipeline"
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, pipeline: Any, *, name: str | None = None, filter: dict[str, Any] | None = None,
                 executor: Any = None):
        self.root: Node | None
        if isinstance(pipeline, Pipeline):
            self.root, steps = pipeline.root, list(pipeline.steps)
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
        #: a metadata filter every query of this pipeline gets (and-ed with the query's own)
        self.filter = filter if filter is not None else (pipeline.filter if isinstance(pipeline, Pipeline) else None)
        #: where batch runs and index builds run (`local`, or `ray` through `stagegraph.scale`)
        self.executor = ExecutorConfig.of(executor if executor is not None else
                                          (pipeline.executor if isinstance(pipeline, Pipeline) else None))
        self.arity = entry_arity(self.steps)
        self._env: Environment | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- shape ----------------------------------------------------------------------------------
    @property
    def node(self) -> Node:
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
        self.steps = check(self.steps, complete=True)

    @property
    def outputs(self) -> list[str]:
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
        return [s.name for s in self.steps]

    @property
    def stages(self) -> list[Any]:
        return [s.stage for s in self.steps]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no stage named {name!r} in the pipeline; stages: {', '.join(self.names)}")

    def levels(self) -> list[list[Step]]:
        return levels(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __str__(self) -> str:
        return draw(self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({' -> '.join(self.names)})"

    # -- the stage contract ---------------------------------------------------------------------
    def fingerprint(self) -> str:
        return stable_hash([(s.name, s.stage.fingerprint(), list(s.inputs), s.cutoff) for s in self.steps])

    def warm_up(
        self, target: Any = None, *, work_dir: str | os.PathLike[str] | None = None, progress: bool | None = None
    ) -> Pipeline:
        """Load or build every index and model for `target`: a `Corpus`, a `Dataset`, an `Environment`,
        or a collection (anything with an `environment()` method). Returns the pipeline."""
        self.require_complete()
        env = environment_for(target, work_dir=work_dir, progress=progress)
        for step in self.steps:
            step.stage.warm_up(env)
        self._env = env
        return self

    @property
    def environment(self) -> Environment:
        if self._env is None:
            raise InputError("the pipeline is not warmed up; call pipe.warm_up(corpus) (or a dataset or collection) first")
        return self._env

    def run(self, queries: Queries | Iterable[str] | str, inputs: Sequence[Sequence[Ranking]] = ()) -> list[Ranking]:
        """One ranking per query from the output step, all queries at once (batch mode)."""
        if inputs:
            raise PipelineError(
                f"pipeline {self.name!r} starts with retrievers and takes no upstream input; "
                "nest it in a composition instead of feeding it rankings"
            )
        return self.execute(as_queries(queries), mode="batch").final

    # -- using it -------------------------------------------------------------------------------
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
        """Run every step over `queries`: each step's rankings and timings (see `stagegraph.pipeline.executor`).

        `executor`: a distributed executor object (`stagegraph.scale.RayExecutor`) that runs the
        batch instead of this process; configs name one (`executor: ray`), `evaluate` opens it."""
        self.require_complete()
        env = env or self.environment
        queries = as_queries(queries)
        if self.filter:
            queries = Queries(queries.ids, queries.texts,
                              [combine(self.filter, queries.filter_of(i)) for i in range(len(queries))])
        if executor is not None:
            if not hasattr(executor, "execute"):
                raise InputError(f"executor must be an executor object such as stagegraph.scale.RayExecutor, not {executor!r}; "
                                 "to name one (`ray`), give it to evaluate() or the pipeline's `executor:`")
            return executor.execute(self, queries, env, mode=mode, cache=cache, progress=progress)
        return execute(
            self.steps, queries, env, mode=mode, cache=cache, warmup=warmup, timing=timing,
            progress=progress, pool=self._branch_pool(),
        )

    def search(self, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> SearchResult:
        """The top `k` hits for one query, each with its rank and score at every step, and the timings.

        `filter` (`stagegraph.corpora.filters`) is checked against the corpus' metadata now (an
        unknown field or an operator that does not fit is an `InputError` naming the fields that
        exist) and applied inside every retriever before its top k."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; give a question or keywords")
        if k < 1:
            raise InputError(f"k must be a positive number of hits, got {k}")
        self.check_filter(filter)
        result = self.execute(Queries.single(query, filter=filter), mode="online", progress=False)
        return search_results(result, self.steps, self.environment.corpus, k)[0]

    def search_batch(self, queries: Iterable[str], k: int = 10, filter: dict[str, Any] | None = None) -> list[SearchResult]:
        """`search` for many queries at once (batch mode: stage times are shared by the batch)."""
        texts = list(queries)
        empty = [i for i, q in enumerate(texts) if not isinstance(q, str) or not q.strip()]
        if empty:
            raise InputError(f"queries {empty[:5]} are empty; give a question or keywords for each")
        if k < 1:
            raise InputError(f"k must be a positive number of hits, got {k}")
        self.check_filter(filter)
        result = self.execute(as_queries(texts).with_filter(filter), mode="batch", progress=False)
        return search_results(result, self.steps, self.environment.corpus, k)

    def check_filter(self, filter: dict[str, Any] | None) -> None:
        """Raise the `FilterError` of a filter that does not fit this pipeline's corpus."""
        expression = combine(self.filter, filter)
        if expression:
            MetadataIndex.of(self.environment.corpus).mask(expression)

    def _branch_pool(self) -> ThreadPoolExecutor | None:
        """One thread pool per pipeline for parallel branches, made on first use."""
        width = max(len(level) for level in self.levels())
        if width < 2:
            return None
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="stagegraph-branch")
            return self._pool

    def close(self) -> None:
        """Stop the branch threads and let stages release what they hold (score caches, files)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
        for stage in self.stages:
            closer = getattr(stage, "close", None)
            if callable(closer):
                closer()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- as data --------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        config = codec.to_config(self.root, self.steps)
        if self.executor.distributed:
            config = {"executor": self.executor.model_dump(exclude_defaults=True) | {"type": self.executor.type}, **config}
        return {"filter": self.filter, **config} if self.filter else config

    def to_yaml(self) -> str:
        return codec.dump_yaml(self.to_config())

    def save(self, path: str | os.PathLike[str]) -> Path:
        return codec.save_config(self.to_config(), path)

    @classmethod
    def from_config(cls, config: Any, source: str = "<config>") -> Pipeline:
        root, steps = codec.from_config(config, source=source)
        try:
            extras = config if isinstance(config, dict) else {}
            pipe = cls(root if root is not None else steps, filter=extras.get("filter"), executor=extras.get("executor"))
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


def as_queries(queries: Queries | Iterable[str] | str) -> Queries:
    """`Queries` as they are; a string is one query; other iterables of strings get ids q0, q1, ..."""
    if isinstance(queries, Queries):
        return queries
    if isinstance(queries, str):
        return Queries.single(queries)
    texts = list(queries)
    if not all(isinstance(t, str) for t in texts):
        raise InputError("queries must be strings (or a Queries object with ids)")
    return Queries([f"q{i}" for i in range(len(texts))], texts)


def environment_for(target: Any, *, work_dir: Any = None, progress: bool | None = None) -> Environment:
    """The `Environment` of a corpus, dataset, environment or collection (`target.environment()`)."""
    if isinstance(target, Environment):
        env = target
    elif hasattr(target, "environment") and callable(target.environment):
        env = target.environment()
    elif isinstance(target, Corpus):
        env = Environment(corpus=target)
    elif hasattr(target, "corpus") and isinstance(target.corpus, Corpus):
        env = Environment(corpus=target.corpus)
    else:
        raise InputError(
            f"warm_up needs a Corpus, a Dataset, an Environment or a collection, not {type(target).__name__}; "
            "e.g. pipe.warm_up(load_dataset('sample'))"
        )
    if work_dir is not None:
        env = dataclasses.replace(env, work_dir=Path(work_dir), artefacts=[])
    if progress is not None:
        env = dataclasses.replace(env, progress=progress)
    return env

