"""The engine: graph composition and validation, execution with timing, cache, config, CLI, reports.

It knows no model: every model or index lives behind a stage.
"""
