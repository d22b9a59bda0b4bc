"""The stage contract: what every stage in a graph is, what it receives and what it returns.

A stage is a plain class with

* `type_name` (class attribute): the name YAML configs use (`bm25`, `dense`, `pool`, `cross_encoder`);
* `Config` (class attribute): its pydantic settings model, and `config`, an instance of it;
* `arity` (class attribute): how many upstream inputs it takes, `Arity.NONE` (a retriever starts a
  chain), `Arity.ONE` (a reranker refines one list) or `Arity.MANY` (a fusing stage joins branches);
* `name`: unique within a graph, from `config.name` or `type_name`;
* `warm_up(env)`: heavy loading (models, indexes) outside any timed region; called once before `run`;
* `run(queries, inputs) -> list[Ranking]`: one `Ranking` per query, in the queries' order. `inputs`
  holds one list of rankings per upstream stage, each aligned with `queries`;
* `fingerprint()`: a hash of the config and of the artefacts the stage reads, the cache key's core;
* `from_config(config)` (classmethod): build the stage from its `Config`, for YAML graphs.

`StageBase` supplies `name`, `fingerprint()`, `from_config()`, `to_config()` and the composition
operators (`>>`, `|`, `%`) so concrete stages stay short. Nothing else is required.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.stages.compose import Node, as_node



class Arity(str, enum.Enum):
    NONE = "none"
    ONE = "one"
    MANY = "many"


class StageError(RuntimeError):
    """A stage cannot run (a model that will not load, an index for another corpus, bad input)."""


class StageConfig(BaseModel):
    """Base of every stage's settings: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None


@dataclass(frozen=True, eq=False)
class Ranking:
    """One query's ranked documents: corpus rows and float32 scores, best first.

    Rows are sorted by score, highest first; equal scores are ordered by row, lowest first, so a
    ranking never depends on hash or thread order. `features` maps a source name (for example the
    branch that found a pooled document) to a float32 array aligned with `doc_rows`.
    """

    doc_rows: np.ndarray
    scores: np.ndarray
    features: Mapping[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_scores(
        cls,
        doc_rows: np.ndarray,
        scores: np.ndarray,
        k: int | None = None,
        features: Mapping[str, np.ndarray] | None = None,
    ) -> Ranking:
        """Sort (score desc, row asc), keep the best `k`; `features` are reordered alongside."""
        rows = np.asarray(doc_rows, dtype=np.int64)
        vals = np.asarray(scores, dtype=np.float32)
        if rows.shape != vals.shape or rows.ndim != 1:
            raise ValueError(f"doc_rows {rows.shape} and scores {vals.shape} must be 1-d and the same length")
        if k is not None and 0 <= k < len(rows):
            # Partial selection first, then exact ordering of the survivors (ties included).
            kth = np.partition(-vals, k - 1)[k - 1] if k > 0 else np.inf
            keep = np.flatnonzero(-vals <= kth)
            rows, vals = rows[keep], vals[keep]
            feats = {n: np.asarray(f)[keep] for n, f in (features or {}).items()}
        else:
            keep = None
            feats = {n: np.asarray(f) for n, f in (features or {}).items()}
        order = np.lexsort((rows, -vals))
        if k is not None:
            order = order[: max(k, 0)]
        return cls(rows[order], vals[order], {n: f[order].astype(np.float32) for n, f in feats.items()})

    @classmethod
    def empty(cls) -> Ranking:
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.doc_rows)

    def top(self, k: int) -> Ranking:
        if k >= len(self):
            return self
        return Ranking(self.doc_rows[:k], self.scores[:k], {n: f[:k] for n, f in self.features.items()})


@dataclass
class Environment:
    """What stages may need at warm-up: the corpus, a work directory for built artefacts, progress."""

    corpus: Corpus
    work_dir: Path = Path(".stagegraph")
    progress: bool = True

    def artefact_dir(self, kind: str, key: str) -> Path:
        """`work_dir/<kind>/<key>`: where a stage keeps an index or model it built for this corpus."""
        return Path(self.work_dir) / kind / key


@runtime_checkable
class Stage(Protocol):
    type_name: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    arity: ClassVar[Arity]
    config: StageConfig

    @property
    def name(self) -> str: ...

    def warm_up(self, env: Environment) -> None: ...

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]]) -> list[Ranking]: ...

    def fingerprint(self) -> str: ...


def stable_hash(payload: Any) -> str:
    """SHA-256 of a JSON rendering with sorted keys: equal settings give equal hashes."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StageBase:
    """Defaults for the `Stage` contract plus the composition operators.

    Subclasses set `type_name`, `Config`, `arity`, keep their settings in `self.config`, and may
    override `artefact_fingerprint()` to add the identity of what they read (an index, a model).
    """

    type_name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig
    arity: ClassVar[Arity] = Arity.NONE
    config: StageConfig
    #: Names of the upstream steps, in input order; set by `Graph` when the graph is built, so a
    #: fusing stage can label per-branch features (e.g. "bm25", "dense").
    input_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name or self.type_name

    @classmethod
    def from_config(cls, config: StageConfig) -> StageBase:
        """Default: the constructor takes the config's fields as keyword arguments."""
        return cls(**dict(config))

    def to_config(self) -> dict[str, Any]:
        """`{"type": ..., **settings}`, the stage's entry in a YAML graph (defaults left out)."""
        return {"type": self.type_name, **self.config.model_dump(mode="json", exclude_defaults=True)}

    def warm_up(self, env: Environment) -> None:  # noqa: B027 - optional hook
        """Load heavy state; the default stage has none."""

    def artefact_fingerprint(self) -> str:
        """Identity of the artefacts the stage reads (override in stages backed by an index/model)."""
        return ""

    def fingerprint(self) -> str:
        return stable_hash(
            {
                "type": self.type_name,
                "config": self.config.model_dump(mode="json", exclude={"name"}),
                "artefacts": self.artefact_fingerprint(),
            }
        )

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump(exclude_defaults=True).items())
        return f"{type(self).__name__}({settings})"

    # Composition: these only build graph nodes; nothing runs until the graph is executed.
    def __rshift__(self, other: Any) -> Node:
        return as_node(self) >> other

    def __or__(self, other: Any) -> Node:
        return as_node(self) | other

    def __mod__(self, k: int) -> Node:
        return as_node(self) % k
