"""Re-run the held-out check of a model `benchmarks/train_pseudo.py` trained, with the cross-fitted figure.

    .venv/bin/python benchmarks/recheck_pseudo.py COLLECTION MODEL CONFIG MAX_QUERIES MAX_DEV [KINDS]

The same pseudo-queries and the same held-out split as the training run (both seeded; give the run's
--max-queries, --max-dev and --kinds), mined again over the masked chunks, scored with MODEL:
prints pool, reranker alone, blend chosen on the held-out queries, and the cross-fitted blend
(`DevReport.blended_crossfit`). For models trained before the cross-fitted check existed.
"""
import shutil
import sys
import tempfile
import time
from pathlib import Path
from stagegraph.collection.collection import Collection
from stagegraph.pipeline.stage import Environment
from stagegraph.training.collection import OverlayCache, training_pipeline
from stagegraph.training.finetune import TrainConfig, split_train_dev
from stagegraph.training.heldout import rerank_dev
from stagegraph.training.pseudo import PseudoConfig, pseudo_queries
from stagegraph.training.train import mining_graph

root, model, config, max_queries, max_dev = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
kinds = tuple(sys.argv[6].split(",")) if len(sys.argv) > 6 else ("heading", "sentence")
t0 = time.time()
c = Collection(root)
graph, stage = training_pipeline(c, config)
pset = pseudo_queries(c.corpus, PseudoConfig(max_queries=max_queries, kinds=kinds))
ds = pset.dataset("x")
queries, qrels = ds.split("train")
fit, dev = split_train_dev(queries, qrels, pset.corpus, TrainConfig(max_dev=max_dev))
miner, _ = mining_graph(graph)
scratch = Path(tempfile.mkdtemp())
cache = OverlayCache(c.layout.cache, scratch / "c.sqlite")
env = Environment(pset.corpus, work_dir=scratch / "w", progress=False, text_cache=cache)
mined = miner.execute(dev, env=env, mode="batch", progress=False).final
rep = rerank_dev(model, dev, qrels, mined, pset.corpus, depth=stage["depth"], max_length=stage["max_length"], work_dir=scratch / "w", progress=False)
print("dev", rep.queries, "pool", rep.first_stage, "ce", rep.reranked, "blend", rep.blended, rep.blend, "crossfit", rep.blended_crossfit, f"{time.time()-t0:.0f}s")
shutil.rmtree(scratch)
