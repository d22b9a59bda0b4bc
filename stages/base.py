"""`StageBase`: the defaults of the stage contract, the composition operators, and the fingerprint.

Concrete stages subclass it, set `type_name`, `Config` and `arity`, keep their settings in
`self.config` (built with `self.config = self.Config.parse(...)` or `make_config`, so a Python
constructor raises the same one-line `ConfigError` as YAML) and write either

* `run(queries, inputs)` on the value, for a stage that needs nothing from the environment (a
  fusing stage): the value is then its own bound stage; or
* `bind(env)`, returning a small object whose `run` holds what it loaded (an index, a model).

What they may also set:

* `version`: an optional manual extra; the code version itself is derived from the stage's source
  (`stagegraph.pipeline.code_version`), so nobody has to remember to bump it;
* `libraries`: the distributions whose versions can change its results (faiss-cpu, torch, ...);
* `speed_only`: settings that change speed but never a result (batch size, device);
* `indexes_corpus`: whether binding it builds artefacts from the corpus (an index);
* `artefact_fingerprint()`: the identity of what it reads (an index, a model);
* `intra_op_threads`: the torch/FAISS thread count the stage's results are defined at (dense query
  encoding: 1, since a one-row matmul splits differently by thread count); the executor's thread
  policy (`stagegraph.pipeline.threads`) runs it with exactly that, and otherwise decides alone.

Direct use outside a pipeline: `stage.warm_up(env)` binds the stage for `stage.run(...)` (a
convenience kept for the course chapter and notebooks; pipelines never use it, they bind their own).

`fingerprint()` hashes all of these, so the stage cache (`stagegraph.pipeline.cache`) can never
serve a ranking made by other code, another library release or other settings. The contract itself
is written in `stagegraph.pipeline.stage`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

from stagegraph.corpora.types import Queries
from stagegraph.errors import StageError
from stagegraph.hashing import library_versions, stable_hash
from stagegraph.pipeline.compose import Composable
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, Environment, StageConfig

__all__ = ["EmptyQueryWarning", "StageBase"]


class EmptyQueryWarning(UserWarning):
    """A query had no terms left after analysis (empty, punctuation or stopwords only)."""


class StageBase(Composable):
    """Defaults for the `Stage` contract plus `>>`, `|` and `%` (which build a `Pipeline`)."""

    type_name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig
    arity: ClassVar[Arity] = Arity.NONE
    #: A manual extra on top of the derived code version: bump it for a change no source rule sees.
    version: ClassVar[int] = 1
    #: Distributions whose version can change this stage's output; their versions are fingerprinted.
    libraries: ClassVar[tuple[str, ...]] = ()
    #: Settings that change speed only, never a ranking: left out of the fingerprint.
    speed_only: ClassVar[frozenset[str]] = frozenset()
    #: True for a stage that builds artefacts from the corpus when bound (an index): a collection's
    #: writer builds these when it publishes a generation, its readers then only load them.
    indexes_corpus: ClassVar[bool] = False
    #: The intra-op thread count this stage's results are defined at (None: the policy decides).
    intra_op_threads: ClassVar[int | None] = None
    config: StageConfig

    @property
    def name(self) -> str:
        return self.config.name or self.type_name

    @classmethod
    def make_config(cls, **fields: Any) -> StageConfig:
        """`cls.Config` of `fields`, validated once; one-line `ConfigError` naming the field otherwise."""
        return cls.Config.parse(fields, stage_type=cls.type_name)

    @classmethod
    def from_config(cls, config: StageConfig) -> StageBase:
        """The stage of an already validated `config`. Default: the constructor takes the config's
        fields as keyword arguments; stages whose constructor differs override this."""
        return cls(**dict(config))

    @classmethod
    def _of_config(cls, config: StageConfig) -> Any:
        """A stage holding `config` as it is, without validating it again (for `from_config`)."""
        stage = cls.__new__(cls)
        stage.config = config
        return stage

    def to_config(self) -> dict[str, Any]:
        """`{"type": ..., **settings}`, the stage's entry in a YAML pipeline: every setting, defaults
        included, so a saved config or report reproduces the stage after a default changes."""
        return {"type": self.type_name, **self.config.settings()}

    def bind(self, env: Environment) -> Any:
        """The stage bound to `env`. Default: a stage whose `run` needs nothing from the environment is
        its own bound stage; an older stage that loads in `warm_up(env)` is bound as a warmed copy,
        so the value itself is never changed."""
        if type(self).warm_up is not StageBase.warm_up:
            bound = copy.copy(self)
            bound.warm_up(env)
            return bound
        return self

    def warm_up(self, env: Environment) -> None:
        """Bind this stage to `env` for direct use (`stage.run(...)` outside a pipeline); pipelines
        never use this, they bind the stage themselves (`Pipeline.bind`)."""
        bound = self.bind(env)
        if bound is not self:
            self.__dict__["_direct"] = bound

    @property
    def bound(self) -> Any:
        """What `warm_up(env)` bound for direct use; a `StageError` saying so before it."""
        bound = self.__dict__.get("_direct")
        if bound is None:
            raise StageError(f"stage {self.name!r} is not bound to documents yet: call stage.warm_up(env) "
                             "(or use it in a pipeline: pipe.bind(corpus)) before run()")
        return bound

    def run(self, queries: Queries, inputs: Sequence[Sequence[Ranking]] = ()) -> list[Ranking]:
        """Direct use: run the stage as `warm_up(env)` bound it."""
        return self.bound.run(queries, inputs)

    def artefact_fingerprint(self) -> str:
        """Identity of the artefacts the stage reads (override in stages backed by an index/model)."""
        return ""

    def fingerprint(self) -> str:
        # "code": a hash of the source that makes this class's rankings (computed once per class);
        # "version" is the manual extra on top of it.
        from stagegraph.pipeline.code_version import code_version

        return stable_hash(
            {
                "type": self.type_name,
                "code": code_version(type(self)),
                "version": self.version,
                "libraries": library_versions(self.libraries),
                "config": self.config.model_dump(mode="json", exclude={"name", *self.speed_only}),
                "artefacts": self.artefact_fingerprint(),
            }
        )

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump(mode="json", exclude_defaults=True).items())
        return f"{type(self).__name__}({settings})"
