"""CandidatePool against ranx's `fuse` on random runs.

The runs have no tied scores (ranx keeps input order on ties, we break them by row), and every
score is compared per document, not by position. ranx's `max` gives an absent document -1e9, which is
our `skip` policy; its min-max maps a constant list to 0 (ours to 1), which random runs never hit.
ranx JIT-compiles with numba on first use, so this module is marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest

from stagegraph.corpora.types import Queries
from stagegraph.pipeline.ranking import Ranking
from stagegraph.stages.fusion.pool import CandidatePool

ranx = pytest.importorskip("ranx")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:unsafe cast")]

N_QUERIES = 6


def _random_branches(seed: int, scale: float, shift: float) -> list[Ranking]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_QUERIES):
        n = int(rng.integers(2, 40))  # ranx maps a one-document list to 0 under min-max, we to 1
        rows = rng.choice(80, size=n, replace=False)
        scores = rng.permutation(np.linspace(0.0, 1.0, n) * scale + shift + rng.random() * 0.01)
        out.append(Ranking.from_scores(rows, scores.astype(np.float32)))
    return out


BRANCHES = [_random_branches(1, 25.0, 2.0), _random_branches(2, 1.6, -0.8), _random_branches(3, 3.0, 0.0)]
QUERIES = Queries([f"q{i}" for i in range(N_QUERIES)], ["text"] * N_QUERIES)


def _to_ranx(branch: list[Ranking], name: str):
    run = {
        qid: {f"d{row}": float(score) for row, score in zip(r.doc_rows.tolist(), r.scores.tolist())}
        for qid, r in zip(QUERIES.ids, branch)
    }
    return ranx.Run(run, name=name)


def _ours(pool: CandidatePool) -> dict[str, dict[str, float]]:
    fused = pool.run(QUERIES, BRANCHES)
    return {
        qid: {f"d{row}": score for row, score in zip(r.doc_rows.tolist(), r.scores.tolist())}
        for qid, r in zip(QUERIES.ids, fused)
    }


CASES = [
    ("rrf", None, {"method": "rrf"}, {}),
    ("sum", "min-max", {"method": "combsum"}, {}),
    ("sum", "zmuv", {"method": "combsum", "normalization": "zscore"}, {}),
    ("sum", "rank", {"method": "combsum", "normalization": "rank"}, {}),
    ("sum", None, {"method": "combsum", "normalization": "none"}, {}),
    ("mnz", "min-max", {"method": "combmnz"}, {}),
    ("wsum", "min-max", {"method": "wsum", "weights": [0.5, 0.2, 0.3]}, {"weights": [0.5, 0.2, 0.3]}),
    ("max", "zmuv", {"method": "max", "normalization": "zscore", "missing": "skip"}, {}),
]


@pytest.mark.parametrize(("ranx_method", "ranx_norm", "ours", "params"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_matches_ranx(ranx_method, ranx_norm, ours, params):
    runs = [_to_ranx(b, f"run{i}") for i, b in enumerate(BRANCHES)]
    expected = ranx.fuse(runs, norm=ranx_norm, method=ranx_method, params=params).to_dict()
    got = _ours(CandidatePool(k=1000, **ours))
    assert got.keys() == expected.keys()
    for qid in expected:
        assert got[qid].keys() == expected[qid].keys(), qid
        docs = sorted(expected[qid])
        np.testing.assert_allclose(
            [got[qid][d] for d in docs], [expected[qid][d] for d in docs], rtol=2e-5, atol=1e-6, err_msg=qid
        )
