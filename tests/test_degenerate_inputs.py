"""Degenerate and malformed datasets through the real command line: one line, the right exit code.

Every case builds a small BEIR folder in `tmp_path`, breaks one thing in it, and runs
`stagegraph --quiet --work-dir W eval configs/bm25.yaml --dataset D` through
`stagegraph.cli.app.main`. A failure the user caused must come back as exit 2 (bad input) or 3 (a
stage that cannot run), as exactly one line on stderr that names the file (and line, where there is
one), the problem and the fix, and never as a traceback or exit 4 ("a bug"). Inputs that are odd but
valid (a byte-order mark, CRLF, one document, judgments naming documents absent from the corpus,
stopword-only queries) must load and be scored as trec_eval would. Direct loader tests cover what the
command line cannot reach (an unreadable file when running as root, TREC topics and run files).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from stagegraph.cli.app import main
from stagegraph.corpora.beir import load_beir
from stagegraph.corpora.download import DownloadError, download_beir
from stagegraph.corpora.jsonl import read_corpus, read_queries
from stagegraph.corpora.qrels import DataWarning, read_beir_qrels, read_qrels
from stagegraph.corpora.registry import load_dataset
from stagegraph.corpora.trec import read_run, read_topics, write_run
from stagegraph.corpora.types import Corpus, DataError
from stagegraph.indexes.bm25 import BM25Index
from stagegraph.pipeline.ranking import Ranking
from stagegraph.stages.base import EmptyQueryWarning

REPO = Path(__file__).resolve().parents[1]
BM25 = str(REPO / "configs" / "bm25.yaml")
HYBRID = str(REPO / "configs" / "hybrid.yaml")

DOCS = [
    {"_id": "d0", "title": "Lexical retrieval", "text": "ranking documents with bm25 and an inverted index"},
    {"_id": "d1", "title": "Dense retrieval", "text": "neural embeddings of passages searched with faiss"},
    {"_id": "d2", "title": "Wind tunnels", "text": "aerodynamics experiments on slender wings"},
    {"_id": "d3", "title": "Oncology", "text": "medical abstracts about tumour growth"},
    {"_id": "d4", "title": "Journals", "text": "communications of the computing machinery association"},
]
QUERIES = [{"_id": "q1", "text": "bm25 ranking"}, {"_id": "q2", "text": "neural embeddings"}]
HEADER = "query-id\tcorpus-id\tscore\n"
QRELS = HEADER + "q1\td0\t1\nq2\td1\t2\n"
CORPUS_EXAMPLE = '{"_id": "d1", "title": "...", "text": "..."}'
QUERY_EXAMPLE = '{"_id": "q1", "text": "..."}'
SHAPE = "header query-id<TAB>corpus-id<TAB>score, one row per judged pair"


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode("utf-8")


def make_dataset(
    root: Path,
    *,
    corpus: bytes | None = jsonl(DOCS),
    queries: bytes | None = jsonl(QUERIES),
    qrels: dict[str, bytes] | None = None,
) -> Path:
    """A BEIR folder; `None` leaves a file out, `qrels=None` gives the default test split."""
    root.mkdir(parents=True)
    if corpus is not None:
        (root / "corpus.jsonl").write_bytes(corpus)
    if queries is not None:
        (root / "queries.jsonl").write_bytes(queries)
    qrels = {"test": QRELS.encode()} if qrels is None else qrels
    if qrels != {"<no folder>": b""}:
        (root / "qrels").mkdir()
        for split, data in qrels.items():
            (root / "qrels" / f"{split}.tsv").write_bytes(data)
    return root


NO_QRELS_FOLDER = {"<no folder>": b""}


def run_eval(capsys, tmp_path: Path, dataset: Path | str, config: str = BM25, *extra: str) -> tuple[int, str, str]:
    code = main(["--quiet", "--work-dir", str(tmp_path / "work"), "eval", config, "--dataset", str(dataset),
                 "--out", str(tmp_path / "out"), "--no-cache", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def the_error(err: str) -> str:
    """The one line printed on stderr, without its `error: ` prefix; fails on anything else."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0][len("error: "):]


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "report.json").read_text())


# -- failures: exit 2, one line naming the file, the line and the fix ----------------------------------
# (case id, how the dataset is broken, the exact message with {root} for the dataset folder, or a regex)
BAD = [
    ("empty-corpus", dict(corpus=b""),
     f"{{root}}/corpus.jsonl: no documents (the file is empty or only blank lines); write one JSON object per "
     f"line, such as {CORPUS_EXAMPLE}."),
    ("blank-corpus", dict(corpus=b"\n   \n\r\n"),
     f"{{root}}/corpus.jsonl: no documents (the file is empty or only blank lines); write one JSON object per "
     f"line, such as {CORPUS_EXAMPLE}."),
    ("all-documents-empty", dict(corpus=jsonl([{"_id": f"d{i}", "title": "", "text": " "} for i in range(3)])),
     "{root}/corpus.jsonl: all 3 documents have an empty 'title' and 'text', so no retriever can find any; "
     "give the documents their text."),
    ("not-json", dict(corpus=jsonl(DOCS[:2] + ["{not json"])),
     re.compile(r"\{root\}/corpus\.jsonl:3: invalid JSON \(.+ at column 2\)\. Each line must be one JSON object, "
                r"such as " + re.escape(CORPUS_EXAMPLE) + r"\.")),
    ("truncated-last-line", dict(corpus=jsonl(DOCS[:2]) + b'{"_id": "d9", "te'),
     re.compile(r"\{root\}/corpus\.jsonl:3: invalid JSON \(Unterminated string starting at column 15\)\. .+")),
    ("not-an-object", dict(corpus=jsonl(DOCS[:2] + ["[1, 2]"])),
     f"{{root}}/corpus.jsonl:3: expected a JSON object, got an array ([1, 2]); each line must be one object, "
     f"such as {CORPUS_EXAMPLE}."),
    ("no-id", dict(corpus=jsonl(DOCS[:2] + [{"title": "t", "text": "x"}])),
     "{root}/corpus.jsonl:3: missing field '_id' (keys present: 'title', 'text'); give every record an id."),
    ("id-not-underscore", dict(corpus=jsonl([{"id": "d0", "text": "x"}])),
     "{root}/corpus.jsonl:1: missing field '_id' (keys present: 'id', 'text'); give every record an id."),
    ("empty-id", dict(corpus=jsonl(DOCS[:2] + [{"_id": "", "text": "x"}])),
     "{root}/corpus.jsonl:3: field '_id' is empty; every record needs a non-empty id."),
    ("id-with-space", dict(corpus=jsonl(DOCS[:2] + [{"_id": "d 9", "text": "x"}])),
     "{root}/corpus.jsonl:3: id 'd 9' contains whitespace, which TREC run and qrels files cannot hold; "
     "remove the spaces from the id (and from the qrels that name it)."),
    ("id-is-a-float", dict(corpus=jsonl(DOCS[:2] + [{"_id": 1.5, "text": "x"}])),
     "{root}/corpus.jsonl:3: field '_id' must be a string, got a number (1.5); write the id as a JSON string."),
    ("text-is-a-list", dict(corpus=jsonl(DOCS[:2] + [{"_id": "d9", "text": ["a", "b"]}])),
     '{root}/corpus.jsonl:3: field \'text\' must be a string, got an array (["a", "b"]); write it as a JSON '
     'string ("text": "" for no text).'),
    ("text-is-a-number", dict(corpus=jsonl(DOCS[:2] + [{"_id": "d9", "text": 42}])),
     '{root}/corpus.jsonl:3: field \'text\' must be a string, got a number (42); write it as a JSON string '
     '("text": "" for no text).'),
    ("text-is-null", dict(corpus=jsonl(DOCS[:2] + [{"_id": "d9", "text": None}])),
     '{root}/corpus.jsonl:3: field \'text\' must be a string, got null; write it as a JSON string '
     '("text": "" for no text).'),
    ("title-is-an-object", dict(corpus=jsonl(DOCS[:2] + [{"_id": "d9", "title": {"a": 1}, "text": "x"}])),
     '{root}/corpus.jsonl:3: field \'title\' must be a string, got an object ({"a": 1}); write it as a JSON '
     'string ("title": "" for no text).'),
    ("no-text", dict(corpus=jsonl(DOCS[:2] + [{"_id": "d9", "title": "t"}])),
     '{root}/corpus.jsonl:3: missing field \'text\' (keys present: \'_id\', \'title\'); add it ("text": "" for '
     'no text).'),
    ("duplicate-document-id", dict(corpus=jsonl(DOCS[:2] + [DOCS[0]])),
     "{root}/corpus.jsonl:3: duplicate document id 'd0' (first seen on line 1); ids must be unique: remove or "
     "rename one."),
    ("corpus-not-utf8", dict(corpus=jsonl(DOCS[:2]) + '{"_id": "d9", "text": "café"}\n'.encode("latin-1")),
     "{root}/corpus.jsonl:3: not UTF-8 text: byte 0xe9 at column 27 cannot be decoded; save the file as UTF-8."),
    ("corpus-utf16", dict(corpus="".join(json.dumps(d) + "\n" for d in DOCS).encode("utf-16")),
     "{root}/corpus.jsonl:1: not UTF-8 text (it looks like UTF-16): byte 0xff at column 1 cannot be decoded; "
     "save the file as UTF-8."),
    ("nul-bytes", dict(corpus=jsonl(DOCS) + b"\x00\x00\n"),
     re.compile(r"\{root\}/corpus\.jsonl:6: invalid JSON \(.+ at column 1\)\. .+")),
    ("empty-queries", dict(queries=b""),
     f"{{root}}/queries.jsonl: no queries (the file is empty or only blank lines); write one JSON object per "
     f"line, such as {QUERY_EXAMPLE}."),
    ("queries-all-empty-strings", dict(queries=jsonl([{"_id": "q1", "text": ""}, {"_id": "q2", "text": "  "}])),
     "{root}/queries.jsonl: all 2 queries have an empty 'text'; give the queries their text."),
    ("duplicate-query-id", dict(queries=jsonl(QUERIES + QUERIES[:1])),
     "{root}/queries.jsonl:3: duplicate query id 'q1' (first seen on line 1); ids must be unique: remove or "
     "rename one."),
    ("query-without-text", dict(queries=jsonl(QUERIES + [{"_id": "q3"}])),
     '{root}/queries.jsonl:3: missing field \'text\' (keys present: \'_id\'); add it ("text": "" for no text).'),
    ("query-id-with-tab", dict(queries=jsonl(QUERIES + [{"_id": "q\t3", "text": "x"}])),
     "{root}/queries.jsonl:3: id 'q\\t3' contains whitespace, which TREC run and qrels files cannot hold; "
     "remove the spaces from the id (and from the qrels that name it)."),
    ("queries-not-utf8", dict(queries=jsonl(QUERIES[:1]) + '{"_id": "q2", "text": "naïve"}\n'.encode("latin-1")),
     "{root}/queries.jsonl:2: not UTF-8 text: byte 0xef at column 26 cannot be decoded; save the file as UTF-8."),
    ("qrels-header-misspelt", dict(qrels={"test": b"query_id\tcorpus_id\tscore\nq1\td0\t1\n"}),
     "{root}/qrels/test.tsv:1: the first line 'query_id\\tcorpus_id\\tscore' is neither the header "
     "'query-id<TAB>corpus-id<TAB>score' nor a judgment row; spell the header exactly so (tab-separated) or "
     "remove it."),
    ("qrels-header-with-spaces", dict(qrels={"test": b"query-id corpus-id score\nq1\td0\t1\n"}),
     "{root}/qrels/test.tsv:1: the first line 'query-id corpus-id score' is neither the header "
     "'query-id<TAB>corpus-id<TAB>score' nor a judgment row; spell the header exactly so (tab-separated) or "
     "remove it."),
    ("qrels-grade-word", dict(qrels={"test": (HEADER + "q1\td0\thigh\n").encode()}),
     "{root}/qrels/test.tsv:2: relevance grade 'high' is not an integer; the third column must be a whole number "
     "(0 or less: not relevant, 1 or more: relevant)."),
    ("qrels-grade-fraction", dict(qrels={"test": (HEADER + "q1\td0\t1\nq2\td1\t0.5\n").encode()}),
     "{root}/qrels/test.tsv:3: relevance grade '0.5' is not an integer; the third column must be a whole number "
     "(0 or less: not relevant, 1 or more: relevant)."),
    ("qrels-two-columns", dict(qrels={"test": (HEADER + "q1\td0\n").encode()}),
     "{root}/qrels/test.tsv:2: expected 3 tab-separated columns 'query-id corpus-id score', got 'q1\\td0'; "
     "separate the three columns with single tabs."),
    ("qrels-space-separated", dict(qrels={"test": (HEADER + "q1\td0\t1\nq2 d1 1\n").encode()}),
     "{root}/qrels/test.tsv:3: expected 3 tab-separated columns 'query-id corpus-id score', got 'q2 d1 1'; "
     "separate the three columns with single tabs."),
    ("qrels-four-columns", dict(qrels={"test": (HEADER + "q1\t0\td0\t1\n").encode()}),
     "{root}/qrels/test.tsv:2: expected 3 tab-separated columns 'query-id corpus-id score', got 'q1\\t0\\td0\\t1'; "
     "separate the three columns with single tabs."),
    ("qrels-pair-twice", dict(qrels={"test": (HEADER + "q1\td0\t1\nq1\td0\t2\n").encode()}),
     "{root}/qrels/test.tsv:3: query 'q1' judges document 'd0' twice (first on line 2); keep one row."),
    ("qrels-empty", dict(qrels={"test": b""}),
     "{root}/qrels/test.tsv: no judgments (the file is empty or holds only a header); add one row per judged "
     "pair: query-id<TAB>corpus-id<TAB>score."),
    ("qrels-header-only", dict(qrels={"test": HEADER.encode()}),
     "{root}/qrels/test.tsv: no judgments (the file is empty or holds only a header); add one row per judged "
     "pair: query-id<TAB>corpus-id<TAB>score."),
    ("qrels-only-grade-zero", dict(qrels={"test": (HEADER + "q1\td0\t0\nq2\td1\t-1\n").encode()}),
     "{root}/qrels/test.tsv: no judgment has a grade of 1 or more (grades <= 0 mean not relevant, as in "
     "trec_eval), so no query can be evaluated; give each judged query at least one relevant document."),
    ("qrels-no-query-in-queries-file", dict(qrels={"test": (HEADER + "q8\td0\t1\nq9\td1\t1\n").encode()}),
     "{root}/qrels/test.tsv: none of its 2 judged queries is in {root}/queries.jsonl (e.g. 'q8', 'q9'); the "
     "first column must hold the query ids ('_id') of the queries file."),
    ("qrels-not-utf8", dict(qrels={"test": QRELS.encode() + "q1\td\xe9\t1\n".encode("latin-1")}),
     "{root}/qrels/test.tsv:4: not UTF-8 text: byte 0xe9 at column 5 cannot be decoded; save the file as UTF-8."),
    ("split-file-absent", dict(qrels={"train": QRELS.encode()}),
     "Dataset '{name}' has no split 'test'; available: train. Evaluate one of those (--split train), or add the "
     "judgments as qrels/test.tsv in its folder."),
    ("qrels-folder-absent", dict(qrels=NO_QRELS_FOLDER),
     f"Dataset '{{name}}' has no qrels, so no split 'test' to evaluate; put the judgments in its folder as "
     f"qrels/test.tsv ({SHAPE})."),
    ("qrels-folder-empty", dict(qrels={}),
     f"{{root}}/qrels: no <split>.tsv qrels files (it is empty); put the judgments in qrels/test.tsv ({SHAPE})."),
    ("corpus-file-absent", dict(corpus=None),
     "{root}: not a BEIR directory, missing corpus.jsonl (expected corpus.jsonl, queries.jsonl and "
     "qrels/<split>.tsv); add them, or pass the folder that holds them."),
    ("queries-file-absent", dict(queries=None),
     "{root}: not a BEIR directory, missing queries.jsonl (expected corpus.jsonl, queries.jsonl and "
     "qrels/<split>.tsv); add them, or pass the folder that holds them."),
]


@pytest.mark.parametrize(("case", "broken", "expected"), BAD, ids=[c[0] for c in BAD])
def test_malformed_dataset_is_one_line_exit_2(capsys, tmp_path, case, broken, expected):
    root = make_dataset(tmp_path / "ds", **broken)
    code, _, err = run_eval(capsys, tmp_path, root)
    message = the_error(err)
    assert code == 2, (code, message)
    if isinstance(expected, re.Pattern):
        pattern = expected.pattern.replace(r"\{root\}", re.escape(str(root)))
        assert re.fullmatch(pattern, message), message
    else:
        assert message == expected.replace("{root}", str(root)).replace("{name}", root.name)


def test_a_file_for_a_dataset_folder(capsys, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("hello")
    code, _, err = run_eval(capsys, tmp_path, path)
    assert code == 2
    assert the_error(err) == (
        f"{path}: is a file, not a dataset folder; pass the folder that holds corpus.jsonl, queries.jsonl and "
        "qrels/<split>.tsv."
    )


def test_a_folder_that_does_not_exist(capsys, tmp_path):
    code, _, err = run_eval(capsys, tmp_path, tmp_path / "absent")
    assert code == 2
    assert the_error(err).startswith(f"No dataset '{tmp_path / 'absent'}'. Looked at: - {tmp_path / 'absent'} (not a directory)")


@pytest.mark.parametrize("entry", ["corpus.jsonl", "qrels/test.tsv"])
def test_a_folder_where_a_file_belongs(capsys, tmp_path, entry):
    root = make_dataset(tmp_path / "ds", **({"corpus": None} if entry == "corpus.jsonl" else {"qrels": {}}))
    (root / entry).mkdir()
    code, _, err = run_eval(capsys, tmp_path, root)
    assert code == 2
    if entry == "corpus.jsonl":
        expected = f"{root}/corpus.jsonl: is a directory, not a file; corpus.jsonl must be a JSONL file (one JSON object per line)."
    else:
        expected = f"{root}/qrels: no <split>.tsv qrels files (it holds test.tsv/); put the judgments in qrels/test.tsv ({SHAPE})."
    assert the_error(err) == expected


def test_a_huge_malformed_qrels_line_still_makes_a_short_message(capsys, tmp_path):
    huge = "q1\t" + "x" * 1_000_000
    root = make_dataset(tmp_path / "ds", qrels={"test": (HEADER + huge + "\n").encode()})
    code, _, err = run_eval(capsys, tmp_path, root)
    message = the_error(err)
    assert code == 2
    assert message.startswith(f"{root}/qrels/test.tsv:2: expected 3 tab-separated columns")
    assert "... (1,000,003 characters)" in message and len(message) < 400


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_an_unreadable_corpus(capsys, tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "corpus.jsonl").chmod(0)
    try:
        code, _, err = run_eval(capsys, tmp_path, root)
    finally:
        (root / "corpus.jsonl").chmod(0o644)
    assert code == 2
    assert the_error(err) == (
        f"{root}/corpus.jsonl: cannot read the corpus file (Permission denied); make it readable (check its permissions)."
    )


def test_an_unreadable_file_is_one_line_even_as_root(capsys, tmp_path, monkeypatch):
    """The same path as `chmod 000` for a user who is not root: opening the file raises PermissionError."""
    root = make_dataset(tmp_path / "ds")
    real_read_bytes = Path.read_bytes

    def refuse(self):
        if self.name == "test.tsv":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    code, _, err = run_eval(capsys, tmp_path, root)
    assert code == 2
    assert the_error(err) == (
        f"{root}/qrels/test.tsv: cannot read the qrels file (Permission denied); make it readable (check its permissions)."
    )


def test_a_corpus_of_stopwords_cannot_be_indexed_by_bm25(capsys, tmp_path):
    root = make_dataset(tmp_path / "ds", corpus=jsonl([{"_id": "d0", "title": "The", "text": "of and a I"}]),
                        qrels={"test": (HEADER + "q1\td0\t1\n").encode()})
    code, _, err = run_eval(capsys, tmp_path, root)
    assert code == 2
    assert the_error(err) == (
        "stage 'bm25': cannot build a BM25 index: after analysis no document has any term (1 document, each empty or only "
        "stopwords, punctuation and one-letter words); check the corpus' title/text fields, or the tokenizer "
        "settings (stopwords, pattern)."
    )


# -- odd but valid: loads and is scored like trec_eval -------------------------------------------------
def metrics(tmp_path: Path, stage: str = "bm25") -> dict:
    return report(tmp_path)["stages"][stage]["metrics"]


def test_bom_and_crlf_load_like_the_clean_files(capsys, tmp_path):
    clean = load_beir(make_dataset(tmp_path / "clean"), progress=False)
    bom = b"\xef\xbb\xbf"
    crlf = lambda data: data.replace(b"\n", b"\r\n")  # noqa: E731
    root = make_dataset(tmp_path / "odd", corpus=bom + crlf(jsonl(DOCS)), queries=bom + crlf(jsonl(QUERIES)),
                        qrels={"test": bom + crlf(QRELS.encode())})
    odd = load_beir(root, progress=False)
    assert odd.corpus.fingerprint == clean.corpus.fingerprint  # same ids, titles, texts: no BOM, no \r
    assert (odd.queries.ids, odd.queries.texts) == (clean.queries.ids, clean.queries.texts)
    assert odd.qrels["test"].judgments == clean.qrels["test"].judgments == {"q1": {"d0": 1}, "q2": {"d1": 2}}
    code, _, err = run_eval(capsys, tmp_path, root)
    assert (code, err) == (0, "")
    assert metrics(tmp_path)["recall@10"] == 1.0


def test_qrels_without_header_load_every_row(tmp_path):
    ds = load_beir(make_dataset(tmp_path / "ds", qrels={"test": b"q1\td0\t1\nq2\td1\t2\n"}), progress=False)
    assert ds.qrels["test"].judgments == {"q1": {"d0": 1}, "q2": {"d1": 2}}  # the first row is not eaten as a header


def test_a_one_document_corpus(capsys, tmp_path):
    root = make_dataset(tmp_path / "ds", corpus=jsonl(DOCS[:1]), qrels={"test": (HEADER + "q1\td0\t1\n").encode()})
    code, _, err = run_eval(capsys, tmp_path, root)
    assert (code, err) == (0, "")
    assert report(tmp_path)["corpus_docs"] == 1
    assert metrics(tmp_path) == {"recall@10": 1.0, "recall@100": 1.0, "ndcg@10": 1.0, "mrr@10": 1.0, "map": 1.0,
                                 "judged@10": 1.0}


def test_judgments_of_documents_absent_from_the_corpus_count_as_missing_docs(capsys, tmp_path):
    qrels = HEADER + "q1\td0\t1\nq1\tgone\t1\nq2\td1\t2\n"
    root = make_dataset(tmp_path / "ds", qrels={"test": qrels.encode()})
    with pytest.warns(DataWarning, match=r"test.tsv: 1 of 3 relevant judgments name documents missing from the corpus"):
        ds = load_beir(root, progress=False)
    assert ds.qrels["test"].missing_docs == 1
    assert ds.qrels["test"].judgments["q1"] == {"d0": 1, "gone": 1}
    with pytest.warns(DataWarning, match="missing from the corpus"):
        code, _, err = run_eval(capsys, tmp_path, root)
    assert (code, err) == (0, "")
    # trec_eval: the absent document stays in q1's recall denominator (1/2), q2 finds its one (1/1).
    assert metrics(tmp_path)["recall@100"] == pytest.approx(0.75)


def test_judgments_of_queries_absent_from_the_queries_file_are_left_out(capsys, tmp_path):
    qrels = HEADER + "q1\td0\t1\nq404\td1\t1\n"
    root = make_dataset(tmp_path / "ds", qrels={"test": qrels.encode()})
    with pytest.warns(DataWarning, match=r"1 judged queries are not in the queries file and are left out \(e.g. 'q404'\)"):
        code, _, err = run_eval(capsys, tmp_path, root)
    assert (code, err) == (0, "")
    assert report(tmp_path)["queries"] == 1


def test_stopword_only_queries_rank_nothing_in_bm25_and_are_counted_missing(capsys, tmp_path):
    queries = jsonl([{"_id": "q1", "text": "the of and"}, {"_id": "q2", "text": "neural embeddings"}])
    root = make_dataset(tmp_path / "ds", queries=queries)
    with pytest.warns(EmptyQueryWarning, match="BM25 query 'q1' has no terms after analysis"):
        code, _, err = run_eval(capsys, tmp_path, root)
    assert (code, err) == (0, "")
    assert report(tmp_path)["stages"]["bm25"]["missing"] == 1
    assert metrics(tmp_path)["recall@10"] == 0.5


def test_a_huge_document_line(capsys, tmp_path):
    huge = {"_id": "dhuge", "title": "", "text": " ".join(["zeppelin"] * 600_000)}  # a 5 MB line
    root = make_dataset(tmp_path / "ds", corpus=jsonl(DOCS + [huge]),
                        queries=jsonl(QUERIES + [{"_id": "q3", "text": "zeppelin"}]),
                        qrels={"test": (QRELS + "q3\tdhuge\t1\n").encode()})
    code, _, err = run_eval(capsys, tmp_path, root)
    assert (code, err) == (0, "")
    assert metrics(tmp_path)["recall@10"] == 1.0


@pytest.mark.slow
def test_dense_path_on_one_document_and_on_stopword_queries(capsys, tmp_path):
    """configs/hybrid.yaml (BM25 | MiniLM -> RRF): k=100 over a 1-document corpus, and queries BM25 cannot read."""
    root = make_dataset(tmp_path / "one", corpus=jsonl(DOCS[:1]), qrels={"test": (HEADER + "q1\td0\t1\n").encode()})
    code, _, err = run_eval(capsys, tmp_path, root, HYBRID)
    assert (code, err) == (0, "")
    for stage in ("bm25", "dense", "pool"):
        assert metrics(tmp_path, stage)["recall@100"] == 1.0, stage
    queries = jsonl([{"_id": "q1", "text": "to be or not to be"}, {"_id": "q2", "text": "is it a"}])
    root = make_dataset(tmp_path / "stop", queries=queries)
    with pytest.warns(EmptyQueryWarning):
        code, _, err = run_eval(capsys, tmp_path, root, HYBRID)
    assert (code, err) == (0, "")
    stages = report(tmp_path)["stages"]
    assert (stages["bm25"]["missing"], stages["dense"]["missing"], stages["pool"]["missing"]) == (2, 0, 0)


@pytest.mark.slow
def test_a_trained_faiss_index_on_one_document_is_a_stage_error(capsys, tmp_path):
    config = tmp_path / "ivfpq.yaml"
    config.write_text("pipeline:\n  - {type: dense, name: dense, k: 10, index: 'IVF1024,PQ32'}\n")
    root = make_dataset(tmp_path / "ds", corpus=jsonl(DOCS[:1]), qrels={"test": (HEADER + "q1\td0\t1\n").encode()})
    code, _, err = run_eval(capsys, tmp_path, root, str(config))
    assert code == 3, err
    assert "cannot build the FAISS index 'IVF1024,PQ32' over 1 documents" in the_error(err)
    assert "use index 'Flat' for a corpus this small" in the_error(err)


# -- loaders directly: what the command line does not reach --------------------------------------------
def test_readers_name_the_file_kind_when_a_folder_or_nothing_is_there(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/dir.jsonl: is a directory, not a corpus file")):
        read_corpus(tmp_path / "dir.jsonl")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/none.jsonl: queries file not found.")):
        read_queries(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/none.tsv: qrels file not found.")):
        read_beir_qrels(tmp_path / "none.tsv")


def test_unreadable_corpus_via_open(tmp_path, monkeypatch):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl(DOCS))
    real_open = open

    def refuse(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(DataError, match=re.escape(
            f"{path}: cannot read the corpus file (Permission denied); make it readable (check its permissions).")):
        read_corpus(path)


def test_trec_qrels_empty_and_bom(tmp_path):
    empty = tmp_path / "qrels.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=re.escape(f"{empty}: no judgments (the file is empty or holds only a header); "
                                                  "add one row per judged pair: qid 0 docid grade.")):
        read_qrels(empty)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf301 0 FT1 2\r\n302 0 FT2 1\r\n")
    assert read_qrels(bom) == {"301": {"FT1": 2}, "302": {"FT2": 1}}


def test_trec_topics_and_runs_that_are_not_utf8(tmp_path):
    topics = tmp_path / "topics.tsv"
    topics.write_bytes("1\tgguf\n2\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=re.escape(f"{topics}:2: not UTF-8 text: byte 0xe9 at column 6")):
        read_topics(topics)
    run = tmp_path / "run.trec"
    run.write_bytes(b"q1 Q0 d\xe9 1 2.0 r\n")
    with pytest.raises(DataError, match=re.escape(f"{run}:1: not UTF-8 text: byte 0xe9 at column 8")):
        read_run(run)
    with pytest.raises(DataError, match=re.escape("unknown topic field(s) ['summary']")):
        topics.write_text("<top>\n<num> 1\n<title> a\n</top>\n")
        read_topics(topics, field="summary")


def test_write_run_refuses_ids_it_cannot_write(tmp_path):
    corpus = Corpus(["ok", "not ok"], ["", ""], ["a", "b"])
    rankings = [Ranking.from_scores(np.array([0, 1]), np.array([2.0, 1.0]))]
    with pytest.raises(DataError, match=re.escape("document id 'not ok' is empty or contains whitespace")):
        write_run(tmp_path / "r.trec", "run", ["q1"], rankings, corpus)
    with pytest.raises(DataError, match=re.escape("query id 'q 1' is empty or contains whitespace")):
        write_run(tmp_path / "r.trec", "run", ["q 1"], [Ranking.from_scores(np.array([0]), np.array([1.0]))], corpus)
    assert not (tmp_path / "r.trec").exists()


def test_bm25_index_refuses_empty_and_termless_corpora_as_data_errors():
    with pytest.raises(DataError, match=re.escape("cannot build a BM25 index over an empty corpus (0 documents)")):
        BM25Index.build(Corpus([], [], []))
    for backend in ("sparse", "rank_bm25"):
        with pytest.raises(DataError, match=re.escape("no document has any term (2 documents, each empty")):
            BM25Index.build(Corpus(["a", "b"], ["", "The"], ["of and", "!"]), backend=backend)
    one = BM25Index.build(Corpus(["a"], [""], ["zeppelin hangar"]))
    hits = one.search("zeppelin", k=100)
    assert hits.rows.tolist() == [0] and hits.scores[0] > 0


def test_download_cache_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DownloadError, match=re.escape(f"{blocker / 'inner'}: cannot write the download cache (")):
        download_beir("scifact", blocker / "inner", opener=lambda url, timeout: None, progress=False)


def test_known_beir_name_says_how_to_download_from_the_command_line(monkeypatch, tmp_path):
    monkeypatch.setenv("STAGEGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("stagegraph.corpora.registry._SIBLING_SHARED", tmp_path / "no-shared")
    with pytest.raises(DataError, match=re.escape("'nfcorpus' is a public BEIR dataset; --download (load_dataset('nfcorpus', download=True)) fetches it")):
        load_dataset("nfcorpus")
