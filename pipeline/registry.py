"""The stage registry: maps a YAML `type:` name to a stage class.

Built-in stages register with the `@register` decorator when their module is imported; plugins
register through the `stagegraph.stages` entry-point group (`name = "package.module:StageClass"`),
so a new stage type needs no fork. Lookups load both lazily, on first use.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TypeVar

ENTRY_POINT_GROUP = "stagegraph.stages"

# Modules holding the built-in stages; importing each runs its @register decorators.
BUILTIN_MODULES = (
    "stagegraph.stages.retrieve",
    "stagegraph.stages.fusion.pool",
    "stagegraph.stages.rerank.cross_encoder",
    "stagegraph.evaluation.metrics_stage",
)

_REGISTRY: dict[str, type] = {}
_loaded = False

S = TypeVar("S", bound=type)


class UnknownStageType(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def register(cls: S) -> S:
    """Class decorator: make `cls` available under `cls.type_name` in YAML configs."""
    name = getattr(cls, "type_name", "")
    if not name:
        raise ValueError(f"{cls.__name__} needs a non-empty `type_name` to be registered")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"stage type {name!r} is already registered by {existing.__module__}.{existing.__name__}")
    _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a built-in module not present in this build
            if exc.name != module:
                raise
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if getattr(cls, "type_name", "") != ep.name:
            cls.type_name = ep.name
        register(cls)


def stage_class(type_name: str) -> type:
    """The class registered as `type_name`; the error lists every registered type."""
    _load_all()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise UnknownStageType(
            f"unknown stage type {type_name!r}; registered types: {', '.join(available_types())}. "
            f"Plugins add types through the {ENTRY_POINT_GROUP!r} entry-point group."
        ) from None


def available_types() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)
