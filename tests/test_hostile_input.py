"""Issue 23, the data half: what one document or one request must never do to a collection.

A named test for each of findings 1, 2, 3, 6 and 8 of the issue (each reproduces the probe that
found it, through every path it could come by), then property tests (hypothesis) of the metadata
validator, the filter compiler and the loaders with adversarial values: whatever they are given,
they answer with a value or with one of stagegraph's own errors, never with anything else.
"""

from __future__ import annotations

import json
import math
import time
import tracemalloc
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import BM25_ONLY, build_collection

from stagegraph.collection import Collection
from stagegraph.collection.ingest import ingest
from stagegraph.corpora.filters import FilterError, FilterLimits, MetadataIndex
from stagegraph.corpora.ingest import Document, FileFacts, Skipped, read_paths
from stagegraph.corpora.validate import (
    MAX_SAFE_INTEGER,
    DocumentError,
    MetadataLimits,
    check_metadata,
    check_record,
    clean_text,
    normalize_id,
)
from stagegraph.errors import InputError, StagegraphError
from stagegraph.hashing import hash_strings
from stagegraph.pipeline.compose import Pipeline
from stagegraph.serve.app import create_app
from stagegraph.serve.service import Service
from stagegraph.serve.settings import ServeSettings

BIG = int("9" * 400)  # the probe's 400-digit integer
PROPERTY = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture
def served(tmp_path):
    """A BM25 collection of 40 documents (metadata n, kind) behind the real app; the client and the service."""
    root = build_collection(tmp_path / "c", BM25_ONLY)
    service = Service.open(BM25_ONLY, root, ServeSettings(), pin_threads=False)
    with TestClient(create_app(service)) as client:
        yield client, service
    service.close()


JSON = {"content-type": "application/json"}


def put(client, *documents, wait=True):  # json.dumps: lone surrogates travel as \ud800 escapes, as a client may send them
    return client.put(f"/v1/documents?wait={str(wait).lower()}", content=json.dumps({"documents": list(documents)}), headers=JSON)


def search(client, **body):
    return client.post("/v1/search", content=json.dumps({"query": "protein cancer", "k": 3, **body}), headers=JSON)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- finding 1 --------------------------------------------------------------------------------------
def test_finding_1_a_400_digit_integer_is_refused_on_every_write_path_and_filtered_search_keeps_working(served, tmp_path):
    client, service = served
    generation = service.stack.generation
    r = put(client, {"id": "ok", "text": "fine text", "metadata": {"tenant": "a"}},
            {"id": "x", "text": "protein cancer", "metadata": {"n": BIG}})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_document" and error["field"] == "documents[1].metadata.n"
    assert "document 'x'" in error["message"] and "out of range" in error["message"]
    assert service.stack.collection.generation.number == generation  # nothing of the request was written
    assert "ok" not in set(service.stack.collection.generation.live_ids())
    for _ in range(2):
        r = search(client, filter={"kind": "even"})
        assert r.status_code == 200 and r.json()["hits"]
    # NaN and Infinity come through Python's JSON parser as floats: refused the same way
    for value in ("NaN", "Infinity", "-Infinity"):
        body = '{"documents": [{"id": "y", "text": "t", "metadata": {"score": %s}}]}' % value
        r = client.put("/v1/documents", content=body, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["field"]) == (422, "documents[0].metadata.score"), r.text

    # the Python API: the same refusal, the collection untouched
    with Collection.open(tmp_path / "c") as store, pytest.raises(DocumentError, match=r"document 'x': metadata\.n: .*out of range"):
        store.upsert([{"id": "x", "text": "t", "metadata": {"n": -BIG}}])

    # ingest: front matter and a JSONL record, each skipped with one line naming it and the field; the rest ingested
    folder = tmp_path / "files"
    write(folder / "big.md", f"---\nn: {BIG}\n---\nprotein text\n")
    write(folder / "good.md", "---\nn: 3\n---\nprotein cancer text\n")
    write(folder / "records.jsonl", json.dumps({"id": "r1", "text": "one", "score": 1.5}) + "\n"
          + '{"id": "r2", "text": "two", "score": NaN}\n')
    warnings: list[str] = []
    report = ingest([folder], tmp_path / "ingested", pipeline=BM25_ONLY, progress=False, warn=warnings.append)
    assert sorted(Collection.open(tmp_path / "ingested").generation.live_ids()) == ["good.md", "r1"]
    assert len(warnings) == 2 and report.added == 2
    assert warnings[0].startswith(f"skipped {folder / 'big.md'}: document 'big.md': metadata.n: an integer of 400 digits")
    assert warnings[1].startswith(f"skipped {folder / 'records.jsonl'}: document 'r2': metadata.score: nan is not a number")


def test_a_front_matter_of_yaml_aliases_is_skipped_before_it_expands(tmp_path):
    """A 1 KB front matter whose aliases stand for 9**6 values is skipped, not expanded (9**9 such values did not finish in 20 s)."""
    lines = ["---", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 6)]  # 9**6 values: a second to expand
    write(tmp_path / "docs" / "laugh.md", "\n".join([*lines, "---", "body"]) + "\n")
    write(tmp_path / "docs" / "plain.md", "plain body\n")
    started = time.perf_counter()
    items = list(read_paths([tmp_path / "docs"], progress=False))
    assert time.perf_counter() - started < 10
    assert [(type(i).__name__, getattr(i, "reason", None)) for i in items] == [
        ("Skipped", "metadata of more than 100000 values (YAML aliases expand to copies)"), ("Document", None)]


def test_a_poisoned_column_from_before_fails_once_for_its_field_only():
    """A collection written before the limits may hold such a value: the filters on other fields work,
    one on that field is a FilterError, and the failed build is cached (never retried per request)."""
    rows = [{"tenant": "a", "n": BIG}] + [{"tenant": "b", "n": i} for i in range(999)]
    index = MetadataIndex(rows)
    assert np.flatnonzero(index.mask({"tenant": "a"})).tolist() == [0]
    for _ in range(3):
        with pytest.raises(FilterError, match=r"^field 'n' holds a value the filter index cannot compare"):
            index.mask({"n": {"$gte": 1}})
    assert index.builds == 2 and index.built() == ["tenant", "n"]


# -- finding 2 --------------------------------------------------------------------------------------
def test_finding_2_a_document_with_20000_keys_makes_filtered_searches_build_nothing_and_hold_nothing():
    many = {f"k{i}": i for i in range(20_000)}
    with pytest.raises(DocumentError, match=r"20000 fields; the limit is 256"):  # refused on every write path
        check_metadata(many, doc_id="wide")
    # and where one is already there (a collection from before, or limits raised), the index ignores its keys
    rows = [{"tenant": "a" if i % 2 else "b"} for i in range(1000)] + [{"tenant": "a", **many}]
    index = MetadataIndex(rows)
    index.mask({"tenant": "a"})
    tracemalloc.start()
    try:
        for _ in range(20):  # later filtered searches: no build, no memory kept
            before = tracemalloc.get_traced_memory()[0]
            mask = index.mask({"tenant": "a", "nowhere": {"$exists": False}})
            del mask
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.builds == 2 and sorted(index.built()) == ["nowhere", "tenant"]
    assert peak - before < 200_000 and after - before < 20_000  # a few 1,001-row masks, not 20,000 columns


def test_finding_2_over_http_the_wide_document_is_refused_and_searches_build_one_column(served):
    client, service = served
    r = put(client, {"id": "wide", "text": "t", "metadata": {f"k{i}": i for i in range(20_000)}})
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["field"]) == (422, "invalid_document", "documents[0].metadata")
    for _ in range(3):
        assert search(client, filter={"kind": "odd"}).status_code == 200
    index = MetadataIndex.of(service.stack.collection.corpus)
    assert index.built() == ["kind"] and index.builds == 1
    assert client.get("/v1/info").json()["limits"]["metadata"]["max_fields"] == 256  # the operator can see them


def test_the_columns_go_with_their_generation(served):
    """A filter's columns belong to one generation's index: when a write moves the server on, the old
    index (and the columns of documents since deleted) is released, and the new one builds on demand."""
    import gc
    import weakref

    client, service = served
    assert search(client, filter={"kind": "odd"}).status_code == 200
    old = weakref.ref(MetadataIndex.of(service.stack.collection.corpus))
    assert old().built() == ["kind"]
    assert put(client, {"id": "new", "text": "protein cancer", "metadata": {"kind": "odd"}}).status_code == 200
    assert client.delete("/v1/documents/doc001?wait=true").status_code == 200
    assert search(client, filter={"kind": "odd"}).status_code == 200
    gc.collect()
    assert old() is None
    assert MetadataIndex.of(service.stack.collection.corpus).built() == ["kind"]


def test_the_collection_bounds_its_distinct_fields(served, tmp_path):
    client, service = served
    service.settings.metadata = MetadataLimits(max_collection_fields=4)  # the collection holds n and kind
    r = put(client, {"id": "a", "text": "t", "metadata": {"n": 1, "x": 1, "y": 2}})
    assert r.status_code == 200, r.text
    r = put(client, {"id": "b", "text": "t", "metadata": {"n": 1, "z": 1}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "documents[0].metadata.z", r.text
    assert "more than 4 distinct metadata fields" in r.json()["error"]["message"]
    # ingest skips the file that would pass the limit, and keeps the rest
    folder = tmp_path / "f"
    write(folder / "a.md", "---\nq: 1\n---\nalpha\n")
    write(folder / "b.md", "---\nr: 1\n---\nbeta\n")
    warnings: list[str] = []
    limits = MetadataLimits(max_collection_fields=7)  # n, kind, x, y; path, ext and q of a.md
    ingest([folder], tmp_path / "c", progress=False, warn=warnings.append, limits=limits)
    assert warnings == [f"skipped {folder / 'b.md'}: document 'b.md': metadata.r: the collection would hold more than 7 "
                        "distinct metadata fields (max_collection_fields); reuse existing field names, or nest values under one field"]


# -- finding 3 --------------------------------------------------------------------------------------
def deep(levels: int, leaf=1) -> dict:
    out = leaf
    for _ in range(levels):
        out = {"a": out}
    return out


def test_finding_3_client_mistakes_are_4xx_not_500(served):
    client, _ = served
    cases = [
        (search(client, filter={"n": BIG}), "invalid_filter", "filter"),
        (search(client, filter={"n": {"$in": [1, -BIG]}}), "invalid_filter", "filter"),
        (search(client, query="\ud800x"), "invalid_text", "query"),
        (search(client, query="protein\x00"), "invalid_text", "query"),
        (client.post("/v1/search/batch", content=json.dumps({"queries": ["ok", "\udfffx"]}), headers=JSON), "invalid_text", "queries[1]"),
        (put(client, {"id": "d", "text": "t", "metadata": deep(40)}), "invalid_document", "documents[0].metadata.a.a.a.a.a.a.a.a"),
        (put(client, {"id": "d", "text": "t", "metadata": deep(400)}), "json_too_deep", None),  # the body's own depth limit
        (search(client, filter=deep(40, {"$exists": True})), "invalid_filter", "filter"),
        (search(client, filter={"$and": [deep(10, {"n": 1})] * 200}), "invalid_filter", "filter"),
        (put(client, {"id": "d", "text": "t", "metadata": {"k": "a\ud800"}}), "invalid_document", "documents[0].metadata.k"),
    ]
    for r, code, field in cases:
        assert r.status_code == 422, r.text
        assert (r.json()["error"]["code"], r.json()["error"].get("field")) == (code, field), r.text
    assert search(client, filter={"kind": "even"}).status_code == 200
    # the probe's 490 levels: refused by the body's depth limit (--max-json-depth) before any parser recurses
    body = '{"query": "x", "filter": ' + '{"$and": [' * 490 + '{"n": 1}' + ']}' * 490 + '}'
    r = client.post("/v1/search", content=body, headers=JSON)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "json_too_deep"), r.text


def test_rerank_passages_are_cleaned_for_scoring_and_refused_with_a_lone_surrogate(tmp_path):
    from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer

    from serve_support import rerank_config

    config = rerank_config(str(make_tiny_sentence_transformer(tmp_path / "st")),
                           str(make_tiny_cross_encoder(tmp_path / "ce", max_length=64)))
    service = Service.open(config, build_collection(tmp_path / "c", config, n=6), ServeSettings(), pin_threads=False)
    try:
        with TestClient(create_app(service)) as client:
            body = {"query": "protein", "documents": ["protein cell", "a\x00b\x0cc"], "return_documents": True}
            r = client.post("/v1/rerank", content=json.dumps(body), headers=JSON)
            assert r.status_code == 200, r.text  # control characters: cleaned for scoring, sent back as given
            assert {x["index"]: x["document"]["text"] for x in r.json()["results"]} == {0: "protein cell", 1: "a\x00b\x0cc"}
            for documents, field in ((["ok", "protein\ud800 cell"], "documents[1]"),
                                     ([{"text": "ok", "source": ["x", "\udfff"]}], "documents[0].source[1]")):
                r = client.post("/v1/rerank", content=json.dumps({**body, "documents": documents}), headers=JSON)
                assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["field"]) == (422, "invalid_text", field), r.text
            r = client.post("/v1/rerank", content=json.dumps({**body, "query": "protein\ud800"}), headers=JSON)
            assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_text")
    finally:
        service.close()


def test_finding_3_in_python_a_lone_surrogate_is_an_input_error_not_a_crash(tmp_path):
    assert hash_strings(["\ud800x"]) != hash_strings(["x"])  # the crash of the probe: UnicodeEncodeError
    root = build_collection(tmp_path / "c", BM25_ONLY, n=5)
    with Collection.open(root) as store:
        pipe = Pipeline.from_config(BM25_ONLY).bind(store)
        for query in ("\ud800x", "a\x00b", "\x1b[31m"):
            with pytest.raises(InputError, match="the query holds a"):
                pipe.search(query)
            with pytest.raises(InputError, match="the query holds a"):
                pipe.search_batch(["fine", query])
        assert pipe.search("protein", k=1).hits is not None
        # a title and text are cleaned (one character for one), the document kept
        store.upsert([{"id": "t", "title": "a\ud800b", "text": "x\x00y\x0cz"}])
        entry = store.generation.document("t")
        assert entry.title == "a\ufffdb" and store.generation.chunks_of("t")[0].text == "x y z"


# -- finding 6 --------------------------------------------------------------------------------------
def test_finding_6_no_server_path_size_time_or_other_field_reaches_a_client(tmp_path):
    folder = tmp_path / "secret-home" / "docs"
    write(folder / "team" / "guide.md", "---\ntenant: a\n---\nprotein cancer guide\n")
    write(folder / "other.md", "---\nprivate_field: 1\n---\nprotein other\n")
    ingest([folder], tmp_path / "c", pipeline=BM25_ONLY, progress=False, warn=lambda line: None)
    service = Service.open(BM25_ONLY, tmp_path / "c", ServeSettings(), pin_threads=False)
    try:
        with TestClient(create_app(service)) as client:
            hits = search(client, k=5).json()["hits"]
            by_doc = {h["doc_id"]: h["metadata"] for h in hits}
            assert by_doc["team/guide.md"] == {"tenant": "a", "path": "team/guide.md", "ext": "md"}
            answers = [search(client, k=5), client.get("/v1/documents/team/guide.md"),
                       search(client, filter={"tenat": "a"}), search(client, filter={"tenant": {"$gt": 1}})]
            for r in answers:
                assert str(tmp_path) not in r.text and "secret-home" not in r.text
                assert "size" not in r.text and "mtime" not in r.text
            for r in answers[2:]:  # a filter error names the field the caller used, and no other
                assert r.status_code == 422 and "private_field" not in r.text and "path" not in r.json()["error"]["message"]
            assert "'tenat'" in answers[2].json()["error"]["message"]
    finally:
        service.close()
    # the operator's opt-in: the absolute path, the size and the time
    ingest([folder], tmp_path / "c2", pipeline=BM25_ONLY, progress=False, warn=lambda line: None,
           file_facts=FileFacts(absolute_paths=True, size_and_mtime=True))
    with Collection.open(tmp_path / "c2") as store:
        metadata = store.generation.document("team/guide.md").metadata
    assert metadata["path"] == str((folder / "team" / "guide.md").absolute()) and metadata["size"] > 0 and "mtime" in metadata


def test_error_messages_carry_no_absolute_path():
    from stagegraph.serve.errors import from_exception

    error = from_exception(InputError("another writer holds /srv/data/coll/.stagegraph/lock (waited 60 s)"))
    assert error.message == "another writer holds <path> (waited 60 s)"


# -- finding 8 --------------------------------------------------------------------------------------
def test_finding_8_ids_are_nfc_and_names_only(served, tmp_path):
    client, service = served
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert put(client, {"id": composed, "text": "first text"}).json()["added"] == 1
    r = put(client, {"id": decomposed, "text": "second text"})
    assert (r.json()["added"], r.json()["updated"]) == (0, 1), r.text  # one name, one document
    assert client.get(f"/v1/documents/{decomposed}").json()["chunks"][0]["text"] == "second text"
    assert client.get(f"/v1/documents/{composed}").json()["id"] == composed
    for bad in ("a\x00b", "..", "a/../b", "tab\there", "x\ud800"):
        r = put(client, {"id": bad, "text": "t"})
        assert (r.status_code, r.json()["error"]["field"]) == (422, "documents[0].id"), bad
        # pydantic refuses a lone surrogate in a string field itself (invalid_value), before our check
        assert r.json()["error"]["code"] == ("invalid_value" if "\ud800" in bad else "invalid_document"), r.text
    assert client.delete(f"/v1/documents/{decomposed}?wait=true").json()["deleted"] == 1
    # Python API and ingest: the same rules
    with Collection.open(tmp_path / "c") as store:
        store.upsert([{"id": decomposed, "text": "t"}])
        assert store.generation.document(composed) is not None and decomposed not in store.generation.live_ids()
        with pytest.raises(DocumentError, match="control character U\\+0000"):
            store.upsert([{"id": "a\x00", "text": "t"}])
    folder = tmp_path / "names"
    write(folder / f"{composed}.md", "composed")
    write(folder / f"{decomposed}.md", "decomposed")
    warnings: list[str] = []
    report = ingest([folder], tmp_path / "n", pipeline=BM25_ONLY, progress=False, warn=warnings.append)
    assert report.added == 1 and len(warnings) == 1 and f"duplicate document id '{composed}.md'" in warnings[0]


# -- properties: the metadata validator -----------------------------------------------------------
TEXT = st.text(st.characters(codec=None, categories=None), max_size=12)  # every code point, surrogates and NUL too
#: what the probes sent, drawn as often as any other kind of value


def mostly(nice, bad, one_in: int):
    """`nice`, and `bad` one time in `one_in`: a document is mostly well-formed, so that one bad part decides."""
    return st.integers(1, one_in).flatmap(lambda i: bad if i == 1 else nice)


KEYS = mostly(st.sampled_from(["tenant", "n", "tags", "year", "x", "naïve"]),
              st.sampled_from(["$gt", "", "a\x00", "\ud800", "k" * 7]) | TEXT, one_in=12)
ADVERSARIAL = st.sampled_from([BIG, -BIG, MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, -(2**63), 2**64, math.nan, math.inf,
                               -math.inf, 1e308, -0.0, "\ud800", "a\udfff", "\x00", "a\x1b[0m", "", " ", "x" * 9,
                               "2024-01-01", "2024-13-45", "0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59+14:00"])
NICE = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.floats(-1e6, 1e6), st.text("abc xyz-é", max_size=8))
SCALARS = mostly(NICE, ADVERSARIAL | st.integers() | st.floats() | TEXT, one_in=4)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=20)
METADATA = st.dictionaries(KEYS, VALUES, max_size=6)
SMALL = MetadataLimits(max_depth=3, max_fields=4, max_values=20, max_value_chars=8, max_metadata_bytes=300, max_key_chars=6)


def depth_of(value) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@PROPERTY
@given(METADATA, st.sampled_from([MetadataLimits(), SMALL]))
def test_what_the_validator_admits_the_store_and_the_index_can_hold(metadata, limits):
    try:
        kept = check_metadata(metadata, limits, doc_id="d")
    except DocumentError as exc:
        assert exc.doc_id == "d" and exc.field.startswith("metadata") and "\n" not in str(exc)
        json.dumps(str(exc), ensure_ascii=False).encode("utf-8")  # the message itself can be sent
        return
    text = json.dumps(kept, allow_nan=False, ensure_ascii=False)  # no NaN, no Infinity
    assert len(text.encode("utf-8")) <= limits.max_metadata_bytes  # and no lone surrogate (encode would fail)
    assert depth_of(kept) <= limits.max_depth and len(kept) <= limits.max_fields
    assert not any(k.startswith("$") for k in kept)
    index = MetadataIndex([kept, {}])
    for key in kept:  # every field it admitted builds a column that filters can use
        column = index.column(key)
        assert column.present.tolist() == [kept[key] is not None, False]


NICE_VALUES = st.recursive(NICE, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
                           max_leaves=8)
NICE_METADATA = st.dictionaries(st.sampled_from(["tenant", "n", "tags", "year"]), NICE_VALUES, max_size=4)
PLANTED = ADVERSARIAL | st.integers() | st.floats() | TEXT | st.text(max_size=3).map(lambda t: t + "\ud800")


def refused_by_the_rules(value, limits: MetadataLimits) -> bool:
    """The module docstring's rules for one scalar, written again from unicodedata: the oracle."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) > 2**53 - 1
    if isinstance(value, str):
        return len(value) > limits.max_value_chars or any(
            unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r" for c in value)
    return False


@PROPERTY
@given(NICE_METADATA, PLANTED, st.lists(st.sampled_from(["list", "dict"]), max_size=4), st.sampled_from([MetadataLimits(), SMALL]))
def test_one_bad_value_planted_anywhere_is_refused_naming_exactly_where(base, value, wrappers, limits):
    planted, path = value, ""
    for kind in reversed(wrappers):
        planted, path = ([planted], "[0]" + path) if kind == "list" else ({"w": planted}, ".w" + path)
    metadata = base | {"p": planted}
    try:
        check_metadata(base, limits, doc_id="d")
    except DocumentError:
        return  # the nice part alone is over a limit of SMALL: nothing to learn here
    too_deep = len(wrappers) >= limits.max_depth
    try:
        check_metadata(metadata, limits, doc_id="d")
    except DocumentError as exc:
        assert refused_by_the_rules(value, limits) or too_deep or exc.field == "metadata" or exc.reason.startswith("more than"), exc
        if refused_by_the_rules(value, limits) and not too_deep and exc.field != "metadata":
            assert exc.field == "metadata.p" + path, exc
        return
    assert not refused_by_the_rules(value, limits) and not too_deep


@PROPERTY
@given(TEXT)
def test_ids_are_refused_or_nfc_printable_and_stable(raw):
    try:
        doc_id = normalize_id(raw)
    except DocumentError as exc:
        assert exc.field == "id"
        return
    assert doc_id == unicodedata.normalize("NFC", raw) == normalize_id(doc_id)
    doc_id.encode("utf-8")
    assert all(unicodedata.category(c) != "Cc" for c in doc_id) and ".." not in doc_id.split("/")


@PROPERTY
@given(TEXT)
def test_cleaned_text_keeps_every_offset_and_can_be_stored(raw):
    cleaned = clean_text(raw)
    assert len(cleaned) == len(raw) and clean_text(cleaned) == cleaned
    cleaned.encode("utf-8")
    assert all(a == b for a, b in zip(raw, cleaned) if a in "\t\n\r" or unicodedata.category(a) not in ("Cc", "Cs"))


# -- properties: the filter compiler ---------------------------------------------------------------
FIELDS = st.sampled_from(["ext", "year", "tags", "date", "draft", "mixed", "nowhere", "$not", "", "a" * 9000])
OPS = st.sampled_from(["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists", "$like"])
OPERAND = VALUES | st.lists(SCALARS, max_size=4)
CONDITION = OPERAND | st.dictionaries(OPS, OPERAND, min_size=1, max_size=3)
EXPRESSIONS = st.recursive(
    st.dictionaries(FIELDS, CONDITION, min_size=1, max_size=3),
    lambda inner: st.dictionaries(st.sampled_from(["$and", "$or"]), st.lists(inner, max_size=3) | inner, min_size=1, max_size=2),
    max_leaves=12)
ROWS = [
    {"ext": "md", "year": 2023, "tags": ["gpu", {"a": 1}], "date": "2024-02-01", "mixed": 1},
    {"ext": "txt", "year": 2024.5, "tags": [], "date": "2024-06-30T10:00:00Z", "draft": True, "mixed": "1"},
    {"year": -MAX_SAFE_INTEGER, "mixed": [1, 2], "draft": False},
    {},
]


@PROPERTY
@given(EXPRESSIONS | VALUES)
def test_any_filter_is_a_mask_or_a_filter_error(expression):
    index = MetadataIndex(ROWS, limits=FilterLimits(max_depth=6, max_nodes=40))
    try:
        mask = index.mask(expression)
    except FilterError as exc:
        assert "\n" not in str(exc)
        return
    assert mask.dtype == bool and mask.shape == (len(ROWS),)


SIMPLE_FILTERS = st.builds(lambda f, c: {f: c}, st.sampled_from(["ext", "year", "tags", "date", "draft", "mixed"]),
                           PLANTED | st.dictionaries(OPS, PLANTED | st.lists(PLANTED, max_size=3), min_size=1, max_size=2))


@PROPERTY
@given(SIMPLE_FILTERS)
def test_any_value_under_any_operator_on_any_kind_of_field_is_a_mask_or_a_filter_error(expression):
    try:
        mask = MetadataIndex(ROWS).mask(expression)
    except FilterError:
        return
    assert mask.dtype == bool and mask.shape == (len(ROWS),)


@PROPERTY
@given(st.integers(1, 60), st.sampled_from(["$and", "$or", "field"]))
def test_a_filter_deeper_than_the_limit_is_refused_before_anything_is_compiled(levels, how):
    expression: dict = {"ext": "md"}
    for _ in range(levels):
        expression = {how: [expression]} if how != "field" else {"$and": [{"ext": {"$in": ["md"]}}, expression]}
    index = MetadataIndex(ROWS, limits=FilterLimits(max_depth=16))
    if depth_of(expression) > 16:
        with pytest.raises(FilterError, match="nested more than 16 levels deep"):
            index.mask(expression)
        assert index.builds == 0
    else:
        assert index.mask(expression).tolist() == [True, False, False, False]


@PROPERTY
@given(st.lists(st.sampled_from(["year", "ext", "tags"]), min_size=1, max_size=30))
def test_each_column_is_built_once_whatever_the_filters(fields):
    index = MetadataIndex(ROWS)
    for name in fields:
        index.mask({name: {"$exists": True}})
    assert index.builds == len(set(fields))


# -- properties: the loaders ------------------------------------------------------------------------
RECORD = st.fixed_dictionaries({"id": TEXT | st.integers(), "text": TEXT}, optional={"title": TEXT, "meta": VALUES})


@PROPERTY
@given(st.lists(RECORD, max_size=6), st.binary(max_size=200))
def test_loaders_give_documents_or_skips_and_every_document_is_checked_or_refused(tmp_path_factory, records, front):
    folder = tmp_path_factory.mktemp("load")
    lines = [json.dumps(r, ensure_ascii=True) for r in records]  # lone surrogates travel as \ud800 escapes
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "front.md").write_bytes(b"---\n" + front + b"\n---\nbody text\n")
    (folder / "raw.txt").write_bytes(front + b" some text")
    for item in read_paths([folder], progress=False):
        assert isinstance(item, (Document, Skipped))
        if isinstance(item, Skipped):
            continue
        try:
            record = check_record({"id": item.id, "text": item.text, "title": item.title, "metadata": item.metadata})
        except DocumentError:
            continue
        json.dumps(record, allow_nan=False, ensure_ascii=False).encode("utf-8")
        assert record["metadata"]["path"] in ("records.jsonl", "front.md", "raw.txt")


@PROPERTY
@given(st.dictionaries(TEXT, VALUES, max_size=4), TEXT, TEXT)
def test_python_records_are_written_or_refused_with_one_of_our_errors(tmp_path_factory, metadata, doc_id, title):
    from stagegraph.collection.writer import as_document

    try:
        doc = as_document({"id": doc_id or "x", "text": "t", "title": title, "metadata": metadata})
    except StagegraphError:
        return
    assert doc.id == unicodedata.normalize("NFC", doc_id or "x")
    doc.model_dump_json()  # what the generation's table stores: serialisable
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in doc.metadata.values())


# -- the command line -------------------------------------------------------------------------------
def test_the_flags_reach_ingest_and_serve(tmp_path, capsys):
    from stagegraph.cli.app import build_parser, main
    from stagegraph.cli.serve import settings_of

    folder = tmp_path / "docs"
    write(folder / "wide.md", "---\na: 1\nb: 2\nc: 3\n---\nwide text\n")
    write(folder / "narrow.md", "---\na: 1\n---\nnarrow text\n")
    args = ["ingest", str(folder), "--collection", str(tmp_path / "c"), "--config", "bm25", "--quiet"]
    assert main([*args, "--max-metadata-fields", "6", "--file-facts", "--absolute-paths"]) == 0, capsys.readouterr().err
    assert f"warning: skipped {folder / 'wide.md'}: document 'wide.md': metadata: 7 fields; the limit is 6" in capsys.readouterr().err
    with Collection.open(tmp_path / "c") as store:
        assert sorted(store.generation.live_ids()) == ["narrow.md"]
        metadata = store.generation.document("narrow.md").metadata
    assert metadata["path"] == str((folder / "narrow.md").absolute()) and metadata["size"] > 0
    assert main([*args, "--max-metadata-depth", "0"]) == 2
    assert "--max-metadata-depth: Input should be greater than or equal to 1" in capsys.readouterr().err
    parsed = build_parser().parse_args(["serve", "bm25", "--collection", str(tmp_path / "c"), "--max-metadata-kb", "8",
                                        "--max-collection-fields", "10"])
    limits = settings_of(parsed).metadata
    assert (limits.max_metadata_bytes, limits.max_collection_fields, limits.max_fields) == (8192, 10, 256)


def test_the_python_api_bounds_distinct_fields_and_a_merge_frees_a_deleted_documents_fields(tmp_path):
    """`max_collection_fields` in the writer itself (the Python API; ingest and HTTP pass their limits to
    it). Each segment records its documents' fields, so the count reads no document; a deleted
    document's fields count until its segment is merged away."""
    from stagegraph.collection.sources import PYTHON

    limits = MetadataLimits(max_collection_fields=3)
    store = Collection.create(tmp_path / "c", BM25_ONLY)
    with store.writer(limits=limits) as w:
        w.upsert([{"id": "a", "text": "alpha", "metadata": {"f1": 1, "f2": 2}}], source=PYTHON)
        w.commit()
    wide = {"id": "b", "text": "beta", "metadata": {"f3": 1, "f4": 2}}
    with pytest.raises(DocumentError, match="more than 3 distinct metadata fields"), store.writer(limits=limits) as w:
        w.upsert([wide], source=PYTHON)
    store.refresh()
    assert store.generation.fields() == {"f1", "f2"} and store.generation.document("b") is None  # nothing written
    store.delete(["a"])
    assert store.generation.fields() == {"f1", "f2"}  # still in its segment's rows
    store.compact()
    assert store.generation.fields() == set()
    with store.writer(limits=limits) as w:  # the fix: the old fields are gone, the new ones fit
        w.upsert([wide], source=PYTHON)
        w.commit()
    store.refresh()
    assert store.generation.fields() == {"f3", "f4"}
    store.close()
