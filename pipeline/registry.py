"""The stage registry: maps a YAML `type:` name to a stage class.

Built-in stages register with the `@register` decorator when their module is imported; plugins
register through the `stagegraph.stages` entry-point group (`name = "package.module:StageClass"`),
so a new stage type needs no fork. Lookups load both lazily, on first use, under a lock: threads
that look up at start-up wait for the one that loads, and each module is imported once. Loading
counts as done only when every module has imported; a module that fails is reported as itself (its
name and its error) by every lookup until it imports, never as an empty registry.
"""

from __future__ import annotations

import importlib
import threading
from importlib.metadata import entry_points
from typing import TypeVar

from stagegraph.errors import StageError

ENTRY_POINT_GROUP = "stagegraph.stages"

# Modules holding the built-in stages; importing each runs its @register decorators.
BUILTIN_MODULES = (
    "stagegraph.stages.retrieve",
    "stagegraph.stages.fusion.pool",
    "stagegraph.stages.rerank.cross_encoder",
    "stagegraph.stages.rerank.late_interaction",
    "stagegraph.evaluation.metrics_stage",
)

_REGISTRY: dict[str, type] = {}
_loaded = False
_loading = threading.RLock()  # re-entrant: a module being imported may itself look a type up

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


class StageModuleError(StageError):
    """A module that holds stage types failed to import; the message names it and its error."""


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    with _loading:
        if _loaded:
            return
        for module in BUILTIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:  # a built-in module not present in this build
                if exc.name != module:
                    raise _failed(f"the built-in stage module {module!r}", module, exc) from exc
            except Exception as exc:
                raise _failed(f"the built-in stage module {module!r}", module, exc) from exc
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
            except Exception as exc:
                raise _failed(f"the plugin stage {ep.name!r} ({ep.value})", ep.module, exc) from exc
            if getattr(cls, "type_name", "") != ep.name:
                cls.type_name = ep.name
            register(cls)
        _loaded = True


def _failed(what: str, module: str, exc: Exception) -> StageModuleError:
    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return StageModuleError(
        f"{what} failed to import ({error}), so no stage type can be looked up; fix it or the installation "
        f"(`python -c 'import {module}'` shows where it fails), then look up again"
    )


#: names people reach for that are settings of another stage, not stage types: the fix instead of a list
SETTING_NOT_STAGE = {
    name: (f"{name!r} is not a stage type: query expansion is a setting of the BM25 stage, which searches "
           f"twice with its own index; write `- type: bm25` with `expand: {{method: {name}, fb_docs: 10, "
           f"fb_terms: 10}}` (docs/feedback.md) instead of `bm25 >> {name} >> bm25`")
    for name in ("rm3", "rocchio")
}


def stage_class(type_name: str) -> type:
    """The class registered as `type_name`; the error lists every registered type."""
    _load_all()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        if type_name in SETTING_NOT_STAGE:
            raise UnknownStageType(SETTING_NOT_STAGE[type_name]) from None
        raise UnknownStageType(
            f"unknown stage type {type_name!r}; registered types: {', '.join(available_types())}. "
            f"Plugins add types through the {ENTRY_POINT_GROUP!r} entry-point group."
        ) from None


def available_types() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)
