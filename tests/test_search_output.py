"""`stagegraph search` output for people (full ids, snippets around the query's words, one row per
document) and for programs (`--json`, `--explain`), and `SearchResult.per_document`."""

from __future__ import annotations

import json

import pytest

import stagegraph as sg
from stagegraph.cli.app import main
from stagegraph.cli.search_view import query_words, snippet
from stagegraph.collection import Collection

BM25 = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 50}]}
LONG_ID = "reports/2026/quarterly-gpu-memory-planning-for-the-inference-cluster.md"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("c") / "c.sg"
    filler = " ".join(f"word{i}" for i in range(120))
    with Collection.create(root, BM25) as store:  # chunker: the default, so a long text makes several chunks
        store.upsert([
            {"id": LONG_ID, "text": (f"{filler} the quokka needs GPU memory. ") * 6},
            {"id": "short.md", "text": "a quokka and GPU memory, briefly."},
            {"id": "other.md", "text": "nothing of interest here at all."},
        ])
    return root


def test_per_document_keeps_the_best_chunks_of_each_document_and_their_ranks(root):
    with sg.open(BM25, collection=root, watch=None) as stack:
        result = stack.search("quokka GPU memory", k=20)
    assert len({h.doc_id for h in result.hits}) < len(result.hits)  # chunks of one document repeat
    folded = result.per_document(1)
    assert [h.doc_id for h in folded.hits] == list(dict.fromkeys(h.doc_id for h in result.hits))
    assert [h.rank for h in folded.hits] == [next(h.rank for h in result.hits if h.doc_id == d.doc_id) for d in folded.hits]
    assert len(result.per_document(2).hits) == sum(min(2, [h.doc_id for h in result.hits].count(d))
                                                   for d in dict.fromkeys(h.doc_id for h in result.hits))
    assert len(result.per_document(1, top=1).hits) == 1
    with pytest.raises(ValueError):
        result.per_document(0)


def test_the_table_shows_full_ids_one_row_per_document_and_a_snippet_around_the_query(root, capsys):
    assert main(["search", "bm25", "quokka", "--collection", str(root), "-q"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    doc_column = "".join(cells[2].strip() for cells in rows)  # folded over several lines, never cut
    assert LONG_ID in doc_column and "…" not in doc_column
    assert [cells[1].strip() for cells in rows if cells[1].strip()] == ["1", "2"]  # two documents match: one row each
    assert "quokka" in out


def test_a_snippet_starts_near_the_first_query_word():
    text = "x " * 200 + "the quokka needs GPU memory " + "y " * 200
    shown = snippet(text, query_words("quokka memory"), width=60)
    assert "quokka" in shown.plain and shown.plain.startswith("…") and shown.plain.endswith("…")
    assert len(shown.plain) <= 62
    assert len(shown.spans) == 2  # both words highlighted


def test_json_for_programs_and_explain_adds_the_stages(root, capsys):
    assert main(["search", "bm25", "quokka GPU", "--collection", str(root), "--json", "--top", "2", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [h["doc_id"] for h in data["hits"]] and len(data["hits"]) == 2
    assert "stages" not in data["hits"][0] and "timings_ms" not in data
    assert data["hits"][0]["id"].startswith(data["hits"][0]["doc_id"] + "#")
    assert main(["search", "bm25", "quokka GPU", "--collection", str(root), "--json", "--explain", "-q"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["hits"][0]["stages"]["bm25"]["rank"] == 1 and "bm25" in explained["timings_ms"]
    assert main(["search", "bm25", "quokka", "--collection", str(root), "--per-doc", "-1", "-q"]) == 2


def test_http_per_doc_folds_chunks_of_one_document_as_python_does(root):
    from fastapi.testclient import TestClient

    from stagegraph.serve.app import create_app
    from stagegraph.serve.service import Service
    from stagegraph.serve.settings import ServeSettings

    service = Service.open(BM25, root, ServeSettings(), pin_threads=False)
    try:
        with TestClient(create_app(service)) as client:
            every = client.post("/v1/search", json={"query": "quokka GPU memory", "k": 5}).json()["hits"]
            assert len({h["doc_id"] for h in every}) < len(every)  # chunks of the long document repeat
            one = client.post("/v1/search", json={"query": "quokka GPU memory", "k": 5, "per_doc": 1}).json()["hits"]
            expected = service.stack.search("quokka GPU memory", k=50).per_document(1).hits[:5]
            assert [(h["id"], h["rank"]) for h in one] == [(h.id, h.rank) for h in expected]
            assert len({h["doc_id"] for h in one}) == len(one) == 2
            batch = client.post("/v1/search/batch", json={"queries": ["quokka"], "k": 5, "per_doc": 2}).json()
            ids = [h["doc_id"] for h in batch["results"][0]["hits"]]
            assert max(ids.count(d) for d in ids) == 2
            assert client.post("/v1/search", json={"query": "quokka", "per_doc": 0}).status_code == 422
    finally:
        service.close()
