"""One checksum checker (`stagegraph.hashing.check_files`) for both kinds of manifest: an index's
(`stagegraph.indexes.manifest.read_manifest`) and a collection generation's (`Generation.load`).
A corrupted or missing file is refused by both, in the same words, each with its own fix."""

from __future__ import annotations

import re

import pytest

from stagegraph.collection.generation import REPAIR, Generation, corpus_of, write_manifest, write_tables
from stagegraph.collection.layout import CHUNKS_FILE, CollectionDamaged, DocumentEntry, GenerationManifest, Layout
from stagegraph.corpora.ingest import Chunk
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


def a_generation(tmp_path):
    layout = Layout(tmp_path / "collection")
    directory = layout.generation(1)
    directory.mkdir(parents=True)
    chunks = [Chunk(id=f"d{i}#0", doc_id=f"d{i}", index=0, start=0, end=9, title="", text=f"text of {i}") for i in range(3)]
    documents = [DocumentEntry(id=c.doc_id, title="", content_hash=c.doc_id, chunks=1) for c in chunks]
    files = write_tables(directory, documents, chunks)
    write_manifest(directory, GenerationManifest(generation=1, documents=3, chunks=3, files=files,
                                                 corpus_fingerprint=corpus_of(chunks).fingerprint))
    return layout, directory


def test_a_corrupted_file_is_refused_in_the_same_words_by_an_index_and_a_collection(tmp_path):
    index = an_index(tmp_path)
    layout, generation = a_generation(tmp_path)
    assert BM25Index.load(index) and Generation.load(layout, 1).number == 1  # intact: both load
    flip_a_byte(index / "data.npy")
    flip_a_byte(generation / CHUNKS_FILE)

    with pytest.raises(IndexLoadError) as from_index:
        BM25Index.load(index)
    with pytest.raises(CollectionDamaged) as from_collection:
        Generation.load(layout, 1)
    a = re.match(DAMAGED, str(from_index.value))
    b = re.match(DAMAGED, str(from_collection.value))
    assert a and b, (str(from_index.value), str(from_collection.value))
    assert (a["owner"], a["file"]) == (f"The index at {index}", "data.npy")
    assert a["fix"] == f"{REBUILD_HINT}."
    assert (b["owner"], b["file"], b["fix"]) == (f"generation 1 of the collection {layout.root}", CHUNKS_FILE, REPAIR)


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
