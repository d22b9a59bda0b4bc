"""`stagegraph train-reranker CONFIG --dataset PATH --out DIR`: fine-tune a cross-encoder on qrels.
`stagegraph train-reranker [CONFIG] --collection DIR [--out DIR]`: fine-tune one on a collection's
own documents, with no labels (`stagegraph.training.collection`), and install it there when it wins.

Exit codes: 0 the model was written and beats the first stage on held-out (pseudo-)queries (with
--collection: and was installed as the collection's reranker); 1 it does not, or nothing was held out
to check it (the message says so plainly; with --collection nothing is installed, and the model is
kept only where --out names); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stagegraph.cli.app import Exit, load_dataset, load_pipeline, progress, work_dir
from stagegraph.errors import InputError
from stagegraph.training.finetune import DEFAULT_BASE, TrainConfig
from stagegraph.training.pseudo import KINDS, PseudoConfig


def register(sub) -> None:
    defaults = TrainConfig()
    p = sub.add_parser(
        "train-reranker",
        help="fine-tune a cross-encoder on a dataset's training qrels, negatives mined by the pipeline",
        description="Fine-tune a cross-encoder from a base model on a dataset's training qrels. Hard "
        "negatives come from the pipeline's stages before its cross-encoder; part of the training "
        "queries is held out to check the model against the first stage and to choose its blend.",
    )
    p.add_argument("config", nargs="?", help="pipeline YAML; its stages before the cross-encoder mine negatives "
                   "(with --collection: default the collection's own pipeline, a cross-encoder appended if it has none)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", help="a BEIR-layout directory or a registered name such as `sample` (trains on its qrels)")
    where.add_argument("--collection", help="a collection directory: train on pseudo-queries from its own documents "
                       "(no labels) and install the model there when it beats the pool on held-out pseudo-queries")
    p.add_argument("--download", action="store_true", help="fetch a public BEIR dataset by name when it is not found locally (needs network)")
    p.add_argument("--max-queries", type=int, default=PseudoConfig().max_queries,
                   help=f"with --collection: pseudo-queries at most (default {PseudoConfig().max_queries})")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="with --collection: pseudo-query kinds, comma-separated: heading, sentence (default both)")
    p.add_argument("--split", default="train", help="qrels split to train on (default train)")
    p.add_argument("--base", default=DEFAULT_BASE, help=f"base model: HF id or local path (default {DEFAULT_BASE})")
    p.add_argument("--out", help="directory to write the fine-tuned model to (required with --dataset; with --collection "
                   "the model is kept there even when it loses, and copied into the collection when it wins)")
    p.add_argument("--layers", type=int, default=defaults.layers, help=f"keep the base's first N layers (default {defaults.layers}; 0 = all)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--negatives", type=int, default=defaults.negatives, help="negatives per positive")
    p.add_argument("--positives", type=int, default=defaults.positives_per_query, help="groups per query and epoch, at most")
    p.add_argument("--batch-groups", type=int, default=defaults.batch_groups, help="groups per optimiser step")
    p.add_argument("--mine-depth", type=int, default=defaults.mine_depth, help="sample negatives from the first stage's top N")
    p.add_argument("--max-length", type=int, default=defaults.max_length, help="training truncation in tokens")
    p.add_argument("--max-pairs", type=int, default=None, help="cap on training pairs per epoch")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--head-lr", type=float, default=defaults.head_lr)
    p.add_argument("--loss", choices=["listwise", "bce"], default=defaults.loss)
    p.add_argument("--head", choices=["cosine", "cls"], default=defaults.head,
                   help="cosine: segment-mean cosine head that starts from the bi-encoder's ranking (default); cls: [CLS] classifier")
    p.add_argument("--dev-fraction", type=float, default=defaults.dev_fraction, help="share of training queries held out")
    p.add_argument("--max-dev", type=int, default=defaults.max_dev, help="at most this many dev queries")
    p.add_argument("--dev-depth", type=int, default=None, help="dev rerank depth (default: the pipeline reranker's depth)")
    p.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--device", default=defaults.device, help="torch device: auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--candidates", metavar="RUN",
                   help="take the negatives from this TREC run file instead of running the pipeline's first stages")
    p.add_argument("--json", dest="json_out", help="also write the result as JSON to this file")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from stagegraph.training.train import rankings_from_run, reranker_settings, train_from_candidates, train_reranker

    try:
        cfg = TrainConfig(
            base=args.base, layers=args.layers or None, epochs=args.epochs, negatives=args.negatives,
            positives_per_query=args.positives, batch_groups=args.batch_groups,
            mine_depth=args.mine_depth, max_length=args.max_length, max_pairs=args.max_pairs, lr=args.lr,
            head_lr=args.head_lr, loss=args.loss, head=args.head, dev_fraction=args.dev_fraction,
            max_dev=args.max_dev, dev_depth=args.dev_depth, time_budget_s=args.time_budget,
            threads=args.threads, device=args.device, seed=args.seed,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid training settings: {problems}") from None
    quiet = not progress(args)
    if args.collection:
        return train_collection(args, cfg, quiet)
    if args.config is None:
        raise InputError("train-reranker --dataset needs a CONFIG (e.g. hybrid-rerank)")
    if args.out is None:
        raise InputError("train-reranker --dataset needs --out DIR (where to write the model)")
    graph = load_pipeline(args)
    dataset = load_dataset(args)
    if args.candidates:
        depth, max_length = reranker_settings(graph)
        result = train_from_candidates(
            dataset, rankings_from_run(args.candidates, dataset.corpus), Path(args.out), cfg, split=args.split,
            first_stage=Path(args.candidates).name, depth=depth, max_length=max_length,
            work_dir=work_dir(args), progress=not quiet,
        )
    else:
        result = train_reranker(
            graph, dataset, Path(args.out), cfg, split=args.split, work_dir=work_dir(args), progress=not quiet,
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result.model_dump(mode="json"), indent=2), encoding="utf-8")
    return Exit.OK if result.beats_first_stage is True else Exit.CHECK_FAILED


def train_collection(args: argparse.Namespace, cfg: TrainConfig, quiet: bool) -> int:
    """`--collection DIR`: pseudo-queries, training, the held-out check, and install or refuse."""
    import datetime as _dt
    import shutil

    from pydantic import ValidationError

    from stagegraph.collection.reranker_record import MODELS_DIR, install
    from stagegraph.training.collection import open_for_training, train_on_collection, verdict_lines

    if args.candidates:
        raise InputError("--candidates goes with --dataset; with --collection the collection's own first stages mine")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or set(kinds) - set(KINDS):
        raise InputError(f"--kinds takes {', '.join(KINDS)} (comma-separated), got {args.kinds!r}")
    try:
        pseudo = PseudoConfig(kinds=kinds, max_queries=args.max_queries, seed=args.seed)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid pseudo-query settings: {problems}") from None
    root = Path(args.collection)
    collection = open_for_training(root, progress=not quiet)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    out = Path(args.out) if args.out else root / MODELS_DIR / f"pseudo-{stamp}"
    try:
        run = train_on_collection(collection, out, cfg, pseudo, config=args.config, progress=not quiet, say=print)
    finally:
        collection.close()
    if args.json_out:
        payload = {**run.result.model_dump(mode="json"), "held_out": run.held_out(), "installed": run.beats_pool,
                   "pseudo": pseudo.model_dump(mode="json")}
        Path(args.json_out).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    for line in verdict_lines(run):
        print(line)
    if run.beats_pool:
        record = install(root, out, run.stage, run.held_out())
        print(f"installed as the reranker of {root}: {root / record.model} (reranker.json); `stagegraph search "
              f"hybrid-rerank ... --collection {root}`, `serve` and stagegraph.open(collection=...) use it unless "
              "--reranker or $STAGEGRAPH_RERANKER names another")
        return Exit.OK
    if args.out:
        print(f"NOT installed: the collection's reranker is unchanged; the model is kept in {out} for inspection")
    else:
        shutil.rmtree(out, ignore_errors=True)
        print("NOT installed: the collection's reranker is unchanged and the losing model was removed "
              "(give --out DIR to keep it)")
    return Exit.CHECK_FAILED
