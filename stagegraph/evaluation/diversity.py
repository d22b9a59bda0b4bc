"""Diversity beside relevance: intra-list similarity (ILS) next to nDCG, for contexts assembled with MMR.

`evaluate_context(stack, queries, qrels, budget_tokens=..., k=10, **options)` runs every query twice
over one stack: a plain search (its top k hits), and `stack.context` with `options` (mmr_lambda,
expand, ...). For each it reports nDCG@k of the documents in order (a document counted once, at its
first chunk: qrels of a collection judge documents) and ILS@k, the mean pairwise cosine of the top
k chunks' dense vectors (lower is more diverse), averaged over the queries. MMR trades a little of
the first for a lower second; this puts the two side by side:

    {"search": {"ndcg@10": 0.71, "ils@10": 0.62}, "context": {"ndcg@10": 0.69, "ils@10": 0.41}, "queries": 12}

It lives in a module of its own: context assembly is not a pipeline stage (it packs passages for a
prompt after the pipeline's ranking), so the stage-by-stage report is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stagegraph.collection.context import intra_list_similarity


def ndcg_at(doc_ids: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """nDCG@k as trec_eval computes it (gain = grade, discount log2(rank + 1)); a document counted once."""
    seen: list[str] = []
    for d in doc_ids:
        if d not in seen:
            seen.append(d)
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(seen[:k]) if judged.get(d, 0) > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def evaluate_context(stack: Any, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], *,
                     budget_tokens: int, k: int = 10, **options: Any) -> dict[str, Any]:
    """nDCG@k and ILS@k of the plain search and of the assembled context, averaged over the judged queries."""
    rows: dict[str, dict[str, list[float]]] = {"search": {"ndcg": [], "ils": []}, "context": {"ndcg": [], "ils": []}}
    options.setdefault("candidates", max(k, 20))
    for qid, text in queries.items():
        judged = qrels.get(qid)
        if not judged:
            continue
        hits = stack.search(text, k=k).hits
        ctx = stack.context(text, budget_tokens, **options)
        in_prompt = [(h, p.doc_id) for p in ctx.passages for h in p.hits][:k]  # the retrieved chunks, in prompt order
        for name, ids, docs in (("search", [h.id for h in hits], [h.doc_id for h in hits]),
                                ("context", [i for i, _ in in_prompt], [d for _, d in in_prompt])):
            rows[name]["ndcg"].append(ndcg_at(docs, judged, k))
            ils = intra_list_similarity(stack.chunk_vectors(ids)) if len(ids) > 1 else None
            if ils is not None:
                rows[name]["ils"].append(ils)
    out: dict[str, Any] = {name: {f"ndcg@{k}": float(np.mean(v["ndcg"])) if v["ndcg"] else 0.0,
                                  f"ils@{k}": float(np.mean(v["ils"])) if v["ils"] else None}
                           for name, v in rows.items()}
    out["queries"] = len(rows["search"]["ndcg"])
    return out
