"""What every adapter puts in a document's metadata: the hit's own metadata, then stagegraph's fields.

`hit_metadata(hit, generation)` is `{**hit.metadata, "id", "doc_id", "title", "rank", "score",
"stages": {step: {"rank", "score"}}, "cross_encoder_score"?, "generation"?}`: the document's own
metadata first (so a library's metadata filters see it as written), then where the pipeline put it,
step by step (`rank` is 1-based, as in `Hit`; a step that did not return it has `None`).
"""

from __future__ import annotations

from typing import Any

from stagegraph.errors import InputError

#: the keys stagegraph adds (a library that shows metadata to an LLM may leave these out)
PROVENANCE_KEYS = ("id", "doc_id", "rank", "score", "stages", "cross_encoder_score", "generation")


def hit_metadata(hit: Any, generation: int | None = None) -> dict[str, Any]:
    out = dict(hit.metadata)
    out.update(id=hit.id, doc_id=hit.doc_id, title=hit.title, rank=hit.rank, score=hit.score,
               stages={name: {"rank": s.rank, "score": s.score} for name, s in hit.stages.items()})
    if hit.cross_encoder_score is not None:
        out["cross_encoder_score"] = hit.cross_encoder_score
    if generation is not None:
        out["generation"] = generation
    return out


def searcher(target: Any) -> Any:
    """`target` when it can search (a `Stack`, a `Runner`, a pipeline after `warm_up`); else an
    `InputError` saying what to pass."""
    if callable(getattr(target, "search_batch", None)) and callable(getattr(target, "search", None)):
        return target
    raise InputError(f"an adapter searches a stagegraph.open(...) stack, a Runner (pipe.bind(dataset)) or a "
                     f"pipeline after warm_up(dataset), not {type(target).__name__}")
