"""stagegraph inside PyTerrier, LangChain, LlamaIndex and Haystack, and PyTerrier transformers inside
stagegraph, with the real libraries (each test skips, with the reason, where its library is missing;
CI installs the `test` extra, which holds them all). PyTerrier runs without starting Java."""

from __future__ import annotations

import math

import numpy as np
import pytest
from serve_support import BM25_ONLY, build_collection

import stagegraph as sg

QUERY = "protein cancer cell risk"
# pyterrier 1.1's own frames use an argument pandas 3.1 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.drop:Warning")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = build_collection(tmp_path_factory.mktemp("interop") / "c", BM25_ONLY)
    with sg.open(collection=root, watch=None) as opened:
        yield opened


@pytest.fixture(scope="module")
def sample():
    return sg.load_dataset("sample", progress=False)


@pytest.fixture(scope="module")
def runner(sample, tmp_path_factory):
    pipe = (sg.BM25Retriever(k=50, name="bm25") | sg.BM25Retriever(k=50, name="bm25_b", b=0.75)) \
        >> sg.CandidatePool("rrf", k=30, name="pool")
    with pipe.bind(sample, work_dir=tmp_path_factory.mktemp("work"), progress=False) as bound:
        yield bound


def check_provenance(metadata: dict, hit) -> None:
    assert metadata["id"] == hit.id and metadata["doc_id"] == hit.doc_id
    assert metadata["rank"] == hit.rank and metadata["score"] == pytest.approx(hit.score)
    assert metadata["stages"] == {n: {"rank": s.rank, "score": s.score} for n, s in hit.stages.items()}
    for key, value in hit.metadata.items():
        assert metadata[key] == value


# -- LangChain ------------------------------------------------------------------------------------
def test_langchain_retriever_returns_langchain_documents_with_metadata_and_provenance(stack):
    pytest.importorskip("langchain_core", reason="langchain-core is not installed (pip install \"stagegraph[langchain]\")")
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from stagegraph.interop.langchain import LangChainRetriever

    retriever = LangChainRetriever(stack=stack, k=5)
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke(QUERY)
    direct = stack.search(QUERY, k=5)
    assert [d.id for d in docs] == [h.id for h in direct.hits] and len(docs) == 5
    for doc, hit in zip(docs, direct.hits):
        assert isinstance(doc, Document) and doc.page_content == hit.text
        check_provenance(doc.metadata, hit)
        assert doc.metadata["generation"] == direct.generation and "bm25" in doc.metadata["stages"]
    filtered = LangChainRetriever(stack=stack, k=5, filter={"kind": "even"}).invoke(QUERY)
    assert filtered and all(d.metadata["kind"] == "even" for d in filtered)
    assert [[d.id for d in b] for b in retriever.batch_documents([QUERY, "heat flow"])] == \
        [[d.id for d in retriever.invoke(q)] for q in [QUERY, "heat flow"]]


def test_langchain_retriever_refuses_what_cannot_search():
    pytest.importorskip("langchain_core", reason="langchain-core is not installed")
    from stagegraph.interop.langchain import LangChainRetriever

    with pytest.raises(Exception, match="stagegraph.open"):
        LangChainRetriever(stack=object())


# -- LlamaIndex -----------------------------------------------------------------------------------
def test_llamaindex_retriever_returns_nodes_with_scores(stack):
    pytest.importorskip("llama_index.core", reason="llama-index-core is not installed (pip install \"stagegraph[llamaindex]\")")
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from stagegraph.interop.llamaindex import LlamaIndexRetriever

    retriever = LlamaIndexRetriever(stack, k=4)
    assert isinstance(retriever, BaseRetriever)
    nodes = retriever.retrieve(QUERY)
    direct = stack.search(QUERY, k=4)
    assert [n.node.node_id for n in nodes] == [h.id for h in direct.hits]
    for node, hit in zip(nodes, direct.hits):
        assert isinstance(node, NodeWithScore) and isinstance(node.node, TextNode)
        assert node.score == pytest.approx(hit.score) and node.node.text == hit.text
        check_provenance(node.node.metadata, hit)
        shown = node.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "stages" not in shown and f"kind: {hit.metadata['kind']}" in shown  # provenance hidden from the LLM


# -- Haystack -------------------------------------------------------------------------------------
def test_haystack_component_runs_alone_and_in_a_haystack_pipeline(stack):
    pytest.importorskip("haystack", reason="haystack-ai is not installed (pip install \"stagegraph[haystack]\")")
    from haystack import Document, Pipeline

    from stagegraph.interop.haystack import HaystackRetriever

    retriever = HaystackRetriever(stack, top_k=3)
    out = retriever.run(query=QUERY)
    direct = stack.search(QUERY, k=3)
    assert list(out) == ["documents"]
    for doc, hit in zip(out["documents"], direct.hits, strict=True):
        assert isinstance(doc, Document) and doc.id == hit.id and doc.content == hit.text
        assert doc.score == pytest.approx(hit.score)
        check_provenance(doc.meta, hit)
    pipe = Pipeline()
    pipe.add_component("retriever", retriever)
    ran = pipe.run({"retriever": {"query": QUERY, "top_k": 2, "filters": {"kind": "odd"}}})
    docs = ran["retriever"]["documents"]
    assert len(docs) == 2 and all(d.meta["kind"] == "odd" for d in docs)


# -- PyTerrier ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pt():
    return pytest.importorskip("pyterrier", reason="python-terrier is not installed (pip install \"stagegraph[pyterrier]\")")


def _java_started(pt) -> bool:
    java = getattr(pt, "java", None)
    return bool(java is not None and java.started())


def test_a_pipeline_as_a_pyterrier_transformer_gives_pyterriers_ranked_frame(pt, runner, sample):
    import pandas as pd

    from stagegraph.interop.pyterrier import StagegraphTransformer

    queries, _ = sample.split("test")
    frame = pd.DataFrame({"qid": queries.ids[:3], "query": queries.texts[:3]})
    transformer = StagegraphTransformer(runner, k=5, text=True, provenance=True)
    assert isinstance(transformer, pt.Transformer)
    out = transformer(frame)
    assert list(out.columns[:5]) == ["qid", "query", "docno", "score", "rank"]
    assert {"text", "bm25_rank", "bm25_score", "bm25_b_rank", "pool_score"} <= set(out.columns)
    for qid, text in zip(queries.ids[:3], queries.texts[:3]):
        mine = out[out["qid"] == qid]
        hits = runner.search(text, k=5).hits
        assert list(mine["docno"]) == [h.id for h in hits] and list(mine["rank"]) == list(range(len(hits)))
        assert np.allclose(mine["score"], [h.score for h in hits])
        for row, hit in zip(mine.itertuples(), hits):
            rank = hit.stages["bm25"].rank
            assert (math.isnan(row.bm25_rank) if rank is None else row.bm25_rank == rank)
    assert not _java_started(pt)


def test_pyterrier_experiment_scores_a_stagegraph_transformer_as_stagegraph_does(pt, runner, sample):
    import pandas as pd

    from stagegraph.interop.pyterrier import StagegraphTransformer

    queries, qrels = sample.split("test")
    topics = pd.DataFrame({"qid": queries.ids, "query": queries.texts})
    qrels_frame = pd.DataFrame([{"qid": q, "docno": d, "label": g} for q, docs in qrels.judgments.items() for d, g in docs.items()])
    table = pt.Experiment([StagegraphTransformer(runner, k=30)], topics, qrels_frame, eval_metrics=["ndcg_cut_10"], names=["sg"])
    # the run trec_eval sees is the runner's own; trec_eval orders tied scores by docno, stagegraph by rank,
    # so the figure is pytrec_eval's on the runner's run (stagegraph's own nDCG may differ where RRF scores tie)
    import pytrec_eval

    run = {q: {h.id: h.score for h in r.hits} for q, r in zip(queries.ids, runner.search_batch(queries.texts, k=30))}
    per_query = pytrec_eval.RelevanceEvaluator(qrels.judgments, {"ndcg_cut_10"}).evaluate(run)
    expected = sum(v["ndcg_cut_10"] for v in per_query.values()) / len(qrels.judgments)
    assert float(table["ndcg_cut_10"][0]) == pytest.approx(expected, abs=1e-6)
    assert not _java_started(pt)


def test_a_pyterrier_transformer_as_retriever_and_reranker_stages_with_their_latency(pt, sample, tmp_path):
    from stagegraph.interop.pyterrier import PyTerrierReranker, PyTerrierRetriever, StagegraphTransformer

    # a pure-Python PyTerrier retriever: the stagegraph BM25 of another pipeline, wrapped as PyTerrier's
    inner = sg.Pipeline(sg.BM25Retriever(k=40, name="inner")).bind(sample, work_dir=tmp_path, progress=False)
    retriever = PyTerrierRetriever(StagegraphTransformer(inner, k=40), k=40, name="pt_bm25")
    # a pure-Python PyTerrier reranker: longer documents first, ties by the upstream score
    reranker = PyTerrierReranker(pt.apply.doc_score(lambda row: len(row["text"]) + row["score"] / 1e3), k=5, name="pt_len")
    with (retriever >> reranker).bind(sample, work_dir=tmp_path, progress=False) as bound:
        queries, _ = sample.split("test")
        result = bound.search(queries.texts[0], k=5)
    direct = inner.search(queries.texts[0], k=40).hits
    lengths = {h.id: len(f"{h.title} {h.text}" if h.title and h.text else h.title or h.text) for h in direct}
    assert [h.id for h in result.hits] == sorted(lengths, key=lambda d: (-lengths[d], [h.id for h in direct].index(d)))[:5]
    hit = result.hits[0]
    assert set(hit.stages) == {"pt_bm25", "pt_len"} and hit.stages["pt_len"].rank == 1
    assert hit.stages["pt_bm25"].rank == [h.id for h in direct].index(hit.id) + 1
    assert {"pt_bm25", "pt_len"} <= set(result.timings_ms) and result.timings_ms["pt_len"] > 0  # in the funnel
    report = sg.evaluate(retriever >> reranker, sample, metrics=["recall@5"], progress=False, cache=None, warmup=0)
    assert set(report.stages) >= {"pt_bm25", "pt_len"} and report.stages["pt_len"].latency_ms is not None
    assert not _java_started(pt)


def test_a_pyterrier_stage_that_names_a_foreign_docno_is_a_clear_error(pt, sample, tmp_path):
    import pandas as pd

    from stagegraph.interop.pyterrier import PyTerrierRetriever

    foreign = pt.apply.generic(lambda q: pd.DataFrame({"qid": list(q["qid"]), "docno": ["nope"] * len(q), "score": 1.0}))
    with sg.Pipeline(PyTerrierRetriever(foreign, k=5)).bind(sample, work_dir=tmp_path, progress=False) as bound:
        with pytest.raises(sg.StageError, match="docno 'nope', which is not in this corpus"):
            bound.search("anything")
