"""Which step lost a document: `trace_loss`, the one rule behind loss attribution.

Given where every step ranked one document for one query (None: not in its output), the pipeline's
steps in execution order and the cut-off k of the question ("why is it not in the final top k?"),
the step that lost it is:

* `filtered`: no retriever returned it and a filter of a retriever (its own, its scope's, the
  pipeline's or the query's) excludes it;
* `never_retrieved`: no retriever returned it (and no filter stood in the way);
* walking the later steps in order, each fed by a step that had it, the first whose output drops it:
  `beyond_depth:<step>` a reranker that never scored it (its rank on the way in was past the
  reranker's depth or the step's cut-off), `demoted_by:<step>` a reranker that scored it and ranked it
  out of what it keeps, `cut_by:<step>` any other step that kept fewer documents than the rank it
  had (a pool's k, a cut-off);
* when it survives to the output below k: `demoted_by:<step>` the last step that took it from the top
  k (its rank on the way in <= k, on the way out > k), or, when no step ever had it in the top k, the
  retriever that ranked it best (`demoted_by:<leg>`: it came in below k and nothing lifted it).

Ranks are 1-based. `LossTrace` also gives the rank before and after the losing step. Evaluation
(`stagegraph.evaluation.loss`) applies this to every relevant document of every query; a runner's
`explain` to one document of one query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel

from stagegraph.pipeline.graph import Step

IN_TOP_K = "in_top_k"


class LossTrace(BaseModel):
    """Where one document was lost (or `in_top_k`), with its rank just before and after that step."""

    lost_at: str
    rank_before: int | None = None
    rank_after: int | None = None
    #: every step's rank of the document (None: not in that step's output)
    ranks: dict[str, int | None] = {}


def is_reranker(step: Step) -> bool:
    return getattr(step.stage, "type_name", "") == "cross_encoder" or hasattr(step.stage.config, "depth")


def depth_of(step: Step) -> int | None:
    """How deep into its input a step looks: a reranker's depth and the step's cut-off, the smaller."""
    caps = [c for c in (getattr(step.stage.config, "depth", None) if is_reranker(step) else None, step.cutoff) if c]
    return min(caps) if caps else None


def trace_loss(steps: Sequence[Step], ranks: Mapping[str, int | None], k: int, output: str,
               excluded_by_filter: bool = False) -> LossTrace:
    """Where the document whose per-step `ranks` are given was lost on its way to `output`'s top `k`."""
    ranks = {s.name: ranks.get(s.name) for s in steps}
    final = ranks.get(output)
    if final is not None and final <= k:
        return LossTrace(lost_at=IN_TOP_K, rank_before=final, rank_after=final, ranks=ranks)
    legs = [s for s in steps if not s.inputs]
    found = [s for s in legs if ranks[s.name] is not None]
    if not found:
        return LossTrace(lost_at="filtered" if excluded_by_filter else "never_retrieved", ranks=ranks)
    path: list[tuple[Step, int | None, int | None]] = [(s, None, ranks[s.name]) for s in found]
    for step in steps:
        if not step.inputs:
            continue
        seen = [ranks[i] for i in step.inputs if ranks.get(i) is not None]
        if not seen:
            continue  # not on this document's way
        before, after = min(seen), ranks[step.name]
        if after is None:
            depth = depth_of(step)
            if depth is not None and before > depth:
                kind = "beyond_depth" if is_reranker(step) else "cut_by"
            else:
                kind = "demoted_by" if is_reranker(step) else "cut_by"
            return LossTrace(lost_at=f"{kind}:{step.name}", rank_before=before, ranks=ranks)
        path.append((step, before, after))
    demoted = [(s, b, a) for s, b, a in path if b is not None and b <= k < a]
    if demoted:
        step, before, after = demoted[-1]
        return LossTrace(lost_at=f"demoted_by:{step.name}", rank_before=before, rank_after=after, ranks=ranks)
    best = min(found, key=lambda s: ranks[s.name])
    return LossTrace(lost_at=f"demoted_by:{best.name}", rank_after=ranks[best.name], ranks=ranks)
