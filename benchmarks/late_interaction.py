"""Late interaction (ColBERT MaxSim) against the cross-encoder: reranking 100 candidates, same run.

    nice -n 10 .venv/bin/python benchmarks/late_interaction.py --queries 20

Both models are built here with random weights and the MiniLM-L6 shape (6 layers, 384 wide, 12 heads,
FFN 1536): a `BertForSequenceClassification` cross-encoder (`CrossEncoderReranker`, torch fp32,
max_length 256, batch 16, no score cache) and a ColBERT (`write_random_colbert`, projection to 128,
`LateInteractionReranker`, query 32 / passage 180 tokens, batch 32). Speed only: the scores mean
nothing. Candidates: 100 random passages of ~160 in-vocabulary words per query, from a synthetic
corpus of 2000 passages (the tiny vocabulary makes one token per word, as a real WordPiece roughly does).

Modes, taking turns query by query in a rotating order (load from other processes falls on all alike):

* `cross_encoder`  - every (query, passage) pair through the cross-encoder;
* `li-cold`        - late interaction, token cache off: the query and all 100 passages encoded, then MaxSim;
* `li-warm`        - late interaction with every passage's token embeddings cached: the query's
                     encoding and the MaxSim only (a pass over all pools fills the cache first);
* `li-stored`      - late interaction in a collection (the corpus ingested, chunker `none`): each
                     passage's token embeddings read from its segment's memory-mapped store, which the
                     writer built at ingest (timed and printed), so the query's encoding and the MaxSim only.

Prints P50/P95 wall ms per query (100 candidates), the load average before and after, the CPU count
and torch's thread count.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from stagegraph.corpora.types import Corpus, Queries  # noqa: E402
from stagegraph.pipeline.ranking import Ranking  # noqa: E402
from stagegraph.pipeline.stage import Environment  # noqa: E402

WORDS = ("the a of and in to is for on with by from that this be are as at or an it was cell protein gene "
         "cancer patients disease treatment study results risk retrieval search query document index dense "
         "sparse vector rank score fusion pool model data method system time").split()
MODES = ("cross_encoder", "li-cold", "li-warm", "li-stored")


def build_models(folder: Path, layers: int, hidden: int, heads: int) -> tuple[Path, Path]:
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from stagegraph.stages.rerank.token_encoder import write_random_colbert

    colbert = write_random_colbert(folder / "colbert", layers=layers, hidden=hidden, heads=heads, dim=128)
    ce = folder / "cross-encoder"
    ce.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (colbert / name).is_file():
            shutil.copy(colbert / name, ce / name)
    torch.manual_seed(1)
    config = BertConfig.from_pretrained(str(colbert))
    config.num_labels = 1
    BertForSequenceClassification(config).save_pretrained(str(ce))
    return ce, colbert


def inputs(n_docs: int, n_queries: int, depth: int, seed: int = 0) -> tuple[Corpus, Queries, list[Ranking]]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=max(20, int(rng.normal(160, 30))))) for _ in range(n_docs)]
    corpus = Corpus([f"d{i}" for i in range(n_docs)], [""] * n_docs, texts)
    queries = Queries([f"q{i}" for i in range(n_queries)], [" ".join(rng.choice(WORDS, 8)) for _ in range(n_queries)])
    pools = [Ranking.from_scores(rng.choice(n_docs, size=depth, replace=False), rng.random(depth)) for _ in range(n_queries)]
    return corpus, queries, pools


def stored_stage(corpus: Corpus, pools: list[Ranking], model: Path, folder: Path, depth: int):
    """The corpus ingested into a collection whose pipeline has the late-interaction stage (the writer
    builds the token stores), that stage bound read-only as a reader binds it, and the pools in the
    collection's rows. Returns (stage, pools, seconds the ingest took)."""
    from stagegraph.collection import Collection
    from stagegraph.corpora.ingest import ChunkerConfig
    from stagegraph.stages.rerank.late_interaction import LateInteractionReranker

    settings = dict(model=str(model), depth=depth, k=10, token_cache="off", device="cpu", name="stored")
    config = {"pipeline": [{"type": "bm25", "name": "bm25", "k": depth}, {"type": "late_interaction", **settings}]}
    store = Collection.create(folder / "collection", config, chunker=ChunkerConfig(kind="none"))
    t0 = time.perf_counter()
    store.upsert([{"id": i, "text": t} for i, t in zip(corpus.ids, corpus.texts)])
    build_s = time.perf_counter() - t0
    env = store.environment()
    row_of = {chunk.split("#")[0]: row for row, chunk in enumerate(env.corpus.ids)}
    moved = [Ranking.from_scores(np.array([row_of[corpus.ids[r]] for r in p.doc_rows]), p.scores) for p in pools]
    stage = LateInteractionReranker(**settings)
    stage.warm_up(env)
    return stage, moved, build_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--depth", type=int, default=100, help="candidates reranked per query")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--warmup", type=int, default=2, help="untimed queries per mode first")
    args = parser.parse_args()

    import torch

    from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker
    from stagegraph.stages.rerank.late_interaction import LateInteractionReranker

    load_before = os.getloadavg()
    modes = tuple(args.modes.split(","))
    corpus, queries, pools = inputs(args.docs, args.queries, args.depth)
    with tempfile.TemporaryDirectory() as tmp:
        ce_dir, li_dir = build_models(Path(tmp), args.layers, args.hidden, args.heads)
        env = Environment(corpus, work_dir=Path(tmp) / "work", progress=False)
        stages = {
            "cross_encoder": CrossEncoderReranker(str(ce_dir), max_length=256, depth=args.depth, k=10, batch_size=16,
                                                  score_cache="off", blend=1.0, device="cpu", name="ce"),
            "li-cold": LateInteractionReranker(str(li_dir), depth=args.depth, k=10, token_cache="off", device="cpu", name="cold"),
            "li-warm": LateInteractionReranker(str(li_dir), depth=args.depth, k=10, device="cpu", name="warm"),
        }
        pools_of = {m: pools for m in modes}
        for m in modes:
            if m != "li-stored":
                stages[m].warm_up(env)
        if "li-stored" in modes:
            stages["li-stored"], pools_of["li-stored"], build_s = stored_stage(corpus, pools, li_dir, Path(tmp), args.depth)
            print(f"li-stored: the writer encoded and stored {len(corpus)} passages' token embeddings in {build_s:.0f} s")
        one = [queries.select([i]) for i in range(len(queries))]
        for m in modes:
            for i in range(min(args.warmup, len(queries))):
                stages[m].run(one[i], [[pools_of[m][i]]])
        if "li-warm" in modes:  # fill the passage cache: the collection would have done this at ingest
            stages["li-warm"].run(queries, [pools])
        wall = {m: [] for m in modes}
        for i in range(len(queries)):
            for m in modes[i % len(modes):] + modes[: i % len(modes)]:
                t0 = time.perf_counter_ns()
                stages[m].run(one[i], [[pools_of[m][i]]])
                wall[m].append((time.perf_counter_ns() - t0) / 1e6)
        warm_stats = stages["li-warm"].stats if "li-warm" in modes else None
        stored_stats = stages["li-stored"].stats if "li-stored" in modes else None
    load_after = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"models: {args.layers} layers x {args.hidden} wide, random weights; {args.queries} queries x {args.depth} candidates")
    base = np.percentile(wall[modes[0]], 50)
    print(f"{'mode':<14} {'P50 ms':>9} {'P95 ms':>9} {modes[0] + ' P50 / mode P50':>28}")
    for m in modes:
        p50, p95 = np.percentile(wall[m], 50), np.percentile(wall[m], 95)
        print(f"{m:<14} {p50:9.1f} {p95:9.1f} {base / p50:28.1f}")
    if warm_stats is not None:
        print(f"li-warm passages: {warm_stats.encoded} encoded (cache fill), {warm_stats.cached} from the cache")
    if stored_stats is not None:
        print(f"li-stored passages: {stored_stats.encoded} encoded, {stored_stats.stored} read from the stores")


if __name__ == "__main__":
    main()
