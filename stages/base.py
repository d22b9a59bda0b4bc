"""`StageBase`: the defaults of the stage contract, the composition operators, and the fingerprint.

Concrete stages subclass it, set `type_name`, `Config` and `arity`, keep their settings in
`self.config` and write `run`. What they may also set:

* `version`: an optional manual extra; the code version itself is derived from the stage's source
  (`stagegraph.pipeline.code_version`), so nobody has to remember to bump it;
* `libraries`: the distributions whose versions can change its results (faiss-cpu, torch, ...);
* `speed_only`: settings that change speed but never a result (batch size, device);
* `indexes_corpus`: whether its warm-up builds artefacts from the corpus (an index);
* `artefact_fingerprint()`: the identity of what it reads (an index, a model).

`fingerprint()` hashes all of these, so the stage cache (`stagegraph.pipeline.cache`) can never
serve a ranking made by other code, another library release or other settings. The contract itself
is written in `stagegraph.pipeline.stage`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from stagegraph.hashing import library_versions, stable_hash
from stagegraph.pipeline.compose import Composable
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
    #: True for a stage that builds artefacts from the corpus at warm-up (an index): a collection's
    #: writer warms these when it publishes a generation, its readers then only load them.
    indexes_corpus: ClassVar[bool] = False
    config: StageConfig

    @property
    def name(self) -> str:
        return self.config.name or self.type_name

    @classmethod
    def from_config(cls, config: StageConfig) -> StageBase:
        """Default: the constructor takes the config's fields as keyword arguments."""
        return cls(**dict(config))

    def to_config(self) -> dict[str, Any]:
        """`{"type": ..., **settings}`, the stage's entry in a YAML pipeline (defaults left out)."""
        return {"type": self.type_name, **self.config.model_dump(mode="json", exclude_defaults=True)}

    def warm_up(self, env: Environment) -> None:  # noqa: B027 - optional hook
        """Load heavy state; the default stage has none."""

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
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump(exclude_defaults=True).items())
        return f"{type(self).__name__}({settings})"
