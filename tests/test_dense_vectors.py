"""Bring your own vectors: JSONL records carry a precomputed embedding that the dense stage indexes.

The "precomputed" vectors are made in the test by the same tiny model the dense stage uses, so a
collection built from them must rank exactly as one whose stage encodes the documents itself.
"""

from __future__ import annotations

import json
import re
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from collection_support import QUERIES, rankings
from tiny_models import WORDS, make_tiny_sentence_transformer

import stagegraph as sg
from stagegraph.collection import Collection, CollectionError
from stagegraph.corpora.ingest import ChunkerConfig, RecordFields
from stagegraph.corpora.types import Corpus, DataError
from stagegraph.corpora.vectors import CorpusVectors
from stagegraph.errors import StageError
from stagegraph.indexes.encoder import Encoder
from stagegraph.pipeline.stage import Environment



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st"))


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "other-st", seed=1))


def hybrid(model: str) -> dict:
    return {"pipeline": [
        {"parallel": [{"type": "bm25", "name": "bm25", "k": 10},
                      {"type": "dense", "name": "dense", "k": 10, "model": model}]},
        {"type": "pool", "name": "pool", "k": 10},
    ]}


def records(n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"d{i:02d}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 40)))} for i in range(n)]


def with_vectors(recs: list[dict], model: str) -> list[dict]:
    """Each record with the embedding `model` makes of its text (the user's embedding service)."""
    vectors = Encoder(model, progress=False).encode([r["text"] for r in recs], progress=False)
    return [{**r, "embedding": v.tolist()} for r, v in zip(recs, vectors)]


def write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def write_config(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


@pytest.fixture
def encode_calls(monkeypatch) -> list[int]:
    """The number of texts each call of `Encoder.encode` (documents; queries use `encode_query`) was given."""
    calls: list[int] = []
    original = Encoder.encode

    def counting(self, texts, **kwargs):
        calls.append(len(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", counting)
    return calls


def test_precomputed_vectors_rank_exactly_as_encoding_and_no_document_is_encoded(tmp_path, tiny_model, encode_calls):
    from stagegraph.cli.app import main

    recs = records()
    mine = write_jsonl(tmp_path / "mine" / "docs.jsonl", with_vectors(recs, tiny_model))
    plain = write_jsonl(tmp_path / "plain" / "docs.jsonl", recs)
    config = write_config(tmp_path / "hybrid.yaml", hybrid(tiny_model))
    encode_calls.clear()
    assert main(["ingest", str(mine), "--collection", str(tmp_path / "byo"), "--config", config,
                 "--vector-field", "embedding", "--vector-model", tiny_model, "-q"]) == 0
    byo = rankings(tmp_path / "byo", hybrid(tiny_model))
    assert encode_calls == []  # neither the writer nor the reader encoded a document
    assert main(["ingest", str(plain), "--collection", str(tmp_path / "enc"), "--config", config,
                 "--chunker", "none", "-q"]) == 0
    assert sum(encode_calls) == len(recs)  # the counter sees encoding when it happens
    encoded = rankings(tmp_path / "enc", hybrid(tiny_model))
    for stage in ("dense", "bm25", "pool"):
        for q in QUERIES:
            assert [i for i, _ in byo[stage][q]] == [i for i, _ in encoded[stage][q]], (stage, q)
            np.testing.assert_allclose([s for _, s in byo[stage][q]], [s for _, s in encoded[stage][q]], rtol=0, atol=1e-6)
    with Collection.open(tmp_path / "byo") as c:
        assert c.settings.chunker.kind == "none"  # the default with a vector field
        assert "embedding" not in c.generation.document("d00").metadata  # the vector is not metadata


def test_a_dataset_given_vectors_ranks_as_one_encoded(tmp_path, tiny_model, encode_calls):
    recs = records(12, seed=3)
    corpus = Corpus([r["id"] for r in recs], [""] * len(recs), [r["text"] for r in recs])
    vectors = CorpusVectors.of(tiny_model, [r["embedding"] for r in with_vectors(recs, tiny_model)])
    stage = sg.DenseRetriever(k=5, model=tiny_model)
    queries = sg.Queries(["q"], ["cell protein gene"])
    encode_calls.clear()
    given = stage.bind(Environment(corpus, work_dir=tmp_path / "a", progress=False, vectors=vectors)).run(queries)[0]
    assert encode_calls == []
    encoded = stage.bind(Environment(corpus, work_dir=tmp_path / "b", progress=False)).run(queries)[0]
    assert list(given.doc_rows) == list(encoded.doc_rows)
    np.testing.assert_allclose(given.scores, encoded.scores, rtol=0, atol=1e-6)


def test_a_vector_of_another_width_is_refused_with_its_record_and_the_fix_works(tmp_path, tiny_model, capsys):
    from stagegraph.cli.app import main

    recs = with_vectors(records(8), tiny_model)
    config = write_config(tmp_path / "hybrid.yaml", hybrid(tiny_model))
    args = ["--collection", str(tmp_path / "c"), "--config", config, "--vector-field", "embedding",
            "--vector-model", tiny_model, "-q"]
    bad = [dict(r) for r in recs]
    bad[5]["embedding"] = bad[5]["embedding"][:16]  # one record cut short
    path = write_jsonl(tmp_path / "in" / "docs.jsonl", bad)
    assert main(["ingest", str(path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "document 'd05'" in err[0] and "docs.jsonl:6" in err[0]
    assert "16-dim vector" in err[0] and "have 32" in err[0] and f"write this record's vector with {tiny_model!r}" in err[0]
    narrow = [{**r, "embedding": r["embedding"][:16]} for r in recs]  # all of them, from a 16-dim model
    write_jsonl(path, narrow)
    assert main(["ingest", str(path), *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"record 'd0\d' \(and every other\)", err[0]) and "16-dim vector" in err[0] and "32-dim" in err[0]
    assert tiny_model in err[0] and "ingest again" in err[0]
    write_jsonl(path, recs)  # the fix: the vectors the model makes
    assert main(["ingest", str(path), *args]) == 0
    with Collection.open(tmp_path / "c") as c:
        assert c.generation.number == 1 and [p.vectors.array.shape for p in c.generation.corpus.parts] == [(8, 32)]


def test_a_model_other_than_the_vectors_is_refused_naming_both_and_the_fix_works(tmp_path, tiny_model, other_model, capsys):
    from stagegraph.cli.app import main

    path = write_jsonl(tmp_path / "in" / "docs.jsonl", with_vectors(records(8), tiny_model))
    args = [str(path), "--collection", str(tmp_path / "c"), "--vector-field", "embedding", "--vector-model", tiny_model, "-q"]
    wrong = write_config(tmp_path / "wrong.yaml", hybrid(other_model))
    assert main(["ingest", *args, "--config", wrong]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and other_model in err[0] and tiny_model in err[0]
    assert f"set the stage's model: to {tiny_model!r}" in err[0]
    right = write_config(tmp_path / "right.yaml", hybrid(tiny_model))
    assert main(["ingest", *args, "--config", right]) == 0
    with pytest.raises(StageError, match=f"uses model {other_model!r}, but the precomputed vectors were made by"):
        sg.open(hybrid(other_model), collection=tmp_path / "c")  # a reader with another pipeline: refused at bind
    assert rankings(tmp_path / "c", hybrid(tiny_model))["dense"][QUERIES[0]]


def test_an_updated_vector_changes_the_ranking_of_its_document(tmp_path, tiny_model):
    recs = with_vectors(records(), tiny_model)
    fields = RecordFields(vector="embedding", vector_model=tiny_model)
    sg.ingest([write_jsonl(tmp_path / "in" / "docs.jsonl", recs)], tmp_path / "c", pipeline=hybrid(tiny_model),
              records=fields, progress=False)
    before = rankings(tmp_path / "c", hybrid(tiny_model))["dense"][QUERIES[1]]
    last = before[-1][0].split("#")[0]
    query = Encoder(tiny_model, progress=False).encode_query(QUERIES[1])[0]
    changed = [{**r, "embedding": query.tolist()} if r["id"] == last else r for r in recs]  # same text, new vector
    report = sg.ingest([write_jsonl(tmp_path / "in" / "docs.jsonl", changed)], tmp_path / "c", progress=False)
    assert (report.updated, report.unchanged) == (1, len(recs) - 1)
    after = rankings(tmp_path / "c", hybrid(tiny_model))["dense"][QUERIES[1]]
    assert after[0][0] == f"{last}#0" and after[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [i for i, _ in after[1:]] == [i for i, _ in before[:-1] if i != f"{last}#0"][: len(after) - 1]


def test_no_mix_and_one_chunk_per_vector(tmp_path, tiny_model):
    recs = with_vectors(records(4), tiny_model)
    fields = RecordFields(vector="embedding", vector_model=tiny_model)
    coll = Collection.create(tmp_path / "c", hybrid(tiny_model), records=fields)
    with pytest.raises(CollectionError, match=r"document 'x' has no vector \(field 'embedding'\): every document"):
        coll.upsert([{"id": "x", "text": "cell protein"}])
    coll.upsert([{"id": r["id"], "text": r["text"], "vector": r["embedding"]} for r in recs])
    assert [p.vectors.array.shape for p in coll.generation.corpus.parts] == [(4, 32)]
    plain = Collection.create(tmp_path / "p", hybrid(tiny_model))
    with pytest.raises(CollectionError, match="carries a vector, but the collection .* was created without a vector field"):
        plain.upsert([{"id": "x", "text": "cell", "vector": recs[0]["embedding"]}])
    small = Collection.create(tmp_path / "s", hybrid(tiny_model), records=fields,
                              chunker=ChunkerConfig(max_tokens=8, overlap_tokens=0))
    long = {"id": "long", "text": " ".join(WORDS), "vector": recs[0]["embedding"]}
    with pytest.raises(CollectionError, match=r"carries one vector but its text makes \d+ chunks.*--chunker none"):
        small.upsert([long])
    with pytest.raises(ValueError, match="give both"):
        RecordFields(vector="embedding")
    broken = write_jsonl(tmp_path / "in" / "docs.jsonl", [recs[0], {**recs[1], "embedding": [0.1, "x"]}])
    with pytest.raises(DataError, match=r"docs.jsonl:2: record 'd01': the vector field 'embedding' holds str 'x'"):
        sg.ingest([broken], tmp_path / "b", pipeline=hybrid(tiny_model), records=fields, progress=False)
    for c in (coll, plain, small):
        c.close()


def test_http_writes_carry_vectors_and_a_missing_one_is_a_422(tmp_path, tiny_model):
    from fastapi.testclient import TestClient

    from stagegraph.serve.app import create_app
    from stagegraph.serve.service import Service
    from stagegraph.serve.settings import ServeSettings

    fields = RecordFields(vector="embedding", vector_model=tiny_model)
    sg.ingest([write_jsonl(tmp_path / "in" / "docs.jsonl", with_vectors(records(), tiny_model))], tmp_path / "c",
              pipeline=hybrid(tiny_model), records=fields, progress=False)
    service = Service.open(hybrid(tiny_model), tmp_path / "c", ServeSettings(watch_s=0), pin_threads=False)
    try:
        with TestClient(create_app(service)) as client:
            query = Encoder(tiny_model, progress=False).encode_query(QUERIES[1])[0].tolist()
            put = client.put("/v1/documents?wait=true", json={"documents": [{"id": "new", "text": "cell", "vector": query}]})
            assert put.status_code == 200 and put.json()["added"] == 1
            dense = service.stack.runner.bound("dense").run(sg.Queries.single(QUERIES[1]), [])[0]
            assert service.stack.runner.corpus.ids[int(dense.doc_rows[0])] == "new#0"  # its vector is the query's
            missing = client.put("/v1/documents", json={"documents": [{"id": "bare", "text": "cell"}]})
            assert missing.status_code == 422 and "has no vector" in missing.json()["error"]["message"]
    finally:
        service.close()
