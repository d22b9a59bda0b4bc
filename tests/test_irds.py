"""`irds:<id>` datasets through ir_datasets itself: its registry, its BEIR-format readers and its
download, on a dataset registered here over local files (no network), as ir_datasets registers its own."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

ir_datasets = pytest.importorskip("ir_datasets", reason="ir_datasets is not installed (pip install ir_datasets)")

from ir_datasets.datasets.base import Dataset as IrdsDataset  # noqa: E402
from ir_datasets.datasets.beir import BeirDocs, BeirQrels, BeirQueries, BeirTitleDoc  # noqa: E402
from ir_datasets.formats import GenericQuery  # noqa: E402
from ir_datasets.util import LocalDownload, RequestsDownload  # noqa: E402

import stagegraph as sg  # noqa: E402
from stagegraph.corpora.irds import split_of  # noqa: E402
from stagegraph.corpora.types import DataError  # noqa: E402

DOCS = [
    {"_id": "d1", "title": "Heat flow", "text": "heat flow in a boundary layer"},
    {"_id": "d2", "title": "Shock", "text": "a shock wave in air at speed"},
    {"_id": "d3", "title": "", "text": "cancer cells and gene treatment"},
    {"_id": "d4", "title": "Retrieval", "text": "dense and sparse retrieval with fusion"},
]
QUERIES = [{"_id": "q1", "text": "boundary layer heat"}, {"_id": "q2", "text": "shock wave"},
           {"_id": "q3", "text": "gene treatment of cancer"}]
TEST = [("q1", "d1", 2), ("q2", "d2", 1), ("q2", "d3", 0)]
TRAIN = [("q3", "d3", 1)]


def _write(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    for split, rows in (("test", TEST), ("train", TRAIN)):
        (root / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in rows))


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A BEIR-shaped corpus registered in ir_datasets' own registry, as ir_datasets/datasets/beir.py
    registers scifact: the corpus id with documents and queries, one sub-id per split with qrels."""
    files = tmp_path_factory.mktemp("irds-files")
    _write(files)
    name = f"sgtest-{uuid.uuid4().hex[:8]}/tiny"
    docs = BeirDocs(name, LocalDownload(files / "corpus.jsonl"), BeirTitleDoc)
    queries = BeirQueries(name, LocalDownload(files / "queries.jsonl"), GenericQuery)
    ir_datasets.registry.register(name, IrdsDataset(docs, queries))
    for split in ("test", "train"):
        ir_datasets.registry.register(f"{name}/{split}", IrdsDataset(docs, queries, BeirQrels(LocalDownload(files / f"{split}.tsv"), {})))
    return name


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds-home"))  # ir_datasets' own cache, per test


def test_an_id_with_a_split_loads_that_split(registered):
    dataset = sg.load_dataset(f"irds:{registered}/test")
    assert dataset.name == f"irds:{registered}"
    assert dataset.splits == ["test"]
    assert dataset.corpus.ids == ["d1", "d2", "d3", "d4"]
    assert dataset.corpus.titles[0] == "Heat flow" and dataset.corpus.texts[1] == "a shock wave in air at speed"
    queries, qrels = dataset.split("test")
    assert queries.ids == ["q1", "q2"] and queries.texts == ["boundary layer heat", "shock wave"]
    assert qrels.judgments == {"q1": {"d1": 2}, "q2": {"d2": 1}}  # grade 0 left out, as trec_eval does


def test_the_corpus_id_gathers_its_registered_splits(registered):
    dataset = sg.load_dataset(f"irds:{registered}")
    assert dataset.splits == ["test", "train"]
    assert dataset.split("train")[1].judgments == {"q3": {"d3": 1}}
    assert split_of(f"{registered}/train") == (registered, "train")


def test_an_irds_dataset_evaluates_like_any_other(registered):
    report = sg.evaluate(sg.BM25Retriever(k=4), sg.load_dataset(f"irds:{registered}/test"), metrics=["ndcg@3"],
                         progress=False, cache=None)
    assert report.dataset == f"irds:{registered}" and report.split == "test"
    assert report.stages["bm25"].metrics["ndcg@3"] > 0.9


def test_the_command_line_takes_an_irds_id(registered):
    from stagegraph.cli.app import load_dataset
    import argparse

    dataset = load_dataset(argparse.Namespace(dataset=f"irds:{registered}/train", quiet=True, download=False))
    assert dataset.splits == ["train"]


def test_an_unknown_id_says_where_the_ids_are():
    with pytest.raises(DataError, match=r"irds:no/such-thing: no such ir_datasets id; the ids are listed at https://ir-datasets.com"):
        sg.load_dataset("irds:no/such-thing")


def test_an_unreachable_download_is_one_line_naming_the_dataset_and_the_fix(tmp_path):
    name = f"sgtest-{uuid.uuid4().hex[:8]}/offline"
    docs = BeirDocs(name, RequestsDownload("http://127.0.0.1:9/corpus.jsonl", tries=1), BeirTitleDoc)
    queries = BeirQueries(name, RequestsDownload("http://127.0.0.1:9/queries.jsonl", tries=1), GenericQuery)
    ir_datasets.registry.register(f"{name}/test", IrdsDataset(
        docs, queries, BeirQrels(RequestsDownload("http://127.0.0.1:9/test.tsv", tries=1), {})))
    with pytest.raises(DataError) as caught:
        sg.load_dataset(f"irds:{name}/test")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"irds:{name}/test: ir_datasets could not read it (")
    assert "connect to the network once and retry" in message and "$IR_DATASETS_HOME" in message
