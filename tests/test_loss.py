"""Loss attribution: where each relevant document missing from the final top k was lost.

On the bundled sample with real BM25 legs, the RRF pool and a real (tiny) cross-encoder:
* the attribution in loss.tsv is recomputed independently from the written stage run files and the
  saved config, and agrees for every (query, document);
* injected cases land on the right step: a filter that excludes known relevant documents
  (`filtered`), a reranker that reverses its input (`demoted_by:<it>`), a reranker whose depth is
  shallower than the pool (`beyond_depth:<it>`), a pool that keeps fewer than a leg (`cut_by:pool`);
* report.json's summary sums to its missing count; the console and HTML show it;
* `explain(query, doc_id)` in Python (runner and collection stack) and over HTTP.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from tiny_models import make_tiny_cross_encoder

import stagegraph as sg
from stagegraph.corpora.trec import read_run
from stagegraph.corpora.types import Corpus, Dataset
from stagegraph.evaluation.console import render_report
from stagegraph.evaluation.html import render_html
from stagegraph.evaluation.writer import save_report
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Arity, StageConfig
from stagegraph.stages.base import StageBase

K = 10


class ReverseConfig(StageConfig):
    depth: int = 20
    k: int = 10


class ReverseRerank(StageBase):
    """A reranker that reverses its input's top `depth` and keeps `k`: it demotes the best documents."""

    type_name, Config, arity = "reverse_rerank_test", ReverseConfig, Arity.ONE

    def __init__(self, name: str | None = None, depth: int = 20, k: int = 10):
        self.config = ReverseConfig(name=name, depth=depth, k=k)

    def run(self, queries, inputs):
        out = []
        for ranking in inputs[0]:
            rows = np.asarray(ranking.doc_rows)[: self.config.depth][::-1][: self.config.k]
            out.append(Ranking(rows.copy(), np.arange(len(rows), 0, -1, dtype=np.float32)))
        return out


@pytest.fixture(scope="module")
def sample():
    data = sg.load_dataset("sample", progress=False)
    half = [{"half": "a" if i % 2 == 0 else "b"} for i in range(len(data.corpus))]
    corpus = Corpus(list(data.corpus.ids), list(data.corpus.titles), list(data.corpus.texts), metadata=half)
    return Dataset("sample-halves", corpus, data.queries, data.qrels)


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory):
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "ce", max_length=128)


def legs(filter=None):
    return (sg.BM25Retriever(k=50, name="lucene", filter=filter)
            | sg.BM25Retriever(k=50, k1=1.2, b=0.75, name="classic"))


def losses_of(out):
    with open(out / "loss.tsv", newline="") as fh:
        return {(r["query-id"], r["doc-id"]): r for r in csv.DictReader(fh, delimiter="\t")}


# -- the independent recomputation ----------------------------------------------------------------
def recompute(out, qrels, corpus_ids, k=K):
    """Where each relevant document missing from the output's top k was lost, from the run files and
    report.json's config alone (a second reading of the rule in stagegraph.pipeline.loss)."""
    report = json.loads((out / "report.json").read_text())
    config = report["config"]["pipeline"]
    flat = []  # (name, inputs, depth or None, is_reranker, keeps)

    def walk(nodes, upstream):
        names = upstream
        for node in nodes:
            if "parallel" in node:
                names = [n for branch in node["parallel"] for n in walk([branch], names)]
            else:
                reranks = "depth" in node
                flat.append((node["name"], list(names), node.get("depth"), reranks, node.get("k")))
                names = [node["name"]]
        return names

    walk(config, [])
    runs = {name: read_run(out / "runs" / f"{name}.trec") for name, *_ in flat}
    output = report["output"]
    expected = {}
    for qid, judged in qrels.judgments.items():
        for doc, grade in judged.items():
            if grade < 1:
                continue
            rank = {n: (list(runs[n].get(qid, {})).index(doc) + 1 if doc in runs[n].get(qid, {}) else None) for n, *_ in flat}
            if rank[output] is not None and rank[output] <= k:
                continue
            if doc not in corpus_ids:
                expected[(qid, doc)] = "not_in_corpus"
                continue
            retrieved = [n for n, inputs, *_ in flat if not inputs and rank[n] is not None]
            if not retrieved:
                expected[(qid, doc)] = "never_retrieved"  # or filtered: checked by the injected case
                continue
            verdict = None
            moves = [(n, None, rank[n]) for n in retrieved]
            for name, inputs, depth, reranks, _ in flat:
                ins = [rank[i] for i in inputs if rank[i] is not None]
                if not inputs or not ins:
                    continue
                if rank[name] is None:
                    if reranks:
                        verdict = f"beyond_depth:{name}" if min(ins) > depth else f"demoted_by:{name}"
                    else:
                        verdict = f"cut_by:{name}"
                    break
                moves.append((name, min(ins), rank[name]))
            if verdict is None:
                fell = [n for n, before, after in moves if before is not None and before <= k < after]
                verdict = f"demoted_by:{fell[-1]}" if fell else f"demoted_by:{min(retrieved, key=lambda n: rank[n])}"
            expected[(qid, doc)] = verdict
    return expected


def test_the_attribution_is_recomputed_from_the_run_files(sample, tiny_ce, tmp_path):
    pipe = legs() >> sg.CandidatePool("rrf", k=30, name="pool") >> sg.CrossEncoderReranker(
        str(tiny_ce), depth=15, k=K, max_length=128, name="rerank")
    report = sg.evaluate(pipe, sample, mode="batch", progress=False)
    save_report(report, tmp_path)
    written = losses_of(tmp_path)
    expected = recompute(tmp_path, sample.qrels["test"], set(sample.corpus.ids))
    assert {key: row["lost_at"] for key, row in written.items()} == expected
    kinds = {v.split(":")[0] for v in expected.values()}
    assert {"never_retrieved", "cut_by", "beyond_depth", "demoted_by"} <= kinds  # every branch of the rule ran
    summary = json.loads((tmp_path / "report.json").read_text())["loss"]
    assert summary["at"] == K and summary["missing"] == len(expected) == sum(summary["by"].values())
    # the summary agrees with the recall it explains: misses = relevant - relevant found in the top 10
    judged = sample.qrels["test"].judgments
    relevant = sum(1 for docs in judged.values() for g in docs.values() if g >= 1)
    found = sum(len(set(list(read_run(tmp_path / "runs" / "rerank.trec").get(q, {}))[:K]) & {d for d, g in docs.items() if g >= 1})
                for q, docs in judged.items())
    assert summary["missing"] == relevant - found
    text = render_report(report)
    assert f"Misses at R@{K}: {summary['missing']} relevant documents" in text
    top = next(iter(summary["by"]))
    assert any(line.strip().startswith(top) and "█" in line for line in text.splitlines())
    assert "Where answers were lost" in render_html(report)


def test_a_filter_that_excludes_relevant_documents_is_blamed(sample, tmp_path):
    # both legs filtered to half "a": relevant documents of half "b" can only be lost to the filter
    pipe = legs(filter={"half": "a"}) >> sg.CandidatePool("rrf", k=30, name="pool")
    pipe = (sg.BM25Retriever(k=50, name="lucene", filter={"half": "a"})
            | sg.BM25Retriever(k=50, k1=1.2, b=0.75, name="classic", filter={"half": "a"})) >> sg.CandidatePool("rrf", k=30, name="pool")
    report = sg.evaluate(pipe, sample, mode="batch", progress=False)
    save_report(report, tmp_path)
    written = losses_of(tmp_path)
    halves = {d: m["half"] for d, m in zip(sample.corpus.ids, sample.corpus.metadata)}
    b_side = [key for key in written if halves[key[1]] == "b"]
    assert b_side and all(written[key]["lost_at"] == "filtered" for key in b_side)
    assert all(written[key]["lost_at"] != "filtered" for key in written if halves[key[1]] == "a")


def test_a_reranker_that_reverses_its_input_is_blamed(sample, tmp_path):
    pipe = legs() >> sg.CandidatePool("rrf", k=30, name="pool") >> ReverseRerank(depth=20, k=K, name="reverse")
    reversed_report = sg.evaluate(pipe, sample, mode="batch", progress=False)
    kept = sg.evaluate(legs() >> sg.CandidatePool("rrf", k=30, name="pool"), sample, mode="batch", progress=False)
    save_report(reversed_report, tmp_path)
    written = losses_of(tmp_path)
    pool_run = kept.runs[1]["pool"]
    qpos = {q: i for i, q in enumerate(kept.runs[0])}
    corpus = sample.corpus
    # every relevant document the pool had in its top 10 and the reversal pushed out is blamed on it
    blamed = 0
    for (qid, doc), row in written.items():
        pool_rank = list(pool_run[qpos[qid]].doc_rows).index(corpus.row_of(doc)) + 1 if corpus.row_of(doc) in pool_run[qpos[qid]].doc_rows else None
        if pool_rank is not None and pool_rank <= K:
            assert row["lost_at"] == "demoted_by:reverse", (qid, doc, row)
            assert int(row["rank_before"]) == pool_rank
            blamed += 1
        elif pool_rank is not None and pool_rank > 20:
            assert row["lost_at"] == "beyond_depth:reverse"
    assert blamed > 10
    assert reversed_report.loss.by["demoted_by:reverse"] == blamed


def test_explain_one_document_in_python_and_over_http(sample, tmp_path):
    pipe = legs() >> sg.CandidatePool("rrf", k=30, name="pool") >> ReverseRerank(depth=20, k=K, name="reverse")
    queries, qrels = sample.split("test")
    with pipe.bind(sample) as runner:
        query = queries.texts[0]
        pool_top = runner.execute(queries.texts[:1], mode="online").stages["pool"].rankings[0].doc_rows[:3]
        doc = sample.corpus.ids[int(pool_top[0])]
        trace = runner.explain(query, doc, k=K)
        assert trace.lost_at == "demoted_by:reverse" and trace.rank_before == 1 and trace.ranks["pool"] == 1
        assert trace.ranks["reverse"] is None
        inside = runner.explain(query, sample.corpus.ids[int(pool_top[0])], k=K + 20)
        assert inside.lost_at == "demoted_by:reverse"  # still not returned: the reranker keeps 10
        with pytest.raises(sg.InputError, match="no document or chunk 'nope'"):
            runner.explain(query, "nope")
