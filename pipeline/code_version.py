"""A stage's code version, derived from the source of the code that makes its rankings.

The stage cache (`stagegraph.pipeline.cache`) promises never to serve a ranking made by other code.
That promise used to rest on a class attribute, `version`, that someone had to remember to bump; no
one ever did, though dense rankings changed twice. Here the version is computed instead:
`code_version(cls)` is a SHA-256 over the normalised source of every module that makes the class's
rankings, so it changes by itself the day that code changes.

Which modules count (the rule):

* the roots: the module that defines the class, and the module of every base class that is itself
  ranking code (below), so a subclass also covers the `run` it inherits;
* then, transitively, every module a counted module imports (at the top or inside a function,
  absolute or relative), as long as the imported module is *ranking code*:
  - `stagegraph.stages.*` (retrievers, fusion, rerankers and what they are built from),
  - `stagegraph.indexes.*` (BM25 and its kernels, tokenizer, FAISS, the encoder, embeddings),
  - `stagegraph.pipeline.ranking` (the `Ranking` type, its tie rule and cut-offs),
  - `stagegraph.corpora.filters` (metadata expressions, which decide what may be ranked at all),
  - and, for a stage defined outside stagegraph (a plugin), every module of the stage's own
    top-level package (`myplugin.*`).
* Not counted: the rest of stagegraph (the engine that schedules stages, the cache, the YAML codec,
  evaluation, the data types, whose content reaches the cache key through the corpus and query
  fingerprints) and other distributions (numpy, faiss, torch: a stage names those in `libraries`,
  and their installed versions are fingerprinted). `StageBase.version` stays as a manual extra for
  what no rule can see (a plugin whose code lives in another package it does not import).

Normalised source: the module is parsed with `ast`, docstrings are dropped and the tree is dumped
without positions (`ast.dump`), so comments, blank lines, formatting and docstrings never change a
version; any change to what the code does (a function body, a constant, an import) does. A module
whose source cannot be read (defined in a notebook, no file) gets a token unique to this process:
its cached rankings are then never reused by another process, rather than reused wrongly. A
compiled extension module in a counted package is hashed byte for byte.

Cost: the first call for a class reads and parses its modules (a few tens of milliseconds for the
built-in stages, each module parsed once per process whatever the number of classes); later calls
are one dictionary lookup. Source is read from disk at that first call: editing the files of a
running process is not supported.

Why derive the version from code rather than pin a golden ranking per stage: a golden ranking pins
output on one machine (BLAS, thread counts and CPU features move scores by 1e-7 and flip ties, so
the pins would need tolerances that hide exactly the changes at stake), and a failing golden test
still needs someone to bump a number by hand. A code hash is machine-independent and cannot be
forgotten. Its cost is the honest direction: any edit to the counted modules (even a refactor that
changes no ranking) misses the cache once; no edit can make it serve a stale ranking.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import secrets
import sys
from pathlib import Path

from stagegraph.hashing import hash_strings, sha256_file

#: Modules (and packages: every module below them) whose code makes rankings. See the docstring.
RANKING_CODE = (
    "stagegraph.stages",
    "stagegraph.indexes",
    "stagegraph.pipeline.ranking",
    "stagegraph.corpora.filters",
)
#: Stands for a module whose source cannot be read: unique to this process, so never reused across runs.
_UNREADABLE = f"unreadable-source-{secrets.token_hex(8)}"


def read_source(path: str) -> str:
    """A module's source text, decoded as Python does (its coding line, else UTF-8)."""
    return importlib.util.decode_source(Path(path).read_bytes())


def code_version(cls: type) -> str:
    """The version of the code that makes `cls`'s rankings: a hash over its modules (see the docstring)."""
    return _class_version(cls)


def covered_modules(cls: type) -> list[str]:
    """The modules `code_version(cls)` hashes, sorted."""
    return sorted(_closure(cls))


def clear_caches() -> None:
    """Forget every computed version (for tests that change what `read_source` returns)."""
    _class_version.cache_clear()
    _parsed.cache_clear()


# -- the rule ---------------------------------------------------------------------------------------
def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _followed(cls: type) -> tuple[str, ...]:
    top = cls.__module__.split(".")[0]
    return RANKING_CODE if top == "stagegraph" else (*RANKING_CODE, top)


def _roots(cls: type, followed: tuple[str, ...]) -> list[str]:
    roots = [cls.__module__]
    roots += [base.__module__ for base in cls.__mro__[1:] if _within(base.__module__, followed)]
    return list(dict.fromkeys(roots))


def _closure(cls: type) -> dict[str, str]:
    """{module name: digest} for every module counted for `cls`."""
    followed = _followed(cls)
    todo, found = _roots(cls, followed), {}
    while todo:
        name = todo.pop()
        if name in found:
            continue
        digest, imported = _module(name)
        found[name] = digest
        todo += [m for m in imported if m not in found and _within(m, followed) and _is_module(m)]
    return found


@functools.lru_cache(maxsize=None)
def _class_version(cls: type) -> str:
    return hash_strings(part for name, digest in sorted(_closure(cls).items()) for part in (name, digest))


# -- one module -------------------------------------------------------------------------------------
def _spec(name: str):
    """The module spec of `name` without importing it (its parent packages are imported already, or
    are found the same way); None when `name` is not a module (an attribute of one, say)."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__spec__", None) or _file_spec(module)
    parent, _, _ = name.rpartition(".")
    if not parent:
        try:
            return importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
    outer = _spec(parent)
    locations = getattr(outer, "submodule_search_locations", None)
    if locations is None:
        return None
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(name, list(locations), None)
        except (ImportError, ValueError, AttributeError):
            continue
        if spec is not None:
            return spec
    return None


def _file_spec(module):
    """A spec-like record for a module without `__spec__` (`__main__` run as a script)."""
    path = getattr(module, "__file__", None)
    return importlib.util.spec_from_file_location(module.__name__, path) if path else None


def _is_module(name: str) -> bool:
    return _spec(name) is not None


def _module(name: str) -> tuple[str, tuple[str, ...]]:
    """(digest, imported module names) of one module."""
    spec = _spec(name)
    origin = getattr(spec, "origin", None)
    if not origin or not Path(origin).is_file():
        return _UNREADABLE, ()
    if not origin.endswith(".py"):
        return sha256_file(origin), ()  # a compiled extension: its bytes are its code
    try:
        source = read_source(origin)
    except (OSError, UnicodeDecodeError, SyntaxError):
        return _UNREADABLE, ()
    package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
    return _parsed(source, package)


@functools.lru_cache(maxsize=None)
def _parsed(source: str, package: str) -> tuple[str, tuple[str, ...]]:
    """Digest of the normalised source, and the absolute names of what it imports."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return _UNREADABLE, ()
    _drop_docstrings(tree)
    digest = hashlib.sha256(ast.dump(tree, include_attributes=False).encode("utf-8")).hexdigest()
    return digest, tuple(dict.fromkeys(_imports(tree, package)))


def _drop_docstrings(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:]


def _imports(tree: ast.Module, package: str) -> list[str]:
    """Every module name an import statement may refer to: `from a import b` names `a` and `a.b`
    (`b` may be a submodule); relative imports are resolved against `package`."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    continue
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base and anchor else (base or anchor)
            if not base:
                continue
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return names
