"""Offline evaluation: measures, scoring, `evaluate`, reports, comparisons, sweeps and pinned figures.

It sits above the engine (`stagegraph.pipeline`) and is never imported by it.
"""
