"""BM25 over segments: per-segment postings scored lazily with statistics of the live chunks only.

A segmented collection (`stagegraph.collection.segments`) never rewrites a segment, and a write
changes N, avgdl and document frequencies. So a segment's postings (`SegmentPostings`) keep what
does not change, raw term frequencies and document lengths, plus a forward copy of each
document's term ids; the collection-wide statistics are assembled per generation (`CorpusStats`):

    N      = sum over segments of (rows - deleted rows)
    avgdl  = sum of (length total - deleted rows' lengths) / N
    df(t)  = sum of (df_segment(t) - df of t among the segment's deleted rows)

The deleted rows' statistics are read from their forward term ids when the deletion is known, in
time proportional to the deleted rows, never to the segment. That is the trap tantivy and Lucene
fall into (deleted documents keep counting in df and avgdl until a merge, so scores drift with the
layout) avoided: scores equal those of a fresh build of the live chunks, always.

A query's terms are scored in one order whatever the layout (collection df descending, then the
term), each segment's best k among its allowed rows come from one compiled pass
(`indexes.bm25_kernels.top_k_lazy`), and the segments' lists merge by (score desc, tie key asc):
the same floats and the same order as a single segment holding the same chunks.

Files of one segment's postings: `vocab.json`, `indptr/indices/tf/lengths/forward_terms/forward_offsets.npy`
and `manifest.json` (kind "bm25-segment", SHA-256 per file), memory-mapped when loaded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stagegraph.atomic import atomic_dir
from stagegraph.corpora.segmented import merge_top
from stagegraph.hashing import library_versions
from stagegraph.indexes.bm25_kernels import top_k_lazy
from stagegraph.indexes.bm25_scoring import idf, term_frequencies
from stagegraph.indexes.manifest import IndexLoadError, Manifest, read_manifest, write_manifest
from stagegraph.indexes.tokenize import TokenizedCorpus

KIND = "bm25-segment"
FORMAT_VERSION = 1
_ARRAYS = ("indptr", "indices", "tf", "lengths", "forward_terms", "forward_offsets")
REBUILD_HINT = "delete the directory; the collection's writer builds it again (`stagegraph collection compact DIR`)"


class SegmentPostings:
    """One segment's term-major postings (raw tf), document lengths and forward term ids."""

    def __init__(self, vocab: list[str], arrays: dict[str, np.ndarray], fingerprint: str):
        self.vocab = vocab
        self.term_of = {term: i for i, term in enumerate(vocab)}
        self.fingerprint = fingerprint
        self.indptr = np.asarray(arrays["indptr"])
        self.indices = np.asarray(arrays["indices"])
        self.tf = np.asarray(arrays["tf"])
        self.lengths = np.asarray(arrays["lengths"])
        self.forward_terms = np.asarray(arrays["forward_terms"])
        self.forward_offsets = np.asarray(arrays["forward_offsets"])
        self.df = np.diff(self.indptr).astype(np.int64)
        self.length_total = int(self.lengths.sum(dtype=np.int64))
        self._local = threading.local()

    @property
    def n_docs(self) -> int:
        return len(self.lengths)

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], fingerprint: str) -> SegmentPostings:
        """Postings of already-analysed documents (row `d` = the d-th term list; an empty list is a document
        with no term, which BM25 never returns but which counts in N and avgdl, as in a single index)."""
        tokens = TokenizedCorpus.from_token_lists(token_lists)
        tf = term_frequencies(tokens.term_ids, tokens.offsets, len(tokens.vocab))
        arrays = {
            "indptr": tf.indptr.astype(np.int64), "indices": tf.indices.astype(np.int32),
            "tf": tf.data.astype(np.float32), "lengths": tokens.doc_lengths.astype(np.int32),
            "forward_terms": tokens.term_ids.astype(np.int32), "forward_offsets": tokens.offsets.astype(np.int64),
        }
        return cls(list(tokens.vocab), arrays, fingerprint)

    def deleted_stats(self, dead: np.ndarray) -> DeletedStats:
        """N, length total and document frequencies of the rows `dead` (int row numbers)."""
        dead = np.asarray(dead, dtype=np.int64)
        if not len(dead):
            return DeletedStats(0, 0, {})
        starts, ends = self.forward_offsets[dead], self.forward_offsets[dead + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            return DeletedStats(len(dead), 0, {})
        # Every token of every dead row at once: its position, then (row, term) pairs counted once each.
        first = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        terms = self.forward_terms[np.arange(total, dtype=np.int64) + first].astype(np.int64)
        pairs = np.unique(np.repeat(np.arange(len(dead), dtype=np.int64), lengths) * len(self.vocab) + terms)
        ids, counts = np.unique(pairs % len(self.vocab), return_counts=True)
        return DeletedStats(len(dead), total, dict(zip(ids.tolist(), counts.tolist())))

    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """This thread's accumulator (zeroed between queries) and touched-rows buffer."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = (np.zeros(self.n_docs, dtype=np.float32), np.empty(self.n_docs, dtype=np.int32))
        return bufs

    # ------------------------------------------------------------- save / load
    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            (tmp / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self, name), allow_pickle=False)
            write_manifest(tmp, Manifest(kind=KIND, format_version=FORMAT_VERSION, corpus_fingerprint=self.fingerprint,
                                         params={"n_docs": self.n_docs, "vocab_size": len(self.vocab)},
                                         libraries=library_versions(["numpy", "scipy", "pystemmer"], python=True),
                                         created_with="stagegraph indexes.bm25_segments"))
        return directory

    @classmethod
    def load(cls, directory: Path, *, fingerprint: str, verify: bool = False) -> SegmentPostings:
        """Open saved postings (arrays memory-mapped); an `IndexLoadError` when stale or damaged."""
        directory = Path(directory)
        manifest = read_manifest(directory, kind=KIND, format_version=FORMAT_VERSION, corpus_fingerprint=fingerprint,
                                 verify_checksums=verify, rebuild_hint=REBUILD_HINT)
        try:
            vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
            arrays = {n: np.load(directory / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in _ARRAYS}
        except (OSError, ValueError) as exc:
            raise IndexLoadError(f"The BM25 segment postings at {directory} are damaged ({exc}); {REBUILD_HINT}.") from exc
        postings = cls(vocab, arrays, manifest.corpus_fingerprint)
        if postings.n_docs != manifest.params.get("n_docs") or len(postings.indptr) != len(vocab) + 1:
            raise IndexLoadError(f"The BM25 segment postings at {directory} do not match their manifest; {REBUILD_HINT}.")
        return postings


@dataclass(frozen=True)
class DeletedStats:
    """What a segment's deleted rows add to its statistics (subtracted from the collection's)."""

    n: int
    length_total: int
    df: dict[int, int]  # segment term id -> deleted rows holding it


@dataclass
class SegmentSearch:
    """One segment as a query sees it: postings, deleted-row statistics, global row offset, tie keys."""

    postings: SegmentPostings
    deleted: DeletedStats
    live: np.ndarray | None  # bool per row (None: all live)
    offset: int
    keys: np.ndarray


class CorpusStats:
    """N, avgdl and document frequencies over the live rows of every segment (module docstring)."""

    def __init__(self, segments: list[SegmentSearch]):
        self.segments = segments
        self.n_docs = sum(s.postings.n_docs - s.deleted.n for s in segments)
        self.length_total = sum(s.postings.length_total - s.deleted.length_total for s in segments)
        self.avgdl = self.length_total / self.n_docs if self.n_docs else 0.0

    def df(self, term: str) -> int:
        out = 0
        for s in self.segments:
            tid = s.postings.term_of.get(term)
            if tid is not None:
                out += int(s.postings.df[tid]) - s.deleted.df.get(tid, 0)
        return out


class GivenStats:
    """N, avgdl and document frequencies given from outside, for `segments` to be scored with: a
    sharded collection's, summed over every shard by its coordinator (`stagegraph.scale.shards`, as
    Elasticsearch's `dfs_query_then_fetch`), so each shard scores its chunks as one collection would.
    `df` needs only the query's terms."""

    def __init__(self, segments: list[SegmentSearch], n_docs: int, length_total: int, df: dict[str, int]):
        self.segments = segments
        self.n_docs = n_docs
        self.length_total = length_total
        self.avgdl = length_total / n_docs if n_docs else 0.0
        self._df = df

    def df(self, term: str) -> int:
        return self._df.get(term, 0)


def search_segments(stats: CorpusStats | GivenStats, terms: list[str], k: int, *, variant: str, k1: float, b: float,
                    masks: list[np.ndarray | None], weights: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` live rows for analysed query `terms` (repeats count twice): (global rows int64,
    scores float32), score desc then tie key asc. `masks[i]`: segment i's allowed rows (bool, the
    deletions already applied; None: every live row). `weights` (`{term: weight}`, then `terms` is
    ignored): a weighted query, each term's contribution times its weight (query expansion)."""
    counts: dict[str, float] = {}
    if weights is not None:
        counts = {t: w for t, w in weights.items() if w != 0}
    else:
        for term in terms:
            counts[term] = counts.get(term, 0) + 1
    frequencies = {t: stats.df(t) for t in counts}
    order = sorted((t for t in counts if frequencies[t] > 0), key=lambda t: (-frequencies[t], t))
    if not order or stats.n_docs == 0 or stats.avgdl <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    idfs = idf(variant, np.array([frequencies[t] for t in order], dtype=np.float64), stats.n_docs).astype(np.float32)
    saturation = k1 + 1.0 if variant == "atire" else 1.0
    found = []
    for segment, mask in zip(stats.segments, masks):
        postings = segment.postings
        local = [(postings.term_of.get(t), i) for i, t in enumerate(order)]
        local = [(tid, i) for tid, i in local if tid is not None]
        if not local or (mask is not None and not mask.any()):
            continue
        tids = np.array([tid for tid, _ in local], dtype=np.int64)
        pick = np.array([i for _, i in local], dtype=np.int64)
        weights = np.array([counts[order[i]] for i in pick], dtype=np.float32)
        allowed = _EMPTY if mask is None else np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
        acc, touched = postings.buffers()
        try:
            rows, scores = top_k_lazy(postings.indptr, postings.indices, postings.tf, postings.lengths, tids,
                                      idfs[pick], weights, float(k1), float(b), float(stats.avgdl), float(saturation),
                                      acc, touched, int(k), allowed)
        except BaseException:
            acc[:] = 0.0
            raise
        found.append((rows + segment.offset, scores, segment.keys[rows]))
    return merge_top(found, k)


_EMPTY = np.empty(0, dtype=np.uint8)
