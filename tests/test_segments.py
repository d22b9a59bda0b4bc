"""Segmented collections: writes proportional to the change, exact statistics in any layout, merges."""

from __future__ import annotations

import random

import numpy as np
import pytest
from collection_support import QUERIES, rankings
from tiny_models import WORDS, make_tiny_sentence_transformer

import stagegraph as sg
from stagegraph.collection import Collection
from stagegraph.collection.layout import SegmentRef
from stagegraph.collection.merges import MergePolicy
from stagegraph.collection.sources import PYTHON
from stagegraph.corpora.ingest import ChunkerConfig
from stagegraph.corpora.types import Corpus
from stagegraph.indexes.bm25 import BM25Index, BM25Settings

SMALL_CHUNKS = ChunkerConfig(max_tokens=24, overlap_tokens=4)
BM25_ONLY = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 50}]}
NO_MERGES = MergePolicy(segments_per_tier=1000, deletes_pct_allowed=100.0)
EAGER_MERGES = MergePolicy(segments_per_tier=2, max_merge_at_once=2, floor_chunks=1, deletes_pct_allowed=10.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st"))


def hybrid(model: str) -> dict:
    return {"pipeline": [
        {"parallel": [{"type": "bm25", "name": "bm25", "k": 20},
                      {"type": "dense", "name": "dense", "k": 20, "model": model, "index": "Flat"}]},
        {"type": "pool", "name": "pool", "k": 20},
    ]}


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def doc(i: int, rng: random.Random) -> dict:
    return {"id": f"doc{i:03d}", "title": f"title {rng.choice(WORDS)}", "text": text(rng, rng.randint(5, 80)),
            "metadata": {"n": i, "group": "even" if i % 2 == 0 else "odd"}}


def same(a: dict, b: dict, tol: float = 1e-5) -> None:
    for stage in a:
        for q in a[stage]:
            assert [i for i, _ in a[stage][q]] == [i for i, _ in b[stage][q]], (stage, q)
            np.testing.assert_allclose([s for _, s in a[stage][q]], [s for _, s in b[stage][q]], rtol=0, atol=tol)


@pytest.mark.parametrize("policy", [NO_MERGES, EAGER_MERGES], ids=["a-segment-per-commit", "merging-often"])
def test_any_layout_of_segments_ranks_like_a_fresh_single_segment_build(tmp_path, tiny_model, policy):
    """Random adds, updates and deletes, committed one batch at a time: every stage's rankings (ids in
    order, ties included, and scores), filtered or not, equal those of one segment built from the final
    documents; after `compact` too. Equal fused scores in the pool are frequent (RRF), so this also
    checks that ties are ordered by chunk key, not by where a chunk is stored."""
    config = hybrid(tiny_model)
    rng = random.Random(5)
    live: dict[str, dict] = {}
    store = Collection.create(tmp_path / "live", config, chunker=SMALL_CHUNKS)
    store.merge_policy = policy
    next_id = 0
    for step in range(7):
        with store.writer() as w:
            for _ in range(rng.randint(2, 7)):
                d = doc(next_id, rng)
                next_id += 1
                live[d["id"]] = d
                w.upsert([d], source=PYTHON)
            for doc_id in rng.sample(sorted(live), k=min(len(live), rng.randint(0, 3))):
                live[doc_id] = {**live[doc_id], "text": text(rng, rng.randint(5, 60))}
                w.upsert([live[doc_id]], source=PYTHON)
            for doc_id in rng.sample(sorted(live), k=min(max(len(live) - 3, 0), rng.randint(0, 3))):
                del live[doc_id]
                w.delete([doc_id])
            w.commit()
        store.refresh()
        if step in (2, 6):
            fresh = Collection.create(tmp_path / f"fresh{step}", config, chunker=SMALL_CHUNKS)
            fresh.upsert(list(live.values()))
            assert len(fresh.generation.manifest.segments) == 1
            for flt in (None, {"group": "even"}):
                same(rankings(tmp_path / "live", config, flt), rankings(tmp_path / f"fresh{step}", config, flt))
            fresh.close()
    layout = [(r.id, r.deleted_chunks) for r in store.generation.manifest.segments]
    if policy is NO_MERGES:
        assert len(layout) >= 6 and any(deleted for _, deleted in layout)  # many segments, rows deleted in old ones
    else:
        assert any(segment.startswith("m") for segment, _ in layout)  # merged
    before = rankings(tmp_path / "live", config)
    store.compact()
    assert [(r.deleted_chunks) for r in store.generation.manifest.segments] == [0]
    same(rankings(tmp_path / "live", config), before)
    store.close()


def test_segmented_bm25_scores_equal_an_eager_index_over_the_live_chunks(tmp_path):
    """An independent implementation: the eager backend (`BM25Index`, contributions precomputed with N,
    avgdl and df of exactly the given corpus) over the live chunks only. Deleted rows stay in their
    segments until a merge; if their statistics counted, scores would differ (the drift of tantivy#798)."""
    rng = random.Random(9)
    store = Collection.create(tmp_path / "c", BM25_ONLY, chunker=ChunkerConfig(kind="none"))
    store.merge_policy = NO_MERGES
    docs = {f"d{i:02d}": {"id": f"d{i:02d}", "text": text(rng, rng.randint(3, 40))} for i in range(40)}
    store.upsert(list(docs.values())[:25])
    store.upsert(list(docs.values())[25:])
    gone = [f"d{i:02d}" for i in range(0, 40, 3)]
    store.delete(gone)
    for doc_id in gone:
        del docs[doc_id]
    assert sum(r.deleted_chunks for r in store.generation.manifest.segments) == len(gone)
    ids = sorted(docs)
    plain = Corpus([f"{d}#0" for d in ids], [""] * len(ids), [docs[d]["text"] for d in ids])
    eager = BM25Index.build(plain, BM25Settings())
    with sg.open(BM25_ONLY, collection=tmp_path / "c") as stack:
        for query in QUERIES:
            hits = eager.search(query, k=50)
            expected = [(plain.ids[r], float(s)) for r, s in zip(hits.rows, hits.scores)]
            got = [(h.id, h.score) for h in stack.search(query, k=50).hits]
            assert sorted(i for i, _ in got) == sorted(i for i, _ in expected)
            want = dict(expected)
            np.testing.assert_allclose([s for _, s in got], [want[i] for i, _ in got], rtol=1e-6, atol=0)
    store.close()


def test_a_commit_writes_one_segment_and_leaves_the_others_untouched(tmp_path):
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.merge_policy = NO_MERGES
    store.upsert([{"id": f"a{i}", "text": f"alpha {i} beta"} for i in range(20)])
    store.upsert([{"id": f"b{i}", "text": f"gamma {i} delta"} for i in range(20)])
    segments = tmp_path / "c" / "segments"
    artefacts = tmp_path / "c" / "artefacts"

    def stamp(folder):
        return {p.relative_to(folder): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}

    before_segments, before_artefacts = stamp(segments), stamp(artefacts)
    store.upsert([{"id": "a3", "text": "alpha changed"}])  # replaces a row of the first segment only
    after_segments, after_artefacts = stamp(segments), stamp(artefacts)
    assert all(after_segments[p] == s for p, s in before_segments.items())  # nothing rewritten
    assert all(after_artefacts[p] == s for p, s in before_artefacts.items())  # no index rebuilt
    added = sorted(str(p) for p in set(after_segments) - set(before_segments))
    assert [p for p in added if not p.startswith("g00000003/")] == ["g00000001/deleted-00000003.npz"]
    refs = store.generation.manifest.segments
    assert [(r.id, r.deleted_documents) for r in refs] == [("g00000001", 1), ("g00000002", 0), ("g00000003", 0)]
    assert store.generation.document("a3").chunks == 1 and store.generation.chunks_of("a3")[0].text == "alpha changed"
    store.close()


def test_merges_bound_the_segment_count_and_compact_drops_deleted_rows(tmp_path, capsys):
    from stagegraph.cli.app import main

    policy = MergePolicy(segments_per_tier=3, max_merge_at_once=3, floor_chunks=1, deletes_pct_allowed=100.0)
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.merge_policy = policy
    for i in range(12):
        store.upsert([{"id": f"d{i}", "text": f"note {i} heat flow"}])
        assert len(store.generation.manifest.segments) <= 2 * policy.segments_per_tier
    store.delete(["d1", "d2"])
    assert sum(r.deleted_chunks for r in store.generation.manifest.segments) == 2
    before = rankings(tmp_path / "c", BM25_ONLY)
    store.close()  # its lease would keep the generation it reads, and that generation's segments
    assert main(["collection", "compact", str(tmp_path / "c")]) == 0
    with Collection.open(tmp_path / "c") as c:
        assert [(r.live_chunks, r.deleted_chunks) for r in c.generation.manifest.segments] == [(10, 0)]
    assert rankings(tmp_path / "c", BM25_ONLY) == before
    assert main(["collection", "info", str(tmp_path / "c")]) == 0
    assert "segments: 1 (10 live chunks; 0 deleted rows not yet merged away)" in capsys.readouterr().out
    kept = {p.name for p in (tmp_path / "c" / "segments").iterdir()}
    assert len(kept) == 1  # the merged-away segments are collected (no reader holds them)


def test_the_merge_policy_merges_a_full_tier_and_compacts_a_segment_heavy_with_deletions():
    policy = MergePolicy(segments_per_tier=3, max_merge_at_once=2, floor_chunks=10, deletes_pct_allowed=20.0)

    def ref(name, chunks, deleted=0):
        return SegmentRef(id=name, documents=chunks, chunks=chunks, deleted_documents=deleted, deleted_chunks=deleted)

    assert policy.choose([ref("a", 5), ref("b", 8)]) is None  # tier 0 not full
    assert policy.choose([ref("a", 5), ref("b", 3), ref("c", 8)]) == ["b", "a"]  # the two smallest of a full tier
    assert policy.choose([ref("a", 50), ref("b", 3), ref("c", 500)]) is None  # three tiers, one each
    assert policy.choose([ref("a", 100, deleted=30), ref("b", 100, deleted=10)]) == ["a"]  # 30% > 20%
    assert policy.choose([ref("a", 5, deleted=4)]) is None  # under floor_chunks: its tier merges it later
    assert policy.choose([ref("a", 5), ref("b", 3), ref("c", 8)], max_chunks=7) is None  # too big to merge inline


def test_a_document_is_found_by_a_binary_search_of_its_key_even_when_two_ids_share_a_key(tmp_path, monkeypatch):
    """Writers find documents by the sorted key column of each segment, with no id -> row map; ids
    whose keys collide (forced here) are told apart by comparing the ids."""
    from stagegraph.collection import segments
    from stagegraph.corpora import segmented

    real = segmented.tie_key
    monkeypatch.setattr(segmented, "tie_key", lambda s: 7 if s in ("x", "y") else real(s))
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.upsert([{"id": d, "text": f"text of {d}"} for d in ("x", "y", "z")])
    segment = store.generation.segments[0][0]
    assert isinstance(segment, segments.Segment)
    rows = segment.doc_rows(["y", "x", "z", "absent"])
    assert [segment.entry(int(r)).id for r in rows[:3]] == ["y", "x", "z"] and rows[3] == -1
    store.upsert([{"id": "y", "text": "y changed"}])
    store.delete(["x"])
    assert sorted(store.generation.live_ids()) == ["y", "z"]
    assert store.generation.chunks_of("y")[0].text == "y changed"
    store.close()


def test_a_plugin_stage_written_for_a_plain_corpus_never_returns_a_deleted_chunk(tmp_path):
    """A retriever that does not search segments (here: one that ranks every row by a hash, as a
    plugin written for a plain corpus would see it) is bound with its rankings cut to live rows; the
    built-in retrievers search live rows themselves."""
    from stubs import StubRetriever

    from stagegraph.pipeline.compose import as_pipeline

    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.merge_policy = NO_MERGES
    store.upsert([{"id": f"d{i}", "text": f"note {i}"} for i in range(6)])
    store.delete(["d1", "d4"])
    corpus = store.generation.corpus
    assert len(corpus) == 6 and corpus.live_rows == 4  # deleted rows keep their place until a merge
    runner = as_pipeline(StubRetriever(name="every", k=10)).bind(store)
    assert {corpus.doc_id(int(r)) for r in runner.run(["anything"])[0].doc_rows} == {"d0", "d2", "d3", "d5"}
    store.close()


FIELD_FILTERS = [{"tags": "gpu"}, {"tags": {"$in": ["gpu", "cpu"]}}, {"tags": {"$ne": "gpu"}}, {"tags": {"$nin": ["gpu"]}},
                 {"tags": {"$exists": False}}, {"tags": {"$exists": True}}, {"$or": [{"tags": "cpu"}, {"year": {"$gte": 2025}}]},
                 {"year": {"$lt": 2025}}]


@pytest.mark.parametrize("expression", FIELD_FILTERS)
def test_a_field_only_older_segments_hold_filters_as_in_one_segment(tmp_path, expression):
    """A field the newest segment lacks (its documents never had it) filters the whole collection as a
    single-segment build of the same documents does: its rows lack the field, it is no error."""
    words = " ".join(QUERIES).split()  # the words rankings() asks for
    first = [{"id": f"a{i}", "text": " ".join(words[i % 5:(i % 5) + 4 + i % 3]), "metadata": {"tags": ["gpu"] if i % 2 else ["cpu"]}}
             for i in range(12)]
    later = [{"id": f"b{i}", "text": " ".join(words[i:i + 5]), "metadata": {"year": 2024 + i % 3}} for i in range(6)]
    store = Collection.create(tmp_path / "segmented", BM25_ONLY)
    store.merge_policy = NO_MERGES
    store.upsert(first)
    store.upsert(later)  # a second segment whose documents have no `tags` (and the first none has `year`)
    assert len(store.generation.manifest.segments) == 2
    store.close()
    fresh = Collection.create(tmp_path / "fresh", BM25_ONLY)
    fresh.upsert(first + later)
    fresh.close()
    segmented, single = rankings(tmp_path / "segmented", BM25_ONLY, expression), rankings(tmp_path / "fresh", BM25_ONLY, expression)
    same(segmented, single)
    assert any(segmented["bm25"].values())  # the filter let something through


def test_a_field_no_segment_holds_is_still_an_unknown_field(tmp_path):
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    store.merge_policy = NO_MERGES
    store.upsert([{"id": "a", "text": "alpha", "metadata": {"tags": ["gpu"]}}])
    store.upsert([{"id": "b", "text": "alpha beta"}])
    store.close()
    with sg.open(BM25_ONLY, collection=tmp_path / "c") as stack:
        assert [h.doc_id for h in stack.search("alpha", filter={"tags": "gpu"}).hits] == ["a"]
        with pytest.raises(sg.InputError, match="unknown filter field 'tagz'"):
            stack.search("alpha", filter={"tagz": "gpu"})
