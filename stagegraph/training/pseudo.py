"""Pseudo-queries from a collection's own documents: training data for a reranker with no labels.

`pseudo_queries(corpus, PseudoConfig(...))` reads a collection's chunks (a `Corpus` whose rows carry
`doc_ids` and `metadata`, as `Collection.corpus` does) and makes two kinds of query, each with the
chunks it should find:

* **heading** queries: a section's heading (`metadata["section"]`), its targets every chunk of that
  section; and the document's title, its targets every chunk of the document (a title says what the
  whole document is about); a chunk that is little more than the heading line is no target;
* **sentence** queries: one sentence of a chunk (seeded choice among its usable sentences); the
  target is the chunk it came from.

**The exact-match shortcut.** A sentence query whose target still holds the sentence, or a heading
query whose target still carries the heading in its title, is answered by string matching: BM25
puts the target first, the held-out check would say the first stage is already perfect, and a model
trained on it learns to spot copied words, which real questions never are. So the texts the model
is trained and checked on are *masked* (`PseudoSet.corpus`, same rows and ids as the collection):
a sentence query's chunk has that sentence cut out, and a heading query's chunks are shown without
the heading (the heading's part of their title is dropped, the whole title for a document title, and
the heading's text removed from their body, where Markdown keeps it). The query then has to be matched on what the rest of the passage is about, which is
the skill a reranker needs for real questions. Negatives are not masked (they never held the query);
the first stages that mine them (and the held-out check's pool) run over the masked texts too, so
the check compares pool and reranker on the same, shortcut-free ground. Each chunk is the source of
at most one sentence query, so one masked text per row suffices.

Useless queries are skipped: fewer than `min_words` content words (`min_heading_words` for headings), more than `max_words` (for sentences),
nothing but stopwords and numbers, duplicates (case- and space-insensitive), a heading shared by more
than `max_targets` chunks (a "Introduction" of every document says nothing about any one), and a
sentence whose removal would leave its chunk with fewer than `min_rest_words` words. Everything is
seeded and deterministic: the same collection and settings give the same queries in the same order;
`max_queries` caps them (a seeded sample, both kinds kept in proportion).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from stagegraph.corpora.types import Corpus, Dataset, Qrels, Queries

KINDS = ("heading", "sentence")

#: function words: a query made of these (and numbers) alone is skipped
STOPWORDS = frozenset(
    "a about above after again all also an and any are as at be because been before being below between both but by "
    "can could did do does doing down during each few for from further had has have having he her here hers him his "
    "how i if in into is it its itself just me more most my no nor not now of off on once only or other our out over "
    "own same she should so some such than that the their theirs them then there these they this those through to too "
    "under until up very was we were what when where which while who whom why will with would you your yours "
    "introduction overview summary contents conclusion conclusions abstract background notes note appendix references "
    "index chapter section part table figure see".split()
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
#: a sentence ends at . ! ? followed by space and an upper-case letter, digit or opening bracket/quote
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


class PseudoConfig(BaseModel):
    """How pseudo-queries are made (saved with the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: tuple[str, ...] = KINDS
    max_queries: int = Field(2000, ge=2)
    min_words: int = Field(3, ge=1, description="sentence queries with fewer content words are skipped")
    min_heading_words: int = Field(2, ge=1, description="heading queries with fewer content words are skipped")
    max_words: int = Field(40, ge=2, description="sentences longer than this are skipped")
    min_rest_words: int = Field(20, ge=0, description="a sentence query's chunk keeps at least this many words once masked")
    max_targets: int = Field(20, ge=1, description="headings shared by more chunks are skipped")
    seed: int = 0


@dataclass
class PseudoQuery:
    id: str
    text: str
    kind: str  # "heading" or "sentence"
    targets: list[int]  # corpus rows


@dataclass
class PseudoSet:
    """The queries, the masked corpus they are answered in, and counts of what was skipped."""

    queries: list[PseudoQuery]
    corpus: Corpus
    skipped: dict[str, int] = field(default_factory=dict)

    def dataset(self, name: str) -> Dataset:
        """The queries as a `Dataset` (split "train", grade 1 for every target) over the masked corpus."""
        qrels = Qrels({q.id: {self.corpus.ids[r]: 1 for r in q.targets} for q in self.queries})
        queries = Queries([q.id for q in self.queries], [q.text for q in self.queries])
        return Dataset(name, self.corpus, queries, {"train": qrels})

    def counts(self) -> dict[str, int]:
        out = {kind: 0 for kind in KINDS}
        for q in self.queries:
            out[q.kind] += 1
        return out


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and not w.isdigit() and len(w) > 1]


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text` (within paragraphs; trimmed)."""
    spans: list[tuple[int, int]] = []
    for para in re.finditer(r"[^\n]+(?:\n(?![ \t]*\n)[^\n]+)*", text):
        start = para.start()
        for piece in _SENTENCE_END.split(para.group()):
            offset = text.find(piece, start)
            stripped = piece.strip()
            if stripped:
                lead = len(piece) - len(piece.lstrip())
                spans.append((offset + lead, offset + lead + len(stripped)))
            start = offset + len(piece)
    return spans


def _key(text: str) -> str:
    return " ".join(words(text))


def _clean_heading(text: str) -> str:
    return re.sub(r"^[#=\-*\s]+|[#=\-*\s:]+$", "", text).strip()


def _without_heading(text: str, heading: str) -> str:
    """`text` with the heading's lines (Markdown `# heading`, a bare heading line, an underline) removed."""
    out: list[str] = []
    lines = text.split("\n")
    skip_underline = False
    for line in lines:
        bare = _clean_heading(line)
        if skip_underline and re.fullmatch(r"\s*[=\-~^*#]{3,}\s*", line):
            skip_underline = False
            continue
        skip_underline = False
        if bare and bare.lower() == heading.lower():
            skip_underline = True
            continue
        out.append(line)
    return re.sub(r"#*[ \t]*" + re.escape(heading), " ", "\n".join(out)).strip()


def pseudo_queries(corpus: Corpus, cfg: PseudoConfig = PseudoConfig()) -> PseudoSet:
    """The pseudo-queries of a collection's chunks and the masked corpus (see the module docstring)."""
    unknown = set(cfg.kinds) - set(KINDS)
    if unknown or not cfg.kinds:
        raise ValueError(f"pseudo-query kinds are {', '.join(KINDS)}; got {', '.join(sorted(unknown)) or 'none'}")
    rng = random.Random(cfg.seed)
    n = len(corpus)
    ids, doc_ids, titles, texts, metadata = corpus.records(range(n))
    skipped: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    heading_qs: list[tuple[str, list[int], bool]] = []  # (heading, target rows, is the document's title)
    sentence_qs: list[tuple[str, int, tuple[int, int]]] = []

    if "heading" in cfg.kinds:
        # (document, heading) -> rows: a section's chunks under its heading; a document's title (the
        # heading of no section, or of the section that is the title itself) over all its chunks
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        doc_title: dict[str, str] = {}
        for row in range(n):
            title = titles[row].split(" > ")[0] if titles[row] else ""
            doc_title.setdefault(doc_ids[row], _clean_heading(title))
            section = (metadata[row] or {}).get("section")
            if isinstance(section, str) and section.strip() and _clean_heading(section) != doc_title[doc_ids[row]]:
                groups[(doc_ids[row], _clean_heading(section))].append(row)
            groups[(doc_ids[row], doc_title[doc_ids[row]])].append(row)
        by_text: dict[str, int] = defaultdict(int)
        for (_, text), rows in groups.items():
            by_text[_key(text)] += len(rows)
        for (doc, text), rows in groups.items():
            key = _key(text)
            # a chunk that is little more than the heading itself is no target: masked, nothing is left
            rows = [r for r in rows if len(words(_without_heading(texts[r], text))) >= cfg.min_words]
            if not key or len(content_words(text)) < cfg.min_heading_words:
                skipped["heading too short or only stopwords"] += 1
            elif not rows:
                skipped["heading without text under it"] += 1
            elif by_text[key] > cfg.max_targets:
                skipped["heading shared by too many chunks"] += 1
            elif key in seen:
                skipped["duplicate"] += 1
            else:
                seen.add(key)
                heading_qs.append((text, sorted(rows), text == doc_title[doc]))

    if "sentence" in cfg.kinds:
        for row in range(n):
            text = texts[row]
            usable = []
            total = len(words(text))
            for start, end in sentences(text):
                sentence = text[start:end]
                n_words = len(words(sentence))
                if len(content_words(sentence)) < cfg.min_words or n_words > cfg.max_words:
                    continue
                if total - n_words < cfg.min_rest_words:
                    continue
                usable.append((start, end))
            if not usable:
                skipped["chunk without a usable sentence"] += 1
                continue
            start, end = usable[rng.randrange(len(usable))]
            key = _key(text[start:end])
            if key in seen:
                skipped["duplicate"] += 1
                continue
            seen.add(key)
            sentence_qs.append((text[start:end], row, (start, end)))

    total = len(heading_qs) + len(sentence_qs)
    if total > cfg.max_queries:  # a seeded sample, both kinds in proportion
        keep_h = round(cfg.max_queries * len(heading_qs) / total)
        heading_qs = [heading_qs[i] for i in sorted(rng.sample(range(len(heading_qs)), keep_h))]
        sentence_qs = [sentence_qs[i] for i in sorted(rng.sample(range(len(sentence_qs)), cfg.max_queries - keep_h))]
        skipped["over --max-queries"] = total - cfg.max_queries

    masked_titles, masked_texts = list(titles), list(texts)
    queries: list[PseudoQuery] = []
    for text, row, (start, end) in sentence_qs:  # cut the sentence out of its chunk
        masked_texts[row] = (texts[row][:start] + texts[row][end:].lstrip(" \t")).strip()  # line breaks kept
        queries.append(PseudoQuery("", text, "sentence", [row]))
    for text, rows, is_title in heading_qs:  # show the section's chunks without their heading
        for row in rows:
            # a chunk's title is "document title > section heading": drop the part the query is
            masked_titles[row] = "" if is_title else masked_titles[row].split(" > ")[0]
            masked_texts[row] = _without_heading(masked_texts[row], text)
        queries.append(PseudoQuery("", text, "heading", rows))
    order = list(range(len(queries)))
    rng.shuffle(order)
    queries = [queries[i] for i in order]
    for i, q in enumerate(queries):
        q.id = f"pq{i:06d}-{q.kind[0]}"
    masked = Corpus(list(ids), masked_titles, masked_texts, doc_ids=list(doc_ids), metadata=list(metadata))
    return PseudoSet(queries, masked, dict(skipped))
