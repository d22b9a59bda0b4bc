"""The root of every error stagegraph raises on purpose, and its two kinds.

Each message is one line that names the problem and the fix. The command line maps the kinds to its
exit codes (`stagegraph.cli.app.EXIT_CODES`) and prints the message without a traceback (`--debug`
shows it); the HTTP server maps them to status codes the same way.

* `InputError`: what the user gave is wrong (a config, a dataset, a metric, an argument): fix the input.
* `StageError`: a stage cannot run (a model that will not load, a stale or damaged index, a device
  that is not there): fix the environment, or rebuild.
"""

from __future__ import annotations


class StagegraphError(Exception):
    """Root of stagegraph's own errors; `str(error)` is the one line to show the user."""


class InputError(StagegraphError, ValueError):
    """Bad input: a malformed config, dataset, metric or argument; the message says how to fix it."""


class StageError(StagegraphError, RuntimeError):
    """A stage cannot run (a model, index or device problem); the message says how to fix it."""


class ConfigError(InputError):
    """A pipeline config or a stage's settings are invalid; the message names the source, the field
    and the allowed values."""
