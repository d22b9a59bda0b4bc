"""RM3 (and plain BM25) of stagegraph against Pyserini 0.25's, on the same analysed text.

    .venv/bin/python benchmarks/prf_parity.py export --dataset ../shared/datasets/scifact --work /tmp/prf/scifact
    /tmp/pyserini-venv/bin/python benchmarks/prf_parity.py pyserini --work /tmp/prf/scifact
    .venv/bin/python benchmarks/prf_parity.py compare --dataset ../shared/datasets/scifact --work /tmp/prf/scifact

`export` (the project's venv) writes every document and query analysed by our BM25 tokenizer
(configs/bm25.yaml's: lower-cased words of 2+ characters, Lucene's English stopwords, Snowball
English stemmer) as space-separated terms. `pyserini` (a separate venv holding pyserini==0.25.0 and
Java 17; it imports only `pyserini.pyclass`, so no torch is needed) indexes those with Anserini's
`IndexCollection -pretokenized -storeDocvectors` (whitespace analysis: Lucene holds exactly our
terms) and searches them with `SimpleSearcher` (what `LuceneSearcher` wraps): BM25 k1=0.9, b=0.4,
then with `set_rm3(fb_terms, fb_docs, original_query_weight)`, then with `set_rocchio(fb_terms,
fb_docs)` (alpha 1, beta 0.75, gamma 0), top 100, writing three TREC run files. `compare` runs ours
with the same settings and prints nDCG@10 and R@100 of all six runs over the test qrels. So the comparison is of BM25 and the feedback alone, not of analyzers;
what remains is Lucene's one-byte document-length norms and the order of ties (docs/feedback.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from stagegraph.corpora.beir import load_beir
    from stagegraph.indexes.tokenize import Tokenizer

    dataset = load_beir(args.dataset, progress=False)
    tokenizer = Tokenizer()
    work = Path(args.work)
    (work / "docs").mkdir(parents=True, exist_ok=True)
    with open(work / "docs" / "docs.jsonl", "w", encoding="utf-8") as out:
        for row in range(len(dataset.corpus)):
            terms = tokenizer.analyze(dataset.corpus.doc_text(row))
            out.write(json.dumps({"id": dataset.corpus.ids[row], "contents": " ".join(terms)}) + "\n")
    with open(work / "topics.tsv", "w", encoding="utf-8") as out:
        for qid, text in dataset.queries:
            out.write(f"{qid}\t{' '.join(tokenizer.analyze(text))}\n")
    print(f"wrote {len(dataset.corpus)} documents and {len(dataset.queries)} queries to {work}")


def pyserini(args: argparse.Namespace) -> None:
    from pyserini.pyclass import autoclass  # the jar only: pyserini.search imports torch and faiss

    work = Path(args.work)
    index = work / "index"
    if not (index / "segments_1").exists() and not any(index.glob("segments_*")):
        autoclass("io.anserini.index.IndexCollection").main([
            "-collection", "JsonCollection", "-input", str(work / "docs"), "-index", str(index),
            "-generator", "DefaultLuceneDocumentGenerator", "-threads", "1", "-storePositions",
            "-storeDocvectors", "-pretokenized"])
    searcher = autoclass("io.anserini.search.SimpleSearcher")(str(index))
    searcher.set_analyzer(autoclass("org.apache.lucene.analysis.core.WhitespaceAnalyzer")())
    searcher.set_bm25(0.9, 0.4)
    topics = [line.rstrip("\n").split("\t", 1) for line in open(work / "topics.tsv", encoding="utf-8")]
    for tag in ("bm25", "rm3", "rocchio"):
        if tag == "rm3":
            searcher.set_rm3(None, args.fb_terms, args.fb_docs, args.original_query_weight, False, True)
        if tag == "rocchio":  # Pyserini's set_rocchio defaults: alpha 1, beta 0.75, gamma 0
            searcher.unset_rm3()
            searcher.set_rocchio(None, args.fb_terms, args.fb_docs, 10, 10, 1.0, 0.75, 0.0, False, False)
        with open(work / f"pyserini-{tag}.run", "w") as out:
            for qid, text in topics:
                for rank, hit in enumerate(searcher.search(text, args.k) if text.strip() else [], 1):
                    out.write(f"{qid} Q0 {hit.docid} {rank} {hit.score:.6f} pyserini-{tag}\n")
    print(f"wrote {work}/pyserini-bm25.run, pyserini-rm3.run and pyserini-rocchio.run")


def lucene_length(length: int) -> int:
    """A document length as Lucene's BM25 reads it back: `SmallFloat.byte4ToInt(intToByte4(length))`,
    exact below 24, then 4 significant bits (so 41 is read as 40, 100 as 96)."""
    free = 24  # 255 - longToInt4(Integer.MAX_VALUE)
    if length < free:
        return length
    value = length - free
    bits = value.bit_length()
    if bits < 4:
        code = value
    else:
        shift = bits - 4
        code = ((value >> shift) & 0x07) | ((shift + 1) << 3)
    mantissa, shift = code & 0x07, (code >> 3) - 1
    return free + (mantissa if shift == -1 else (mantissa | 0x08) << shift)


def lucene_norms_index(corpus, settings):
    """Diagnostic: a BM25 index whose document lengths are read as Lucene reads its one-byte norms
    (avgdl stays exact, as Lucene's is: sumTotalTermFreq / docCount)."""
    import numpy as np

    from stagegraph.indexes.bm25 import BM25Index
    from stagegraph.indexes.bm25_scoring import SparseScores, idf, term_frequencies

    tokens = settings.tokenizer.tokenize_corpus((corpus.doc_text(r) for r in range(len(corpus))), progress=False,
                                                total=len(corpus))
    tf = term_frequencies(tokens.term_ids, tokens.offsets, len(tokens.vocab))
    lengths = tokens.doc_lengths.astype(np.int64)
    read = np.array([lucene_length(int(n)) for n in lengths], dtype=np.float64)
    norm = (settings.k1 * (1 - settings.b + settings.b * read / lengths.mean())).astype(np.float32)
    df = np.diff(tf.indptr)
    values = tf.data.astype(np.float32)
    values = values / (values + norm[tf.indices]) * np.repeat(idf("lucene", df, len(lengths)).astype(np.float32), df)
    scores = SparseScores(tf.indptr.astype(np.int64), tf.indices.astype(np.int32), values.astype(np.float32), len(lengths))
    return BM25Index(settings, tokens.vocab, corpus.fingerprint, scores=scores, doc_lengths=lengths.astype(np.int32))


def compare(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import warnings

    from stagegraph.corpora.beir import load_beir
    from stagegraph.evaluation.runfile import rankings_of_run
    from stagegraph.evaluation.scoring import score_run
    from stagegraph.pipeline.stage import Environment
    from stagegraph.stages.retrieve.bm25 import BM25Retriever

    warnings.simplefilter("ignore")
    dataset = load_beir(args.dataset, progress=False)
    queries, qrels = dataset.split("test")
    metrics = ["ndcg@10", "recall@100"]
    env = Environment(corpus=dataset.corpus, work_dir=Path(args.work) / "stagegraph", progress=False)
    rows = []
    feedback = {"fb_docs": args.fb_docs, "fb_terms": args.fb_terms}
    for tag, expansion in (("bm25", None),
                           ("rm3", {"method": "rm3", "original_query_weight": args.original_query_weight, **feedback}),
                           ("rocchio", {"method": "rocchio", "alpha": 1.0, "beta": 0.75, "gamma": 0.0, **feedback})):
        if args.lucene_norms:
            from stagegraph.indexes.bm25 import BM25Settings

            index = lucene_norms_index(dataset.corpus, BM25Settings())
            ours = BM25Retriever(index, k=args.k, expand=expansion).bind(env).run(queries)
        else:
            ours = BM25Retriever(k=args.k, expand=expansion).bind(env).run(queries)
        mine = score_run(ours, queries, qrels, dataset.corpus, metrics).means
        run: dict[str, dict[str, float]] = {}
        for line in open(Path(args.work) / f"pyserini-{tag}.run"):
            qid, _, doc, _, score, _ = line.split()
            run.setdefault(qid, {})[doc] = float(score)
        rankings, scoring = rankings_of_run(run, dataset.corpus)
        theirs = score_run(rankings, None, qrels, scoring, metrics).means
        for m in metrics:
            rows.append((tag, m, mine[m], theirs[m]))
    print(f"{'run':7} {'metric':11} {'stagegraph':>10} {'pyserini':>9} {'gap':>8}")
    for tag, m, a, b in rows:
        print(f"{tag:7} {m:11} {a:10.4f} {b:9.4f} {a - b:+8.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands and their flags:\n"
               "  export   --dataset DIR --work DIR\n"
               "  pyserini --work DIR [--fb-docs 10] [--fb-terms 10] [--original-query-weight 0.5] [--k 100]\n"
               "  compare  --dataset DIR --work DIR [--fb-docs 10] [--fb-terms 10] [--original-query-weight 0.5]"
               " [--k 100] [--lucene-norms]")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("export", "write the analysed corpus and queries (project venv)"),
                           ("pyserini", "index and search with Pyserini 0.25 (its own venv)"),
                           ("compare", "our BM25 and RM3 against Pyserini's runs (project venv)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--work", required=True, help="folder for the exported text, index and runs")
        if name != "pyserini":
            p.add_argument("--dataset", required=True, help="a BEIR-layout dataset folder")
        p.add_argument("--fb-docs", type=int, default=10)
        p.add_argument("--fb-terms", type=int, default=10)
        p.add_argument("--original-query-weight", type=float, default=0.5)
        p.add_argument("--k", type=int, default=100)
        if name == "compare":
            p.add_argument("--lucene-norms", action="store_true",
                           help="diagnostic: score ours with document lengths read as Lucene's one-byte norms")
    args = parser.parse_args(argv)
    {"export": export, "pyserini": pyserini, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
