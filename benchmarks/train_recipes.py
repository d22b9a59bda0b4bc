"""Fine-tuning recipes for the cross-encoder, compared on fixed candidates: dev and test quality per recipe.

    python benchmarks/train_recipes.py --dataset ../shared/datasets/scifact \
        --train-run out/scifact-train/runs/pool.trec --test-run out/scifact-test/runs/pool.trec \
        --recipe L2:layers=2 --recipe L6-e3:layers=6,epochs=3 --device auto

The candidates are TREC run files (for example `runs/pool.trec` written by `stagegraph eval
configs/hybrid.yaml --split train|test --out DIR`), so the first stage is fixed and runs once, and the
script needs no FAISS. Each `--recipe NAME:field=value,...` sets `stagegraph.training.finetune.TrainConfig`
fields (layers=0 keeps all layers). For each recipe it fine-tunes on the train split
(`stagegraph.training.train.train_from_candidates`: held-out dev queries, blend chosen there), then
reranks the test queries' top `--depth` candidates and prints nDCG@10 / MRR@10 of the first stage,
the cross-encoder alone and the saved blend. Test queries are never used to choose anything.
`--device cuda` trains and scores on a GPU (the same code as on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stagegraph.corpora.registry import load_dataset  # noqa: E402
from stagegraph.training.train import rankings_from_run, train_from_candidates  # noqa: E402
from stagegraph.pipeline.ranking import Ranking  # noqa: E402
from stagegraph.pipeline.stage import Environment
from stagegraph.evaluation.scoring import score_run  # noqa: E402
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker  # noqa: E402
from stagegraph.training.finetune import TrainConfig  # noqa: E402

METRICS = ("ndcg@10", "mrr@10")


def parse_recipe(text: str, base: str, device: str) -> tuple[str, TrainConfig]:
    name, _, fields = text.partition(":")
    settings: dict[str, object] = {"base": base, "device": device}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition("=")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:  # a bare word such as head=cls
            settings[key.strip()] = value.strip()
    if settings.get("layers") == 0:
        settings["layers"] = None
    return name or "default", TrainConfig(**settings)


def evaluate_test(model_dir: Path, dataset, candidates, depth: int, max_length: int, work_dir: Path) -> dict[str, dict[str, float]]:
    """First stage, cross-encoder alone and the saved blend on the test split (scores computed once)."""
    queries, qrels = dataset.split("test")
    first = [candidates[q] for q in queries.ids]
    out = {"first stage": score_run(first, queries, qrels, dataset.corpus, METRICS).means}
    stage = CrossEncoderReranker(str(model_dir), max_length=max_length, depth=depth, k=depth)
    stage.warm_up(Environment(dataset.corpus, work_dir=work_dir, progress=False))
    started = time.perf_counter()
    blended = stage.run(queries, [first])
    out["_seconds"] = {"rerank": time.perf_counter() - started}
    alone = [Ranking.from_scores(r.doc_rows, r.provenance[stage.name].model_score) for r in blended]
    out["cross-encoder"] = score_run(alone, queries, qrels, dataset.corpus, METRICS).means
    out["blend"] = score_run(blended, queries, qrels, dataset.corpus, METRICS).means
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--train-run", required=True, help="TREC run of the train split's candidates")
    parser.add_argument("--test-run", required=True, help="TREC run of the test split's candidates")
    parser.add_argument("--base", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--recipe", action="append", default=[], help="NAME:field=value,... (TrainConfig fields)")
    parser.add_argument("--depth", type=int, default=30, help="candidates reranked per query (dev and test)")
    parser.add_argument("--max-length", type=int, default=256, help="scoring truncation in tokens")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep", help="copy each model to this directory (default: deleted)")
    parser.add_argument("--json", help="write the table as JSON here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, progress=False)
    train = rankings_from_run(args.train_run, dataset.corpus)
    test = rankings_from_run(args.test_run, dataset.corpus)
    recipes = [parse_recipe(r, args.base, args.device) for r in (args.recipe or ["default:"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="recipes-") as scratch:
        for name, cfg in recipes:
            model_dir = Path(scratch) / name
            result = train_from_candidates(
                dataset, train, model_dir, cfg, first_stage=Path(args.train_run).name, depth=args.depth,
                max_length=args.max_length, work_dir=Path(scratch), progress=not args.quiet,
                say=(lambda s: None) if args.quiet else print,
            )
            test_scores = evaluate_test(model_dir, dataset, test, args.depth, args.max_length, Path(scratch))
            dev = result.dev
            rows.append({
                "recipe": name, "train": cfg.model_dump(mode="json", exclude={"base"}), "pairs": result.pairs,
                "train_s": round(result.seconds.get("train", 0.0), 1), "pairs_per_s": result.pairs_per_s,
                "epoch_loss": [round(x, 4) for x in result.epoch_loss],
                "dev": None if dev is None else {"first stage": dev.first_stage, "cross-encoder": dev.reranked,
                                                 "blend": dev.blended, "alpha": dev.blend.alpha, "upstream": dev.blend.upstream},
                "test": test_scores,
            })
            print(_row(rows[-1]), flush=True)
            if args.keep:
                shutil.copytree(model_dir, Path(args.keep) / name, dirs_exist_ok=True)
    print("\n" + _table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


def _row(r: dict) -> str:
    t, d = r["test"], r["dev"] or {}
    blend = f"{d.get('alpha', 1.0):.2f} {d.get('upstream', '-')}"
    dev = " / ".join(f"{d[k]['ndcg@10']:.4f}" for k in ("first stage", "cross-encoder", "blend")) if d else "-"
    return (f"| {r['recipe']} | {r['pairs']:,} | {r['train_s']:.0f} | {dev} | {blend} | "
            f"{t['first stage']['ndcg@10']:.4f} | {t['cross-encoder']['ndcg@10']:.4f} / {t['cross-encoder']['mrr@10']:.4f} | "
            f"{t['blend']['ndcg@10']:.4f} / {t['blend']['mrr@10']:.4f} |")


def _table(rows: list[dict], args) -> str:
    head = (f"test: rerank the top {args.depth} at {args.max_length} tokens; dev: held-out train queries (nDCG@10)\n"
            "| recipe | train pairs | train s | dev first / CE / blend | blend | test first nDCG@10 | "
            "test CE nDCG@10 / MRR@10 | test blend nDCG@10 / MRR@10 |\n|---|---:|---:|---|---|---:|---:|---:|")
    return "\n".join([head, *(_row(r) for r in rows)])


if __name__ == "__main__":
    main()
