"""Context assembly (issue 27.5): `Stack.context` and `POST /v1/context`.

* the packer never passes the budget, counted by the real tokenizer (a property test over random
  passages, templates, separators and budgets);
* MMR against a hand-computed example (lambda 1: rank order; lambda 0: most diverse) and against an
  independent plain-Python reimplementation on random vectors;
* near-duplicates (a copied file in a real collection), expansion to neighbours and to the section,
  merging of touching chunks (their overlap once), offsets that point into the source file;
* the HTTP route, bad input (budget < 1, an unknown tokenizer, a bad template) as one clear error;
* ILS beside nDCG (`stagegraph.evaluation.diversity`).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import WORDS, make_tiny_sentence_transformer

import stagegraph as sg
from stagegraph.collection.context import (
    ContextAssembler,
    ContextConfig,
    intra_list_similarity,
    merged_text,
    mmr,
    near_duplicates,
    token_counter,
)
from stagegraph.corpora.ingest import ChunkerConfig
from stagegraph.corpora.ingest.chunking import Chunk
from stagegraph.errors import InputError
from stagegraph.indexes.encoder import DEFAULT_MODEL
from stagegraph.pipeline.hits import Hit, SearchResult


# -- in memory: a generation of hand-made chunks ------------------------------------------------------
class Source:
    """What `ContextAssembler.assemble` reads of a generation: chunks by document, vectors by chunk id."""

    def __init__(self, docs: dict[str, list[Chunk]], vectors: dict[str, np.ndarray]):
        self.docs, self._vectors = docs, vectors

    def chunks_of(self, doc_id):
        return self.docs[doc_id]

    def vectors(self, ids):
        return np.array([self._vectors[i] for i in ids], dtype=np.float32)


def chunks_of_text(doc_id: str, text: str, spans: list[tuple[int, int]], sections=None) -> list[Chunk]:
    return [Chunk(id=f"{doc_id}#{i}", doc_id=doc_id, index=i, start=s, end=e, title=doc_id, text=text[s:e],
                  metadata={"section": sections[i]} if sections else {}) for i, (s, e) in enumerate(spans)]


def result_of(ids: list[str], query: str = "q") -> SearchResult:
    hits = [Hit(id=i, doc_id=i.rsplit("#", 1)[0], rank=r, score=1.0 / r) for r, i in enumerate(ids, 1)]
    return SearchResult(query=query, hits=hits)


def unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    v = rng.normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def assembler():
    return ContextAssembler(DEFAULT_MODEL)  # the real MiniLM tokenizer (installed with the package)


# -- the packer never passes the budget ---------------------------------------------------------------
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(texts=st.lists(TEXT, min_size=1, max_size=8), budget=st.integers(1, 400), data=st.data())
def test_the_packer_never_passes_the_budget_by_the_real_tokenizer(assembler, texts, budget, data):
    # one or two documents of consecutive chunks (some overlapping), hits in a random order
    docs: dict[str, list[Chunk]] = {}
    vectors = {}
    rng = np.random.default_rng(len(texts) + budget)
    for d in range(2):
        pieces = texts[d::2]
        if not pieces:
            continue
        text, spans = "", []
        for p in pieces:
            if spans and data.draw(st.booleans()):  # overlap the previous chunk
                back = min(len(text) - spans[-1][0], data.draw(st.integers(0, 20)))
                text, start = text + p, len(text) - back
                spans.append((start, len(text)))
            else:
                text += " " + p if text else p
                spans.append((len(text) - len(p), len(text)))
        docs[f"d{d}"] = chunks_of_text(f"d{d}", text, spans)
        for c, v in zip(docs[f"d{d}"], unit(rng, len(spans))):
            vectors[c.id] = v
    ids = data.draw(st.permutations([c.id for cs in docs.values() for c in cs]))
    config = ContextConfig(
        budget_tokens=budget, expand=data.draw(st.sampled_from(["none", "neighbours", "section"])),
        mmr_lambda=data.draw(st.none() | st.floats(0, 1)), dedup_threshold=data.draw(st.none() | st.floats(0.5, 1)),
        separator=data.draw(st.sampled_from(["\n\n", "\n---\n", " ", ""])),
        template=data.draw(st.sampled_from(["{text}", "[{n}] {title} ({doc_id}, {start}-{end})\n{text}", "{section}{page}{text}"])))
    out = assembler.assemble(result_of(ids), config, Source(docs, vectors))
    counted = token_counter(DEFAULT_MODEL).count(out.text)
    assert out.tokens == counted <= budget
    assert len(out.passages) + len(out.dropped) <= len(ids)
    for p in out.passages:  # every passage is its chunks' text, from its offsets
        chunks = [c for c in docs[p.doc_id] if c.id in p.chunk_ids]
        assert p.start == chunks[0].start and p.end == max(c.end for c in chunks)


def test_a_budget_too_small_for_any_passage_gives_an_empty_context_saying_why(assembler):
    docs = {"d": chunks_of_text("d", "protein cancer cell risk " * 20, [(0, 99)])}
    out = assembler.assemble(result_of(["d#0"]), ContextConfig(budget_tokens=3), Source(docs, {"d#0": np.ones(4) / 2}))
    assert out.passages == [] and out.text == "" and out.tokens == 0
    assert [(d.id, d.reason) for d in out.dropped] == [("d#0", "over_budget")] and out.dropped[0].tokens > 3


# -- MMR ----------------------------------------------------------------------------------------------
def test_mmr_against_a_hand_computed_example():
    relevance = np.array([1.0, 0.9, 0.5])
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # 0 and 1 the same, 2 apart
    assert mmr(relevance, vectors, 1.0) == [0, 1, 2]  # relevance order
    # lambda 0: the first pick is a tie (no penalty yet): the lower index; then 2 (cosine 0 with 0), then 1
    assert mmr(relevance, vectors, 0.0) == [0, 2, 1]
    # lambda 0.5: after 0, 1 scores 0.45 - 0.5 = -0.05 and 2 scores 0.25 - 0 = 0.25
    assert mmr(relevance, vectors, 0.5) == [0, 2, 1]
    # lambda 0.9: 1 scores 0.81 - 0.1 = 0.71, 2 scores 0.45: relevance wins
    assert mmr(relevance, vectors, 0.9) == [0, 1, 2]
    assert mmr(relevance, vectors, 0.5, k=2) == [0, 2]


def reference_mmr(relevance, vectors, lam):
    """MMR as the paper writes it, in plain Python."""
    left, chosen = list(range(len(relevance))), []
    while left:
        def value(i):
            penalty = max((sum(a * b for a, b in zip(vectors[i], vectors[j])) for j in chosen), default=0.0)
            return lam * relevance[i] - (1 - lam) * penalty
        best = max(left, key=lambda i: (value(i), -i))
        chosen.append(best)
        left.remove(best)
    return chosen


@pytest.mark.parametrize("seed", range(8))
def test_mmr_matches_an_independent_reimplementation_on_random_vectors(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 25))
    relevance, vectors, lam = rng.random(n), unit(rng, n, 16), float(rng.random())
    assert mmr(relevance, vectors, lam) == reference_mmr(relevance.tolist(), vectors.tolist(), lam)


def test_near_duplicates_and_intra_list_similarity():
    v = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    assert near_duplicates(v, 0.99) == {1: (0, 1.0)}
    assert near_duplicates(v, 0.7) == {1: (0, 1.0), 3: (2, pytest.approx(0.8))}
    assert intra_list_similarity(v[:1]) is None
    assert intra_list_similarity(v[[0, 3]]) == pytest.approx(0.0)
    assert intra_list_similarity(v[[0, 1, 2]]) == pytest.approx((1.0 + 0.6 + 0.6) / 3)


def test_touching_chunks_merge_with_their_overlap_once():
    text = "Alpha one. Beta two. Gamma three.\n\nDelta four."
    chunks = chunks_of_text("d", text, [(0, 20), (11, 33), (35, 46)])
    assert merged_text(chunks[:2]) == text[0:33]  # the overlap "Beta two." once
    assert merged_text(chunks) == text  # a gap of blank lines kept as one
    assert merged_text([chunks[0], chunks[0]]) == chunks[0].text


def test_a_hit_bridging_two_passages_merges_them_into_the_first_ones_place(assembler):
    text = " ".join(f"word{i} protein." for i in range(5))
    spans, at = [], 0
    for piece in text.split(" word"):
        piece = piece if not spans else "word" + piece
        start = text.index(piece, at)
        spans.append((start, start + len(piece)))
        at = start + len(piece)
    docs = {"d": chunks_of_text("d", text, spans), "e": chunks_of_text("e", "heat flow.", [(0, 10)])}
    rng = np.random.default_rng(0)
    vectors = dict(zip(["d#0", "d#1", "d#2", "d#3", "d#4", "e#0"], unit(rng, 6)))
    config = ContextConfig(budget_tokens=1000, expand="neighbours", dedup_threshold=None)
    out = assembler.assemble(result_of(["d#0", "e#0", "d#4", "d#2"]), config, Source(docs, vectors))
    assert [p.chunk_ids for p in out.passages] == [["d#0", "d#1", "d#2", "d#3", "d#4"], ["e#0"]]
    assert out.passages[0].hits == ["d#0", "d#2", "d#4"] and out.passages[0].text == text
    assert out.passages[0].rank == 1 and out.passages[0].start == 0 and out.passages[0].end == len(text)


# -- a real collection -------------------------------------------------------------------------------
def section(rng, words=60):
    return "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(words // 3)) + "." for _ in range(3))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Markdown files cut into small chunks by the tiny model's tokenizer; beta.md copied as copy.md."""
    root = tmp_path_factory.mktemp("context")
    model = str(make_tiny_sentence_transformer(root / "st"))
    rng = random.Random(3)
    files = root / "files"
    files.mkdir()
    texts = {
        "alpha.md": f"# Alpha\n\n{section(rng)}\n\n# Proteins\n\nprotein cancer cell gene protein cancer.\n\n"
                    f"{section(rng)}\n\n# Wings\n\n{section(rng)}\n",
        "beta.md": "# Beta\n\nheat flow wing pressure boundary layer shock wave air speed.\n",
        "gamma.md": f"# Gamma\n\n{section(rng)}\n",
    }
    texts["copy.md"] = texts["beta.md"]
    for name, text in texts.items():
        (files / name).write_text(text)
    config = {"pipeline": [{"parallel": [{"type": "bm25", "name": "bm25", "k": 50},
                                         {"type": "dense", "name": "dense", "k": 50, "model": model, "index": "Flat"}]},
                           {"type": "pool", "name": "pool", "k": 50}]}
    from stagegraph.collection.ingest import ingest

    ingest([files], root / "c", pipeline=config, chunker=ChunkerConfig(max_tokens=24, overlap_tokens=6),
           progress=False, warn=lambda line: None)
    return root / "c", config, texts


@pytest.fixture(scope="module")
def stack(collection):
    root, config, _ = collection
    with sg.open(config, collection=root, watch=None) as s:
        yield s


def test_a_copied_file_is_dropped_as_a_near_duplicate(stack):
    ctx = stack.context("heat flow wing pressure shock wave", budget_tokens=200, candidates=10)
    docs = [p.doc_id for p in ctx.passages]
    assert ("beta.md" in docs) != ("copy.md" in docs)  # one of the two, not both
    duplicate = [d for d in ctx.dropped if d.reason == "duplicate"]
    assert {duplicate[0].id.split("#")[0], duplicate[0].duplicate_of.split("#")[0]} == {"beta.md", "copy.md"}
    assert duplicate[0].similarity == pytest.approx(1.0, abs=1e-5)
    off = stack.context("heat flow wing pressure shock wave", budget_tokens=200, candidates=10, dedup_threshold=None)
    assert {"beta.md", "copy.md"} <= {p.doc_id for p in off.passages}


def test_passages_carry_their_source_and_offsets_into_the_file(stack, collection):
    _, _, texts = collection
    ctx = stack.context("protein cancer cell gene", budget_tokens=300, candidates=10)
    assert ctx.passages and ctx.tokens <= 300 and ctx.generation == stack.generation
    assert ctx.tokenizer == stack.pipeline.step("dense").stage.config.model  # the dense model's, by default
    for p in ctx.passages:
        source = texts[p.doc_id][p.start:p.end]
        assert " ".join(p.text.split()) == " ".join(source.split())  # the file's text, whitespace aside
        assert p.chunk_ids and set(p.hits) <= set(p.chunk_ids)
    top = ctx.passages[0]
    assert top.doc_id == "alpha.md" and top.section == "Proteins"


def test_expansion_to_neighbours_and_to_the_section_merges_touching_chunks(stack, collection):
    _, _, texts = collection
    chunks = stack.current.chunks_of("alpha.md")
    hit = "protein cancer cell gene protein cancer"
    plain = stack.context(hit, budget_tokens=2000, candidates=1)
    assert plain.passages[0].chunk_ids == plain.passages[0].hits  # the hit alone
    index = int(plain.passages[0].hits[0].rsplit("#", 1)[1])
    near = stack.context(hit, budget_tokens=2000, candidates=1, expand="neighbours", neighbours=1)
    expected = [c.id for c in chunks[max(0, index - 1): index + 2]]
    assert near.passages[0].chunk_ids == expected and near.passages[0].expanded
    whole = stack.context(hit, budget_tokens=2000, candidates=1, expand="section")
    in_section = [c.id for c in chunks if c.metadata.get("section") == "Proteins"]
    assert whole.passages[0].chunk_ids == in_section and whole.passages[0].sections == ["Proteins"]
    p = whole.passages[0]
    assert " ".join(p.text.split()) == " ".join(texts["alpha.md"][p.start:p.end].split())
    # many hits of one document: touching ones are one passage, never two passages that touch
    many = stack.context("protein cancer cell gene wing pressure", budget_tokens=5000, candidates=30, dedup_threshold=None)
    ranges = {}
    for p in many.passages:
        idx = sorted(int(c.rsplit("#", 1)[1]) for c in p.chunk_ids)
        assert idx == list(range(idx[0], idx[-1] + 1))
        for lo, hi in ranges.get(p.doc_id, []):
            assert idx[0] > hi + 1 or idx[-1] < lo - 1, f"two passages of {p.doc_id} touch"
        ranges.setdefault(p.doc_id, []).append((idx[0], idx[-1]))
    assert sum(len(p.hits) for p in many.passages) > len(many.passages)  # some hits merged


def test_mmr_on_the_stack_reorders_and_reports_intra_list_similarity(stack):
    query = "protein cancer cell gene wing pressure"
    by_rank = stack.context(query, budget_tokens=5000, candidates=12, mmr_lambda=1.0)
    plain = stack.context(query, budget_tokens=5000, candidates=12)
    assert [p.hits for p in by_rank.passages] == [p.hits for p in plain.passages]  # lambda 1: rank order
    diverse = stack.context(query, budget_tokens=5000, candidates=12, mmr_lambda=0.0)
    assert diverse.mmr_lambda == 0.0 and diverse.intra_list_similarity is not None
    first = [h for p in diverse.passages for h in p.hits][:4]
    first_plain = [h for p in plain.passages for h in p.hits][:4]
    assert (intra_list_similarity(stack.chunk_vectors(first))
            <= intra_list_similarity(stack.chunk_vectors(first_plain)) + 1e-6)


@pytest.mark.parametrize(("options", "says"), [
    ({"budget_tokens": 0}, "budget_tokens"),
    ({"budget_tokens": 10, "tokenizer": "no-such/tokenizer"}, "unknown tokenizer 'no-such/tokenizer'"),
    ({"budget_tokens": 10, "template": "{text} {score}"}, "{score}"),
    ({"budget_tokens": 10, "mmr_lambda": 2}, "mmr_lambda"),
    ({"budget_tokens": 10, "expand": "chapter"}, "expand"),
])
def test_bad_input_is_one_clear_error(stack, options, says):
    with pytest.raises(InputError) as caught:
        stack.context("protein", **options)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_tokenizer_is_loaded_once_not_per_call(stack, monkeypatch):
    from stagegraph.collection import context

    stack.context("protein", budget_tokens=50)
    made = []
    monkeypatch.setattr(context, "TokenCounter", lambda name: made.append(name))
    for _ in range(5):
        stack.context("protein", budget_tokens=50)
    assert made == []


def test_ils_beside_ndcg_for_the_context(stack):
    from stagegraph.evaluation.diversity import evaluate_context, ndcg_at

    import pytrec_eval

    judged = {"alpha.md": 2, "beta.md": 1}
    run = ["gamma.md", "alpha.md", "alpha.md", "copy.md", "beta.md"]
    expected = pytrec_eval.RelevanceEvaluator({"q": judged}, {"ndcg_cut.3"}).evaluate(
        {"q": {d: float(10 - i) for i, d in enumerate(dict.fromkeys(run))}})["q"]["ndcg_cut_3"]
    assert ndcg_at(run, judged, 3) == pytest.approx(expected)
    report = evaluate_context(stack, {"q1": "protein cancer cell", "q2": "wing pressure shock"},
                              {"q1": {"alpha.md": 2}, "q2": {"beta.md": 1, "copy.md": 1}},
                              budget_tokens=400, k=5, mmr_lambda=0.3)
    assert report["queries"] == 2
    for name in ("search", "context"):
        assert 0.0 <= report[name]["ndcg@5"] <= 1.0 and -1.0 <= report[name]["ils@5"] <= 1.0
    assert math.isfinite(report["context"]["ils@5"])


# -- over HTTP ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(collection):
    from fastapi.testclient import TestClient

    from stagegraph.serve.app import create_app
    from stagegraph.serve.service import Service
    from stagegraph.serve.settings import Limits, ServeSettings

    root, config, _ = collection
    service = Service.open(config, root, ServeSettings(limits=Limits(max_k=50)), pin_threads=False)
    try:
        with TestClient(create_app(service)) as c:
            yield c, service
    finally:
        service.close()


def test_the_http_route_answers_as_the_stack_does(client):
    c, service = client
    body = {"query": "protein cancer cell gene", "budget_tokens": 120, "mmr_lambda": 0.5, "expand": "neighbours"}
    answer = c.post("/v1/context", json=body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    same = service.stack.context("protein cancer cell gene", 120, mmr_lambda=0.5, expand="neighbours")
    assert got["text"] == same.text and got["tokens"] == same.tokens <= 120
    assert [p["chunk_ids"] for p in got["passages"]] == [p.chunk_ids for p in same.passages]
    assert {"doc_id", "section", "page", "start", "end", "score"} <= set(got["passages"][0])
    assert "context" in answer.headers["server-timing"] and got["queue_ms"] >= 0


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"query": "protein", "budget_tokens": 0}, 422, "invalid_value", "budget_tokens"),
    ({"query": "protein", "budget_tokens": 10, "candidates": 51}, 422, "k_out_of_range", "candidates"),
    ({"query": " ", "budget_tokens": 10}, 422, "empty_query", "query"),
    ({"query": "protein", "budget_tokens": 10, "template": "{bogus}"}, 422, "invalid_input", None),
    ({"query": "protein", "budget_tokens": 10, "tokenizer": "x"}, 422, "unknown_field", "tokenizer"),
])
def test_a_bad_context_request_is_a_clean_422(client, body, status, code, field):
    c, _ = client
    answer = c.post("/v1/context", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error.get("field") == field
