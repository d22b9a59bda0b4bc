"""The `stagegraph` command line."""

from stagegraph.cli.app import main

__all__ = ["main"]
