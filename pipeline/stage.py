"""The stage contract, written once: what every stage is, what it receives and what it returns.

A stage is a **value**: its settings and nothing else, immutable, safe to share between pipelines,
threads and environments. It is any object with

* `type_name` (class attribute): the name YAML configs use (`bm25`, `dense`, `pool`, `cross_encoder`);
* `Config` (class attribute): its pydantic settings model, and `config`, an instance of it (every
  setting, defaults included, is what it serialises);
* `arity` (class attribute): how many upstream inputs it takes: `Arity.NONE` (a retriever starts a
  chain), `Arity.ONE` (a reranker refines one list) or `Arity.MANY` (a fusing stage joins branches);
* `name`: unique within a pipeline, from `config.name` or `type_name`;
* `bind(env) -> BoundStage`: load or build what the stage needs for one `Environment` (its index,
  its model) and return the object that runs it. Binding is the only heavy step; it leaves the
  value untouched, so one value can be bound to many environments (generations, segments, shards)
  at once. The bound stage has
  - `run(queries, inputs) -> list[Ranking]`: one `Ranking` per query, in the queries' order.
    `inputs` is an `Inputs`: one list of rankings per upstream step, each aligned with `queries`,
    and `inputs.names`, the names of those steps (a fusing stage labels and weighs its branches by them);
  - optionally `close()` (release files and caches) and `rebind(env)` (a bound stage for another
    environment that shares what does not depend on the corpus, such as a loaded model);
* `fingerprint()`: a hash of the config, the artefacts the stage reads and the code and library
  versions its results depend on: the core of the cache key.

A stage whose config has an integer `k` returns at most `k` documents per query; reports use that
limit to mark a metric that reads deeper than the stage can return as not applicable, and the
graph refuses a reranker asked for more than its upstream returns.

Nothing else is required. `stagegraph.stages.base.StageBase` supplies the defaults and the
composition operators (`>>`, `|`, `%`), so a concrete stage is short; `stagegraph.pipeline.compose`
turns compositions into a `Pipeline` (itself a stage), and `Pipeline.bind(env)` gives the
`stagegraph.pipeline.runner.Runner` that searches, runs and evaluates. An older stage written with
`warm_up(env)` and `run` on the value itself still works: `bind_stage` binds a copy of it.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.errors import ConfigError, InputError, StageError
from stagegraph.pipeline.ranking import Ranking

__all__ = ["Arity", "BoundStage", "Environment", "Inputs", "Stage", "StageConfig", "StageError", "bind_stage", "environment_for", "release_stage"]


class Arity(str, enum.Enum):
    NONE = "none"
    ONE = "one"
    MANY = "many"


class StageConfig(BaseModel):
    """Base of every stage's settings: unknown fields are errors, not silently ignored.

    `retired` names settings a stage no longer has, each with what replaced it, so an old config
    gets that sentence instead of a bare "extra field".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    retired: ClassVar[dict[str, str]] = {}

    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_retired(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in cls.retired.items():
                if name in data:
                    raise ValueError(f"`{name}` is no longer a setting of this stage: {why}; remove it")
        return data

    @classmethod
    def parse(cls, fields: dict[str, Any], *, stage_type: str, source: str = "", where: str = "") -> StageConfig:
        """`fields` validated once into this config; a `ConfigError` of one line otherwise, naming each
        field and what is allowed (the same message for a Python constructor and a YAML entry)."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(describe_validation(exc, cls, stage_type, source, where)) from None

    def settings(self) -> dict[str, Any]:
        """Every setting as plain data, defaults included (an unset `name` left out)."""
        out = self.model_dump(mode="json")
        if out.get("name") is None:
            out.pop("name", None)
        return out


def describe_validation(exc: ValidationError, config: type[BaseModel], stage_type: str, source: str = "",
                        where: str = "") -> str:
    """One line for a stage's invalid settings: each field, what is wrong, the fields allowed."""
    allowed = ", ".join(config.model_fields)
    prefix = f"{where}." if where else ""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(stage)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field; allowed fields: {allowed}"
        problems.append(f"{prefix}{field}: {message}")
    head = f"{source}: " if source else ""
    what = f"{where} (type {stage_type!r})" if where else f"stage type {stage_type!r}"
    return f"{head}{what} is invalid: " + "; ".join(problems)


def default_work_dir() -> Path:
    """Where built indexes, embeddings, models and the stage cache live: $STAGEGRAPH_HOME or ./.stagegraph."""
    return Path(os.environ.get("STAGEGRAPH_HOME") or ".stagegraph")


@dataclass
class Environment:
    """What stages may need at warm-up.

    * `corpus`: the documents (rows) to index and rank;
    * `work_dir`: where built artefacts live (`artefact_dir(kind, key)`; every directory handed out
      is remembered in `artefacts`, so a collection knows which ones its generation uses);
    * `progress`: whether long work shows progress bars;
    * `text_cache`: a `stagegraph.indexes.text_cache.TextCache` of per-text work (embeddings, BM25
      tokens) that builds reuse, so an index over a corpus that changed a little re-encodes only
      what changed (collections set it; None: no per-text cache);
    * `read_only`: stages must load their artefacts and never build or write one (a reader of a
      collection, a server); a missing artefact is then a `StageError` naming the command that builds it;
    * `encode`: how a stage encodes many texts at warm-up, `encode(encoder, texts) -> float32 array`
      (None: the encoder itself, here); a distributed executor (`stagegraph.scale`) sets it to shard
      the work over a cluster with the model loaded once per worker;
    * `vectors`: precomputed vectors of the corpus' rows (a `stagegraph.corpora.vectors.CorpusVectors`,
      "bring your own vectors"): a dense stage indexes them instead of encoding the documents, and
      refuses them when its model is not the one that made them (None: stages encode);
    * `artefact_roots`: more work directories a read-only stage may find an artefact in (a sharded
      collection read as one: each shard keeps its segments' indexes under its own directory).
    """

    corpus: Corpus
    work_dir: Path = field(default_factory=default_work_dir)
    progress: bool = True
    text_cache: Any = None
    read_only: bool = False
    encode: Any = None
    vectors: Any = None
    artefact_roots: tuple[Path, ...] = ()
    artefacts: list[Path] = field(default_factory=list, compare=False, repr=False)

    def artefact_dir(self, kind: str, key: str) -> Path:
        """`work_dir/<kind>/<key>`: where a stage keeps an index or model it built for this corpus
        (or the first of `artefact_roots` that holds `<kind>/<key>`)."""
        path = Path(self.work_dir) / kind / key
        if self.artefact_roots and not path.exists():
            path = next((p for p in (Path(r) / kind / key for r in self.artefact_roots) if p.exists()), path)
        if path not in self.artefacts:
            self.artefacts.append(path)
        return path

    def refuse_build(self, stage: str, what: str, hint: str) -> None:
        """Raise the `ReadOnlyRefusal` a read-only environment gives instead of building `what`."""
        if self.read_only:
            raise ReadOnlyRefusal(f"stage {stage!r} has no {what} here and may not build one (read-only); {hint}",
                                  stage=stage)


class ReadOnlyRefusal(StageError):
    """A stage found no artefact it needs in a read-only environment and may not build it (a reader of
    a collection searching with a pipeline the collection was not built for); `stage` names it."""

    def __init__(self, message: str, *, stage: str):
        super().__init__(message)
        self.stage = stage


class Inputs(tuple):
    """The upstream rankings a stage receives: `inputs[j][i]` is step `names[j]`'s ranking of query i."""

    names: tuple[str, ...]

    def __new__(cls, lists: Iterable[Sequence[Ranking]] = (), names: Iterable[str] | None = None) -> Inputs:
        self = super().__new__(cls, tuple(lists))
        labels = tuple(names) if names is not None else tuple(f"input{j}" for j in range(len(self)))
        if len(labels) != len(self):
            raise ValueError(f"{len(self)} upstream lists but {len(labels)} names")
        self.names = labels
        return self

    @classmethod
    def wrap(cls, inputs: Sequence[Sequence[Ranking]]) -> Inputs:
        """`inputs` as an `Inputs` (plain lists get the names input0, input1, ...)."""
        return inputs if isinstance(inputs, Inputs) else cls(inputs)


@runtime_checkable
class BoundStage(Protocol):
    """A stage bound to one environment: what runs."""

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]: ...


@runtime_checkable
class Stage(Protocol):
    type_name: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    arity: ClassVar[Arity]
    config: StageConfig

    @property
    def name(self) -> str: ...

    def bind(self, env: Environment) -> BoundStage: ...

    def fingerprint(self) -> str: ...


def bind_stage(stage: Any, env: Environment) -> BoundStage:
    """`stage.bind(env)`; for an older stage with only `warm_up(env)` and `run`, a warmed copy of it
    (so the value itself is never changed by binding).

    Over a segmented corpus (a collection) whose rows include deleted ones, a stage that starts a chain
    (arity NONE: it finds rows in the corpus) but does not declare `searches_segments` (a plugin
    written for a plain corpus, which would see every row) is bound with its rankings cut to live rows
    (`LiveRowsOnly`), so no deleted chunk ever leaves it; the built-in retrievers search live rows
    themselves, and stages with inputs only see rows their inputs gave them."""
    bind = getattr(stage, "bind", None)
    if callable(bind):
        bound = bind(env)
    else:
        bound = copy.copy(stage)
        warm = getattr(bound, "warm_up", None)
        if callable(warm):
            warm(env)
    live = getattr(env.corpus, "live_mask", None)
    if callable(live) and getattr(stage, "arity", None) == Arity.NONE and not getattr(stage, "searches_segments", False):
        mask = live()
        if mask is not None:
            return LiveRowsOnly(bound, mask)
    return bound


class LiveRowsOnly:
    """A bound stage whose rankings keep only rows `live` marks (see `bind_stage`)."""

    def __init__(self, bound: Any, live: Any):
        self.bound, self.live = bound, live

    def run(self, queries: Any, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]:
        out = []
        for ranking in self.bound.run(queries, inputs):
            keep = self.live[ranking.doc_rows]
            out.append(ranking if keep.all() else Ranking(ranking.doc_rows[keep], ranking.scores[keep],
                                                          {n: t.take(keep) for n, t in ranking.provenance.items()}))
        return out

    def close(self) -> None:
        release_stage(self.bound)


def release_stage(bound: Any) -> None:
    """Let a bound stage release what it holds (`close()`, where it has one)."""
    closer = getattr(bound, "close", None)
    if callable(closer):
        closer()


def environment_for(target: Any, *, work_dir: Any = None, progress: bool | None = None) -> Environment:
    """The `Environment` of a corpus, dataset, environment or collection (`target.environment()`)."""
    if isinstance(target, Environment):
        env = target
    elif hasattr(target, "environment") and callable(target.environment):
        env = target.environment()
    elif isinstance(target, Corpus):
        env = Environment(corpus=target)
    elif hasattr(target, "corpus") and isinstance(target.corpus, Corpus):
        env = Environment(corpus=target.corpus, vectors=getattr(target, "vectors", None))
    else:
        raise InputError(
            f"binding a pipeline needs a Corpus, a Dataset, an Environment or a collection, not {type(target).__name__}; "
            "e.g. pipe.bind(load_dataset('sample'))"
        )
    if work_dir is not None:
        env = dataclasses.replace(env, work_dir=Path(work_dir), artefacts=[])
    if progress is not None:
        env = dataclasses.replace(env, progress=progress)
    return env
