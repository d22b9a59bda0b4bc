"""Every document records its source; `ingest --sync` deletes only documents of the folders it reads.

Documents written through the Python API or over HTTP, and documents of another folder, survive a
sync; the same folder named three ways (relative, absolute, through a link) is one source; a
collection written before sources were recorded still opens, its documents of source `unknown`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stagegraph.cli.app import main
from stagegraph.collection import Collection, CollectionError, ingest
from stagegraph.collection.sources import path_source
from stagegraph.hashing import sha256_file

BM25_ONLY = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 100}]}


def quiet(line: str) -> None:
    pass


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def sources_of(coll: Path) -> dict[str, str]:
    with Collection.open(coll) as c:
        return {d.id: d.source for d in c.generation.documents()}


def test_sync_removes_a_deleted_file_and_keeps_python_and_http_documents(tmp_path, capsys):
    from stagegraph.serve.app import create_app
    from stagegraph.serve.service import Service
    from stagegraph.serve.settings import ServeSettings

    notes = write(tmp_path / "notes", {"a.md": "alpha heat flow", "b.md": "beta shock wave"})
    coll = tmp_path / "coll"
    assert main(["ingest", str(notes), "--collection", str(coll), "--config", "bm25", "-q"]) == 0
    with Collection.open(coll) as c:
        c.upsert([{"id": "from-python", "text": "gamma written through the API"}])
        c.upsert([{"id": "from-crawler", "text": "delta fetched by a crawler"}], source="crawler")
    svc = Service.open(BM25_ONLY, coll, pin_threads=False, settings=ServeSettings())
    try:
        with TestClient(create_app(svc)) as client:
            r = client.put("/v1/documents?wait=true", json={"documents": [{"id": "from-http", "text": "epsilon over HTTP"}]})
            assert r.status_code == 200 and r.json()["added"] == 1, r.text
    finally:
        svc.close()
    (notes / "b.md").unlink()
    capsys.readouterr()
    assert main(["ingest", str(notes), "--collection", str(coll), "--sync"]) == 0
    out = capsys.readouterr().out
    assert "sync left 3 documents of other sources alone (crawler 1, http 1, python 1)" in out
    assert "1 deleted" in out
    folder = path_source(notes).key
    assert sources_of(coll) == {"a.md": folder, "from-python": "python", "from-crawler": "crawler", "from-http": "http"}
    # where a user looks: `stagegraph collection info` counts the documents of each source
    assert main(["collection", "info", str(coll)]) == 0
    out = capsys.readouterr().out
    for line in (f"source {notes.resolve()}: 1 documents", "source python: 1 documents", "source http: 1 documents",
                 "source crawler: 1 documents"):
        assert line in out
    assert main(["collection", "info", str(coll), "--json"]) == 0
    rows = {r["label"]: (r["source"], r["documents"]) for r in json.loads(capsys.readouterr().out)["sources"]}
    assert rows[str(notes.resolve())] == (folder, 1) and rows["http"] == ("http", 1)
    # -q silences the line, as every other line of the report
    (notes / "a.md").write_text("alpha heat flow, changed")
    assert main(["ingest", str(notes), "--collection", str(coll), "--sync", "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_syncing_one_folder_never_deletes_another_folders_documents(tmp_path):
    a = write(tmp_path / "a", {"a1.md": "alpha one", "a2.md": "alpha two"})
    b = write(tmp_path / "b", {"b1.md": "beta one", "b2.md": "beta two"})
    coll = tmp_path / "coll"
    ingest([a], coll, pipeline=BM25_ONLY, progress=False, warn=quiet)
    ingest([b], coll, progress=False, warn=quiet)
    (a / "a2.md").unlink()
    (b / "b2.md").unlink()
    report = ingest([a], coll, sync=True, progress=False, warn=quiet)
    assert report.deleted == 1 and report.left_alone == {str(b.resolve()): 2}
    assert sorted(sources_of(coll)) == ["a1.md", "b1.md", "b2.md"]  # b2.md goes only when b is synced
    report = ingest([b], coll, sync=True, progress=False, warn=quiet)
    assert report.deleted == 1 and sources_of(coll) == {"a1.md": path_source(a).key, "b1.md": path_source(b).key}
    # both at once: each path is its own source, and syncing both removes what is gone from either
    (a / "a1.md").unlink()
    write(b, {"b3.md": "beta three"})
    report = ingest([a, b], coll, sync=True, progress=False, warn=quiet)
    assert (report.added, report.deleted, report.left_alone) == (1, 1, {})
    assert sources_of(coll) == {"b1.md": path_source(b).key, "b3.md": path_source(b).key}


def test_the_same_folder_relative_absolute_or_through_a_link_is_one_source(tmp_path, monkeypatch):
    notes = write(tmp_path / "notes", {"a.md": "alpha", "b.md": "beta", "c.md": "gamma"})
    (tmp_path / "link").symlink_to(notes, target_is_directory=True)
    coll = tmp_path / "coll"
    ingest([notes.resolve()], coll, pipeline=BM25_ONLY, progress=False, warn=quiet)
    monkeypatch.chdir(tmp_path)
    (notes / "a.md").unlink()
    report = ingest(["notes"], coll, sync=True, progress=False, warn=quiet)
    assert (report.deleted, report.moved, report.unchanged, report.left_alone) == (1, 0, 2, {})
    (notes / "b.md").unlink()
    report = ingest(["link"], coll, sync=True, progress=False, warn=quiet)
    assert (report.deleted, report.moved, report.unchanged, report.left_alone) == (1, 0, 1, {})
    with Collection.open(coll) as c:
        assert c.sources() == [{"source": path_source(notes).key, "label": str(notes.resolve()), "documents": 1}]


def test_a_document_read_from_another_folder_takes_that_folders_source(tmp_path):
    a = write(tmp_path / "a", {"x.md": "the same text", "a.md": "alpha"})
    b = write(tmp_path / "b", {"x.md": "the same text"})
    coll = tmp_path / "coll"
    ingest([a], coll, pipeline=BM25_ONLY, progress=False, warn=quiet)
    report = ingest([b], coll, progress=False, warn=quiet)
    assert (report.published, report.moved, report.new_chunks) == (True, 1, 0)  # a new record, no chunk redone
    assert "1 moved here from another source" in report.lines()[1]
    (a / "x.md").unlink()
    report = ingest([a], coll, sync=True, progress=False, warn=quiet)
    assert report.deleted == 0 and sources_of(coll) == {"a.md": path_source(a).key, "x.md": path_source(b).key}
    with Collection.open(coll) as c:  # and from there to the Python API: a sync of b keeps it too
        c.upsert([{"id": "x.md", "title": "x", "text": "the same text", "metadata": {}}])
    (b / "x.md").unlink()
    report = ingest([b], coll, sync=True, progress=False, warn=quiet)
    assert report.deleted == 0 and sources_of(coll)["x.md"] == "python"


def test_an_id_under_two_paths_is_kept_from_the_first(tmp_path):
    a = write(tmp_path / "a", {"readme.md": "alpha readme"})
    b = write(tmp_path / "b", {"readme.md": "beta readme", "b.md": "beta"})
    warnings: list[str] = []
    report = ingest([a, b], tmp_path / "coll", pipeline=BM25_ONLY, progress=False, warn=warnings.append)
    assert warnings == [f"skipped {b / 'readme.md'}: duplicate document id 'readme.md' (first from {a / 'readme.md'})"]
    assert report.documents_read == 2 and len(report.skipped) == 1
    assert sources_of(tmp_path / "coll") == {"readme.md": path_source(a).key, "b.md": path_source(b).key}


def test_a_path_inside_another_is_refused_and_giving_only_the_outer_one_works(tmp_path):
    notes = write(tmp_path / "notes", {"a.md": "alpha"})
    write(notes / "guides", {"g.md": "guide"})
    coll = tmp_path / "coll"
    with pytest.raises(CollectionError, match=r"guides is inside .*notes, also given; .* give only .*notes, which holds it"):
        ingest([notes, notes / "guides"], coll, pipeline=BM25_ONLY, progress=False, warn=quiet)
    report = ingest([notes], coll, pipeline=BM25_ONLY, progress=False, warn=quiet)  # the fix
    assert report.added == 2 and sorted(sources_of(coll)) == ["a.md", "guides/g.md"]
    report = ingest([notes, notes], coll, sync=True, progress=False, warn=quiet)  # the same path twice is one
    assert (report.documents_read, report.unchanged, report.deleted) == (2, 2, 0)


def test_a_source_name_must_be_a_plain_name_and_not_unknown(tmp_path):
    with Collection.create(tmp_path / "coll", BM25_ONLY) as c:
        with pytest.raises(CollectionError, match=r"source 'my crawler' is not a name; give up to 64 letters"):
            c.upsert([{"id": "d", "text": "delta"}], source="my crawler")
        with pytest.raises(CollectionError, match=r"'unknown' is kept for documents written before sources"):
            c.upsert([{"id": "d", "text": "delta"}], source="unknown")
        c.upsert([{"id": "d", "text": "delta"}], source="crawler")  # the fix: a plain name
        assert c.generation.document("d").source == "crawler" and c.generation.number == 1


def _as_format_1(coll: Path) -> None:
    """Rewrite the current generation as stagegraph wrote it before sources and segments: whole
    `documents.jsonl` / `chunks.jsonl` tables with their checksums, no `source`, no `sources`."""
    number = int((coll / "CURRENT").read_text())
    with Collection.open(coll) as c:
        documents = sorted(c.generation.documents(), key=lambda d: d.id)
        chunks = [chunk for d in documents for chunk in c.generation.chunks_of(d.id)]
    generation = coll / "generations" / f"{number:08d}"
    rows = [{k: v for k, v in d.model_dump(mode="json").items() if k != "source"} for d in documents]
    (generation / "documents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (generation / "chunks.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in chunks))
    manifest = json.loads((generation / "manifest.json").read_text())
    for key in ("sources", "segments", "source_counts", "merges"):
        del manifest[key]
    manifest["format_version"] = 1
    manifest["files"] = {name: sha256_file(generation / name) for name in ("documents.jsonl", "chunks.jsonl")}
    (generation / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_a_collection_written_before_sources_and_segments_converts_and_sync_leaves_its_documents_alone(tmp_path, capsys):
    notes = write(tmp_path / "notes", {"a.md": "alpha", "b.md": "beta"})
    coll = tmp_path / "coll"
    ingest([notes], coll, pipeline=BM25_ONLY, progress=False, warn=quiet)
    with Collection.open(coll) as c:
        c.upsert([{"id": "api.md", "text": "written through the API"}])
    _as_format_1(coll)
    with pytest.raises(CollectionError, match=f"written by an older stagegraph .*convert it once with "
                                              f"`stagegraph collection compact {re.escape(str(coll))}`"):
        Collection.open(coll)
    assert main(["collection", "compact", str(coll)]) == 0  # the fix the line names
    with Collection.open(coll) as c:
        assert {d.source for d in c.generation.documents()} == {"unknown"} and c.generation.manifest.format_version == 3
        assert c.sources() == [{"source": "unknown", "label": "unknown (written before sources were recorded)",
                                "documents": 3}]
        assert sorted(c.generation.corpus.ids) == ["a.md#0", "api.md#0", "b.md#0"]  # the chunks as they were
    (notes / "b.md").unlink()
    assert main(["ingest", str(notes), "--collection", str(coll), "--sync"]) == 0
    out = capsys.readouterr().out
    assert "0 added, 0 updated, 1 moved here from another source, 0 unchanged, 0 deleted" in out
    assert ("sync left 2 documents of other sources alone (unknown (written before sources were recorded) 2); "
            "remove one of unknown source with --delete DOC_ID") in out
    with Collection.open(coll) as c:
        assert c.generation.manifest.format_version == 3
        assert {d.id: d.source for d in c.generation.documents()} == {
            "a.md": path_source(notes).key, "b.md": "unknown", "api.md": "unknown"}
    assert main(["ingest", "--delete", "b.md", "--collection", str(coll), "-q"]) == 0  # the fix the line names
    assert sources_of(coll) == {"a.md": path_source(notes).key, "api.md": "unknown"}
