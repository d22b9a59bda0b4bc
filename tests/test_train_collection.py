"""`stagegraph train-reranker --collection DIR`: pseudo-queries from a collection's own documents,
the held-out check against the pool, and installing (or refusing to install) the model there."""

from __future__ import annotations

import json

import pytest
from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer

import stagegraph as sg
from stagegraph.cli.app import main
from stagegraph.collection.reranker_record import RECORD_FILE, read_installed
from stagegraph.training.heldout import DevReport
from stagegraph.training.pseudo import PseudoConfig, pseudo_queries, sentences

DOCS = {
    "heat.md": """# Heat transfer in wings

## Boundary layer heating

The boundary layer over a wing heats up as air speed rises. Shock waves raise the pressure and the
temperature behind them. Engineers model the heat flow with data from wind tunnel tests. The wall
temperature of the wing depends on the flow regime and on the surface material.

## Cooling methods

Active cooling pumps fluid through channels under the wing surface. Passive cooling relies on
materials that radiate heat away at high temperature. Both methods add weight to the aircraft
structure. The choice depends on flight time, speed and the maximum allowed wall temperature.
""",
    "cancer.md": """# Protein markers in cancer

## Gene expression in tumour cells

Cancer cells often express the protein at levels far above healthy tissue. The gene is regulated by
a promoter that responds to stress signals in the cell. Patients with high expression had a worse
outcome in the study. Blood tests can measure the protein before any treatment starts.

## Treatment response

Patients whose tumours lost the marker responded better to the new treatment. The risk of relapse
fell by half over five years of follow-up. Larger trials are needed to confirm the results in other
populations. Doctors may use the marker to choose a treatment for each patient.
""",
    "search.md": """# Dense and sparse retrieval

## Vector indexes

A dense retriever encodes every document into a vector with a neural model. The index returns the
nearest vectors to the encoded query by inner product. Exact search scans every vector while
approximate indexes trade recall for speed. Quantised vectors take less memory at some loss of quality.

## Rank fusion

Reciprocal rank fusion merges the rankings of several retrievers into one pool. Each document scores
the sum of one over sixty plus its rank in every list. The fused pool often beats both of its
inputs on standard benchmarks. A cross encoder can rerank the pool to put the best passages first.
""",
}
CONFIG_TEMPLATE = """pipeline:
  - {{type: bm25, name: bm25, k: 20}}
  - {{type: cross_encoder, name: rerank, model: {ce}, depth: 10, k: 5, max_length: 64}}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return str(make_tiny_sentence_transformer(root / "base")), str(make_tiny_cross_encoder(root / "ce", seed=3))


@pytest.fixture
def collection(tmp_path, models, monkeypatch):
    """A collection of three Markdown documents (two sections each), BM25 then a tiny cross-encoder."""
    monkeypatch.delenv("STAGEGRAPH_RERANKER", raising=False)
    _, ce = models
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    config = tmp_path / "graph.yaml"
    config.write_text(CONFIG_TEMPLATE.format(ce=ce), encoding="utf-8")
    root = tmp_path / "c.sg"
    assert main(["--quiet", "ingest", str(docs), "--collection", str(root), "--config", str(config)]) == 0
    return root, config


def _train(root, base, *extra):
    return main(["--quiet", "train-reranker", "--collection", str(root), "--base", base, "--layers", "1",
                 "--epochs", "1", "--negatives", "2", "--max-length", "48", "--dev-fraction", "0.4", *extra])


def _model(stack) -> str:
    return stack.runner.bound("rerank").stage.config.model


def test_pseudo_queries_come_from_headings_and_sentences_with_the_shortcut_masked(collection):
    root, _ = collection
    with sg.open(collection=root, watch=None) as stack:
        corpus = stack.collection.corpus
        ids, doc_ids, titles, texts, metadata = corpus.records(range(len(corpus)))
    assert len(ids) == 9  # per document: the title line, then one chunk per section
    pset = pseudo_queries(corpus, PseudoConfig(min_rest_words=10, seed=1))
    headings = {q.text: q.targets for q in pset.queries if q.kind == "heading"}
    sections = {m["section"]: [r] for r, m in enumerate(metadata) if " > " in titles[r]}
    assert len(sections) == 6
    documents = {t: sorted(r for r in range(9) if doc_ids[r] == doc_ids[t0] and " > " in titles[r])
                 for t0, t in enumerate(titles) if " > " not in t}
    # every section heading targets its section's chunk; every document title the document's chunks
    # (not the chunk that holds the title line alone)
    assert headings == {**sections, **documents}
    assert documents["Heat transfer in wings"] == sorted([ids.index("heat.md#1"), ids.index("heat.md#2")])
    for q in pset.queries:
        if q.kind == "heading":
            for row in q.targets:
                assert q.text not in pset.corpus.titles[row] and q.text not in pset.corpus.texts[row]
        else:
            (row,) = q.targets
            spans = [texts[row][s:e] for s, e in sentences(texts[row])]
            assert q.text in spans  # a whole sentence of the chunk it targets ...
            assert q.text not in pset.corpus.texts[row]  # ... cut out of it
            # the rest of the chunk is kept, less its "## heading" line (the section's own query masks that)
            rest = texts[row].replace(q.text, " ").replace("## " + metadata[row]["section"], " ")
            assert pset.corpus.texts[row].split() == rest.split()
    assert sum(q.kind == "sentence" for q in pset.queries) == 6  # one per chunk
    assert [q.text for q in pseudo_queries(corpus, PseudoConfig(min_rest_words=10, seed=1)).queries] == \
        [q.text for q in pset.queries]  # seeded: the same queries in the same order
    capped = pseudo_queries(corpus, PseudoConfig(min_rest_words=10, seed=1, max_queries=4))
    assert len(capped.queries) == 4 and capped.skipped["over --max-queries"] == 11
    only = pseudo_queries(corpus, PseudoConfig(kinds=("sentence",), min_rest_words=10))
    assert {q.kind for q in only.queries} == {"sentence"} and only.corpus.titles == titles


def test_useless_pseudo_queries_are_skipped():
    from stagegraph.corpora.types import Corpus

    body = "Cells express the protein in the tumour. Of the and a. It is."  # one usable sentence
    corpus = Corpus(["a#0", "b#0", "c#0"], ["Introduction", "A > Introduction", "Protein levels in tumour cells"],
                    [body, body, "Too short. Of the and a."], doc_ids=["a", "b", "c"],
                    metadata=[{"section": "Introduction"}, {"section": "Introduction"}, {}])
    pset = pseudo_queries(corpus, PseudoConfig(min_rest_words=0))
    texts = [q.text for q in pset.queries]
    assert "Introduction" not in texts  # a heading of stopwords only
    assert texts.count("Cells express the protein in the tumour.") == 1  # duplicates dropped
    assert "Protein levels in tumour cells" in texts
    assert pset.skipped["duplicate"] >= 1 and pset.skipped["chunk without a usable sentence"] == 1


def test_a_losing_check_refuses_to_install_and_exits_1(collection, models, monkeypatch, capsys):
    root, _ = collection
    base, ce = models
    monkeypatch.setattr(DevReport, "blend_beats_first_stage", property(lambda self: False))
    report = root.parent / "result.json"
    assert _train(root, base, "--json", str(report)) == 1
    out = capsys.readouterr().out
    assert "does NOT beat the pool" in out and "NOT installed" in out
    assert not (root / RECORD_FILE).exists() and read_installed(root) is None
    assert not list((root / "rerankers").glob("*"))  # no --out: the losing model is not kept
    result = json.loads(report.read_text())
    assert result["installed"] is False and result["held_out"]["queries"] >= 4
    assert set(result["held_out"]["pool_plus_reranker_crossfit"]) == {"ndcg@10", "mrr@10"}
    with sg.open(collection=root, watch=None) as stack:
        assert _model(stack) == ce  # the collection's reranker is unchanged
    kept = root.parent / "kept"
    assert _train(root, base, "--out", str(kept)) == 1
    assert (kept / "config.json").is_file() and not (root / RECORD_FILE).exists()  # --out keeps it, still not installed


def test_a_winning_check_installs_and_an_explicit_reranker_still_wins(collection, models, monkeypatch, capsys):
    root, config = collection
    base, ce = models
    monkeypatch.setattr(DevReport, "blend_beats_first_stage", property(lambda self: True))
    monkeypatch.setattr(DevReport, "crossfit_beats_first_stage", property(lambda self: True))
    assert _train(root, base) == 0
    assert "installed as the reranker of" in capsys.readouterr().out
    record = read_installed(root)
    installed = str((root / record.model).resolve())
    assert record.model.startswith("rerankers/") and record.stage["depth"] == 10 and "model" not in record.stage
    assert set(record.held_out) >= {"pool", "pool_plus_reranker", "queries"}
    with sg.open(collection=root, watch=None) as stack:  # the collection's own pipeline
        assert _model(stack) == installed
        assert stack.search("heat flow over a wing", k=3).hits
    with sg.open(config, collection=root, watch=None) as stack:  # a config with a cross-encoder: its model replaced
        assert _model(stack) == installed
    with sg.open(collection=root, watch=None, reranker=ce) as stack:  # an explicit choice wins
        assert _model(stack) == ce
    monkeypatch.setenv("STAGEGRAPH_RERANKER", ce)
    with sg.open(collection=root, watch=None) as stack:  # and so does the environment variable
        assert _model(stack) == ce
    monkeypatch.delenv("STAGEGRAPH_RERANKER")
    bm25 = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 5}]}
    with sg.open(bm25, collection=root, watch=None) as stack:  # a pool-only config stays pool-only
        assert [s.name for s in stack.pipeline.steps] == ["bm25"]
    assert main(["--quiet", "search", str(config), "boundary layer heating", "--collection", str(root), "--json",
                 "--explain"]) == 0


def test_a_collection_without_a_cross_encoder_gets_one_appended(tmp_path, models, monkeypatch):
    from stagegraph.collection.collection import Collection
    from stagegraph.training.collection import RERANK_STAGE, training_pipeline

    store = Collection.create(tmp_path / "c.sg", {"pipeline": [{"type": "bm25", "name": "bm25", "k": 20}]})
    try:
        graph, stage = training_pipeline(store)
    finally:
        store.close()
    assert [s.name for s in graph.steps] == ["bm25", "rerank"]
    assert stage["depth"] == 20 and stage["max_length"] == RERANK_STAGE["max_length"]  # never deeper than the pool


def test_bad_input_gives_one_clear_line(tmp_path, models, capsys):
    from stagegraph.collection.collection import Collection

    base, _ = models
    assert _train(tmp_path / "nowhere", base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a collection" in err[0]
    Collection.create(tmp_path / "empty.sg", {"pipeline": [{"type": "bm25", "name": "bm25", "k": 20}]}).close()
    assert _train(tmp_path / "empty.sg", base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no chunks" in err[0]
    (tmp_path / "sharded.sg").mkdir()
    (tmp_path / "sharded.sg" / "sharded.json").write_text("{}")
    assert _train(tmp_path / "sharded.sg", base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sharded collection" in err[0]
    assert main(["--quiet", "train-reranker", "--collection", str(tmp_path / "empty.sg"), "--kinds", "titles"]) == 2
    assert "--kinds takes heading, sentence" in capsys.readouterr().err


def test_a_gain_only_the_choice_of_blend_made_is_not_a_win():
    from types import SimpleNamespace

    from stagegraph.stages.rerank.blend import BlendSpec
    from stagegraph.training.collection import CollectionTraining

    def run(blended, crossfit):
        dev = DevReport(queries=10, depth=10, first_stage={"ndcg@10": 0.5, "mrr@10": 0.5},
                        reranked={"ndcg@10": 0.4, "mrr@10": 0.4}, blended={"ndcg@10": blended, "mrr@10": blended},
                        blend=BlendSpec(alpha=0.3, upstream="rank"),
                        blended_crossfit=None if crossfit is None else {"ndcg@10": crossfit, "mrr@10": crossfit})
        return CollectionTraining(SimpleNamespace(dev=dev), None, {}, "pool").beats_pool

    assert run(0.52, 0.51) is True
    assert run(0.52, 0.49) is False  # beats the pool only with the blend chosen on the same queries
    assert run(0.50, 0.55) is False  # the blend chosen there does not beat it
    assert run(0.52, None) is True  # too few held-out queries to cross-fit: the plain check
