"""One checksum checker (`stagegraph.hashing.check_files`) for both kinds of manifest: an index's
(`stagegraph.indexes.manifest.read_manifest`) and a collection generation's (`Generation.load`).
A corrupted or missing file is refused by both, in the same words, each with its own fix."""

from __future__ import annotations

import re

import pytest

from stagegraph.collection import Collection
from stagegraph.collection.generation import REPAIR, Generation
from stagegraph.collection.layout import CollectionDamaged, Layout
from stagegraph.corpora.types import Corpus
from stagegraph.hashing import check_files, sha256_file
from stagegraph.indexes.bm25 import REBUILD_HINT, BM25Index
from stagegraph.indexes.manifest import IndexLoadError

DAMAGED = r"^(?P<owner>.+): the file (?P<file>\S+) is damaged \(checksum mismatch\); (?P<fix>.+)$"
MISSING = r"^(?P<owner>.+): the file (?P<file>\S+) is missing; (?P<fix>.+)$"


def flip_a_byte(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def an_index(tmp_path):
    corpus = Corpus(["a", "b", "c"], ["", "", ""], ["heat flow", "wing pressure", "heat transfer in a wing"])
    directory = tmp_path / "index"
    BM25Index.build(corpus).save(directory)
    return directory


CHUNKS_FILE = "chunks.arrow"


def a_generation(tmp_path):
    """A collection's generation 1: one segment; returns the layout and the segment's directory."""
    with Collection.create(tmp_path / "collection", {"pipeline": [{"type": "bm25", "name": "bm25"}]}) as c:
        c.upsert([{"id": f"d{i}", "text": f"text of {i}"} for i in range(3)])
    layout = Layout(tmp_path / "collection")
    return layout, layout.segment("g00000001")


def test_a_corrupted_file_is_refused_in_the_same_words_by_an_index_and_a_collection(tmp_path):
    index = an_index(tmp_path)
    layout, generation = a_generation(tmp_path)
    assert BM25Index.load(index) and Generation.load(layout, 1, verify=True).number == 1  # intact: both load
    flip_a_byte(index / "data.npy")
    flip_a_byte(generation / CHUNKS_FILE)

    with pytest.raises(IndexLoadError) as from_index:
        BM25Index.load(index)
    with pytest.raises(CollectionDamaged) as from_collection:
        Generation.load(layout, 1, verify=True)  # what repair does; opening checks sizes only
    a = re.match(DAMAGED, str(from_index.value))
    b = re.match(DAMAGED, str(from_collection.value))
    assert a and b, (str(from_index.value), str(from_collection.value))
    assert (a["owner"], a["file"]) == (f"The index at {index}", "data.npy")
    assert a["fix"] == f"{REBUILD_HINT}."
    assert (b["owner"], b["file"], b["fix"]) == (f"generation 1 of the collection {layout.root}, segment g00000001",
                                                 CHUNKS_FILE, REPAIR)


def test_a_missing_file_is_refused_in_the_same_words_by_both(tmp_path):
    index = an_index(tmp_path)
    layout, generation = a_generation(tmp_path)
    (index / "data.npy").unlink()
    (generation / CHUNKS_FILE).unlink()
    with pytest.raises(IndexLoadError) as from_index:
        BM25Index.load(index)
    with pytest.raises(CollectionDamaged) as from_collection:
        Generation.load(layout, 1)
    assert re.match(MISSING, str(from_index.value))["file"] == "data.npy"
    assert re.match(MISSING, str(from_collection.value))["file"] == CHUNKS_FILE


def test_check_files_reports_the_first_bad_file_and_skips_contents_when_asked(tmp_path):
    (tmp_path / "a").write_text("one")
    (tmp_path / "b").write_text("two")
    files = {"a": sha256_file(tmp_path / "a"), "b": sha256_file(tmp_path / "b")}
    assert check_files(tmp_path, files, owner="X", fix="fix it") is None
    (tmp_path / "b").write_text("changed")
    assert check_files(tmp_path, files, owner="X", fix="fix it") == "X: the file b is damaged (checksum mismatch); fix it"
    assert check_files(tmp_path, files, owner="X", fix="fix it", checksums=False) is None  # present is enough
    (tmp_path / "a").unlink()
    assert check_files(tmp_path, files, owner="X", fix="fix it", checksums=False) == "X: the file a is missing; fix it"
