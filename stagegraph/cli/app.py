"""The `stagegraph` command line: the parser, the shared arguments, and the one exit-code table.

Every command is a module of this package with `register(subparsers)` (its arguments) and
`handle(args) -> int`. Commands raise stagegraph's own errors; `main` maps them to exit codes in one
place and prints one line, never a traceback (`--debug` shows it):

| exit | meaning                                                                            |
| ---: | ---------------------------------------------------------------------------------- |
|    0 | success                                                                            |
|    1 | a check failed (a pinned expectation, a reranker that does not beat its first stage) |
|    2 | bad input (`InputError`: config, dataset, metric, arguments, an unreadable file)   |
|    3 | a stage failed at run time (`StageError`: a model, index or device problem)        |
|    4 | an unexpected error inside stagegraph: a bug (`--debug` shows the traceback)       |
|  130 | interrupted                                                                        |
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from stagegraph.errors import InputError, StageError


class Exit(enum.IntEnum):
    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    STAGE_FAILED = 3
    INTERNAL = 4
    INTERRUPTED = 130


#: Error classes -> exit code, first match wins (OSError: a file the user named cannot be read).
EXIT_CODES: tuple[tuple[type[BaseException], Exit], ...] = (
    (InputError, Exit.BAD_INPUT),
    (StageError, Exit.STAGE_FAILED),
    (OSError, Exit.BAD_INPUT),
)

#: The command modules, in the order `--help` lists them.
COMMANDS = (
    "stagegraph.cli.evaluate",
    "stagegraph.cli.index",
    "stagegraph.cli.search",
    "stagegraph.cli.ingest",
    "stagegraph.cli.collection",
    "stagegraph.cli.serve",
    "stagegraph.cli.compare",
    "stagegraph.cli.sweep",
    "stagegraph.cli.tune_rerank",
    "stagegraph.cli.expectations",
    "stagegraph.cli.train",
    "stagegraph.cli.demo",
)

DEFAULT_WORK_DIR = ".stagegraph"


# -- shared arguments and helpers -----------------------------------------------------------------
def work_dir(args: argparse.Namespace) -> Path:
    from stagegraph.pipeline.stage import default_work_dir

    given = getattr(args, "work_dir", None)
    return Path(given) if given else default_work_dir()


def progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def add_config_arg(p: argparse.ArgumentParser, help: str = "pipeline YAML: a path, or a bundled config such as hybrid-rerank") -> None:
    p.add_argument("config", help=help)


def add_dataset_args(p: argparse.ArgumentParser, *, reranker: bool = True) -> None:
    p.add_argument("--dataset", required=True, help="a BEIR-layout directory, a registered name such as `sample`, or an ir_datasets id such as "
                   "irds:beir/scifact/test (the id names the split)")
    p.add_argument("--download", action="store_true", help="fetch a public BEIR dataset by name when it is not found locally (needs network)")
    if reranker:
        p.add_argument("--reranker", help="model for every cross-encoder stage (HF id or local path; or $STAGEGRAPH_RERANKER)")


def load_pipeline(args: argparse.Namespace, config: str | None = None) -> Any:
    """The pipeline of `args.config`, with `--reranker` (or $STAGEGRAPH_RERANKER, or the reranker
    installed in `--collection`'s directory) applied (`stagegraph.pipeline.config.with_reranker`)."""
    from stagegraph.collection.reranker_record import with_installed
    from stagegraph.pipeline.compose import Pipeline
    from stagegraph.pipeline.config import load_config, resolve_path

    path = resolve_path(config or args.config)
    data = with_installed(load_config(path), getattr(args, "collection", None), getattr(args, "reranker", None))
    return Pipeline.from_config(data, source=str(path))


def load_dataset(args: argparse.Namespace) -> Any:
    from stagegraph.corpora.registry import load_dataset as load

    return load(args.dataset, progress=progress(args), download=getattr(args, "download", False))


def environment(args: argparse.Namespace, dataset: Any) -> Any:
    from stagegraph.pipeline.stage import Environment

    return Environment(corpus=dataset.corpus, work_dir=work_dir(args), progress=progress(args))


def add_executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["local", "ray"],
                   help="run here (default, or the config's `executor:`) or on a Ray cluster (pip install \"stagegraph[ray]\")")
    p.add_argument("--ray-address", help="with --executor ray: HOST:PORT of a running cluster (default $RAY_ADDRESS; none: start a local one)")
    p.add_argument("--workers", type=int, help="with --executor ray: worker actors (default one per CPU of the cluster)")


def executor_config(args: argparse.Namespace, pipeline: Any = None) -> Any:
    """The `ExecutorConfig` of the command line over the pipeline's own `executor:`."""
    from stagegraph.pipeline.executor import ExecutorConfig

    base = pipeline.executor if pipeline is not None else ExecutorConfig()
    if (args.executor or base.type) == "local":
        if args.ray_address or args.workers:
            raise InputError("--ray-address and --workers go with --executor ray")
        return ExecutorConfig()
    return ExecutorConfig.of({"type": "ray", "address": args.ray_address or base.address, "workers": args.workers or base.workers})


@contextlib.contextmanager
def opened_executor(args: argparse.Namespace, config: Any):
    """A `stagegraph.scale.RayExecutor` for a distributed `config` (closed after), else None."""
    if not config.distributed:
        yield None
        return
    from stagegraph.scale import session

    with session(config, progress=progress(args)) as executor:
        yield executor


def say(args: argparse.Namespace, text: str) -> None:
    """Print `text` unless --quiet."""
    if progress(args):
        print(text)


# -- parser and main ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stagegraph",
        description="Composable retrieval pipelines with per-stage quality and latency reports.",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or chatter")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--work-dir", help=f"where indexes, models and the cache live (default {DEFAULT_WORK_DIR}, or $STAGEGRAPH_HOME)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


GLOBAL_FLAGS = {"--quiet", "-q", "--debug"}


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Accept the global flags after the subcommand too (`stagegraph demo --quiet`)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in GLOBAL_FLAGS:
            front.append(arg)
        elif arg == "--work-dir" and i + 1 < len(argv):
            front += argv[i : i + 2]
            i += 1
        elif arg.startswith("--work-dir="):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def exit_code(error: BaseException) -> Exit:
    """The exit code of an error: its kind's, or INTERNAL for anything stagegraph did not expect."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return Exit.INTERNAL


class WarningLines:
    """Warnings as one `warning:` line each on stderr; after `limit` of one kind, only a count."""

    def __init__(self, limit: int = 5):
        self.limit = limit
        self.seen: dict[str, int] = {}

    def format(self, message, category, filename, lineno, line=None) -> str:  # noqa: ARG002 - warnings' signature
        kind = category.__name__
        self.seen[kind] = self.seen.get(kind, 0) + 1
        return f"warning: {' '.join(str(message).split())}\n" if self.seen[kind] <= self.limit else ""

    def summary(self) -> None:
        for kind, n in self.seen.items():
            if n > self.limit:
                print(f"warning: ... and {n - self.limit} more {kind} warnings like these", file=sys.stderr)


#: optional modules -> the extra that installs them (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve", "starlette": "serve",
          "ray": "ray", "onnxruntime": "onnx", "onnx": "onnx"}


def missing_extra(exc: BaseException) -> str | None:
    """The install line for an optional dependency that is not installed (None: not that)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    extra = EXTRAS.get(exc.name.split(".")[0])
    if extra is None:
        return None
    return (f"this needs the optional module {exc.name.split('.')[0]!r}, which is not installed: "
            f'pip install "stagegraph[{extra}]"')


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(hoist_global_flags(sys.argv[1:] if argv is None else list(argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return Exit.BAD_INPUT
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for chatty in ("faiss.loader", "sentence_transformers", "httpx", "urllib3"):  # their INFO lines are not ours
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")
    lines = WarningLines()
    formatted, warnings.formatwarning = warnings.formatwarning, lines.format
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        extra = missing_extra(exc)
        if extra is not None:
            print(f"error: {extra}", file=sys.stderr)
            return Exit.BAD_INPUT
        code = exit_code(exc)
        message = " ".join(str(exc).split()) or type(exc).__name__
        if code is Exit.INTERNAL:
            message = f"unexpected {type(exc).__name__}: {message} (a bug: run with --debug for the traceback and report it)"
        print(f"error: {message}", file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = formatted
        lines.summary()


if __name__ == "__main__":
    sys.exit(main())
