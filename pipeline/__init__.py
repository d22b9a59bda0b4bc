"""The engine: the stage contract, rankings with provenance, `Pipeline` (composition, checks, the
tree, YAML), the executor (online/batch, timing), the stage cache and the stage registry.

It knows no model and no concrete stage: every model or index lives behind a stage in
`stagegraph.stages`, found by type name through the registry.
"""
