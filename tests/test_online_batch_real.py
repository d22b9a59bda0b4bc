"""Online equals batch for the real graph: BM25 top-100 | MiniLM dense top-100 -> RRF pool of 100.

On the bundled sample (all 346 queries, both splits), the pipeline is executed once one query at a
time (`mode="online"`) and once as one batch (`mode="batch"`), without the stage cache, and every
stage's rankings are compared query by query: the same rows in the same order, the same scores to
1e-6, exact ties included (within equal scores the rows ascend, the `Ranking` contract, in both
modes; BM25 and the RRF pool have thousands of such ties on the sample, so the rule is exercised).

Every stage is identical, rows and scores. (This test found that it was not: batch mode encoded the
queries in padded batches and searched FAISS with all vectors at once, which moved a score by up to
~4e-7 and flipped exact ties, e.g. the sample's q099, rows 39 and 177; the dense stage now encodes
and searches each query the same way in both modes.)

The sample's embeddings and indexes live in `$STAGEGRAPH_HOME` (default: the repository's
`.stagegraph`, as `tests/test_dense_retriever.py` and the demo use), so they are built once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import stagegraph as sg

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("STAGEGRAPH_HOME") or REPO / ".stagegraph")
STAGES = ("bm25", "dense", "pool")
SCORE_ATOL = 1e-6


@pytest.fixture(scope="module")
def runs():
    dataset = sg.load_dataset("sample", progress=False)
    env = sg.Environment(dataset.corpus, work_dir=WORK, progress=False)
    pipe = (sg.BM25Retriever(k=100, name="bm25") | sg.DenseRetriever(k=100, name="dense")) >> sg.CandidatePool(
        "rrf", k=100, name="pool")
    online = pipe.execute(dataset.queries, env=env, mode="online")
    batch = pipe.execute(dataset.queries, env=env, mode="batch")
    return dataset.queries, online, batch


def test_both_modes_rank_every_query_in_every_stage(runs):
    queries, online, batch = runs
    assert (online.mode, batch.mode) == ("online", "batch")
    for result in (online, batch):
        assert list(result.stages) == list(STAGES)
        for name in STAGES:
            stage = result.stages[name]
            assert not stage.cache_hit
            assert len(stage.rankings) == len(queries) == 346
            sizes = {len(r) for r in stage.rankings}
            if name == "bm25":  # what shares a term with the query: at least one document here
                assert min(sizes) >= 1 and max(sizes) == 100, sizes
            else:  # dense and the pool fill every top 100
                assert sizes == {100}, (name, sizes)


@pytest.mark.parametrize("name", STAGES)
@pytest.mark.parametrize("mode", ["online", "batch"])
def test_ties_are_ordered_by_row_in_both_modes(runs, name, mode):
    _, online, batch = runs
    rankings = (online if mode == "online" else batch).stages[name].rankings
    ties = 0
    for ranking in rankings:
        scores, rows = ranking.scores, ranking.doc_rows
        assert np.all(np.diff(scores) <= 0), "scores must not increase down a ranking"
        equal = np.diff(scores) == 0
        assert np.all(np.diff(rows)[equal] > 0), "tied documents must ascend by row"
        ties += int(equal.sum())
    if name != "dense":  # RRF and BM25 scores tie constantly; cosine scores rarely do
        assert ties > 1000, (name, ties)


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_is_identical_in_both_modes(runs, name):
    queries, online, batch = runs
    for qid, a, b in zip(queries.ids, online.stages[name].rankings, batch.stages[name].rankings):
        assert np.array_equal(a.doc_rows, b.doc_rows), (name, qid)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=SCORE_ATOL, err_msg=f"{name} {qid}")
