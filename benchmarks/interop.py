"""Adapter overhead per query: each interop adapter against a direct `stack.search` of the same stack.

    .venv/bin/python benchmarks/interop.py                    # ~1 minute on 2 cores
    .venv/bin/python benchmarks/interop.py --searches 2000 --k 10

One collection of the bundled sample's 608 passages with a BM25 pipeline (the cheapest stack, so the
adapters' cost is not lost in a model's variance) is opened once (`stagegraph.open`). Every test query
of the sample is then answered two ways, taking turns query by query:

* `stack.search(query, k)`: the baseline;
* the adapter: LangChain `retriever.invoke(query)`, LlamaIndex `retriever.retrieve(query)`, Haystack
  `component.run(query=...)` and the same component inside a Haystack `Pipeline`, PyTerrier
  `transformer(frame)` for a one-query topics frame (built once per query before the timing, as a
  PyTerrier user holds it), each only where its library is installed.

The overhead of one query is the adapter's time minus the direct search's time for the same query
(paired: the drift of a shared machine cancels); the table gives its P50 and P95, the P50 of both
sides and their ratio, and, apart, the conversion alone (`to_documents`/`to_nodes` of an existing
result: the part that is stagegraph's, the rest being the library's own call machinery). Target:
P50 overhead <= 1 ms per query. The load average is printed with the figures.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("LANGCHAIN_TRACING_V2", "false")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build(root: Path):
    import stagegraph as sg
    from stagegraph.collection import Collection

    dataset = sg.load_dataset("sample", progress=False)
    corpus = dataset.corpus
    store = Collection.create(root, {"pipeline": [{"type": "bm25", "name": "bm25", "k": 100}]})
    store.upsert([{"id": i, "title": t, "text": x, "metadata": {"source": "sample"}}
                  for i, t, x in zip(corpus.ids, corpus.titles, corpus.texts)])
    store.close()
    return dataset.split("test")[0].texts


def adapters(stack, k: int, queries: list[str]) -> dict:
    """name -> (call(query), convert(result) or None), for the libraries installed here."""
    found = {}
    try:
        from stagegraph.interop.langchain import LangChainRetriever, to_documents

        retriever = LangChainRetriever(stack=stack, k=k)
        found["LangChain invoke"] = (retriever.invoke, to_documents)
    except ImportError as exc:
        print(f"# LangChain skipped: {exc}")
    try:
        from stagegraph.interop.llamaindex import LlamaIndexRetriever, to_nodes

        li = LlamaIndexRetriever(stack, k=k)
        found["LlamaIndex retrieve"] = (li.retrieve, to_nodes)
    except ImportError as exc:
        print(f"# LlamaIndex skipped: {exc}")
    try:
        from haystack import Pipeline

        from stagegraph.interop.haystack import HaystackRetriever, to_documents as hs_documents

        component = HaystackRetriever(stack, top_k=k)
        found["Haystack component.run"] = (lambda q: component.run(query=q), hs_documents)
        pipe = Pipeline()
        pipe.add_component("retriever", HaystackRetriever(stack, top_k=k))
        found["Haystack Pipeline.run"] = (lambda q: pipe.run({"retriever": {"query": q}}), None)
    except ImportError as exc:
        print(f"# Haystack skipped: {exc}")
    try:
        import pandas as pd

        from stagegraph.interop.pyterrier import StagegraphTransformer

        transformer = StagegraphTransformer(stack, k=k)
        # a PyTerrier user holds the topics frame already: each built once, before the timing
        frames = {q: pd.DataFrame({"qid": ["1"], "query": [q]}) for q in queries}
        found["PyTerrier transformer"] = (lambda q: transformer(frames[q]), None)
    except ImportError as exc:
        print(f"# PyTerrier skipped: {exc}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--searches", type=int, default=400, help="paired searches per adapter (default 400)")
    parser.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured pairs first (default 30)")
    args = parser.parse_args(argv)

    import stagegraph as sg

    print(f"# benchmarks/interop.py  ({os.cpu_count()} CPUs, python {sys.version.split()[0]}, load average {load()} at start)")
    with tempfile.TemporaryDirectory() as tmp:
        queries = build(Path(tmp) / "c")
        with sg.open(collection=Path(tmp) / "c", watch=None) as stack:
            found = adapters(stack, args.k, queries)
            rows = []
            for name, (call, convert) in found.items():
                direct_ns, adapter_ns = [], []
                for i in range(args.warmup + args.searches):
                    q = queries[i % len(queries)]
                    first_direct = i % 2 == 0  # alternate which side goes first
                    for side in ((0, 1) if first_direct else (1, 0)):
                        t0 = time.perf_counter_ns()
                        stack.search(q, k=args.k) if side == 0 else call(q)
                        dt = time.perf_counter_ns() - t0
                        if i >= args.warmup:
                            (direct_ns if side == 0 else adapter_ns).append(dt)
                d, a = np.array(direct_ns) / 1e3, np.array(adapter_ns) / 1e3
                diff = a - d
                convert_us = None
                if convert is not None:
                    result = stack.search(queries[0], k=args.k)
                    times = []
                    for _ in range(args.searches):
                        t0 = time.perf_counter_ns()
                        convert(result)
                        times.append(time.perf_counter_ns() - t0)
                    convert_us = float(np.median(times)) / 1e3
                rows.append((name, np.median(d), np.median(a), np.median(diff), np.percentile(diff, 95),
                             np.median(a) / np.median(d), convert_us))
    print(f"\n{args.searches} paired queries per adapter (after {args.warmup} warm-up), k={args.k}, BM25 stack over the "
          f"sample's 608 passages; times in us\n")
    print("| adapter | direct P50 | adapter P50 | overhead P50 | overhead P95 | ratio | conversion P50 | <= 1 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, d50, a50, o50, o95, ratio, conv in rows:
        conv_text = f"{conv:,.1f}" if conv is not None else "-"
        print(f"| {name} | {d50:,.1f} | {a50:,.1f} | {o50:,.1f} | {o95:,.1f} | {ratio:.2f}x | {conv_text} | "
              f"{'yes' if o50 <= 1000 else 'NO'} |")
    print(f"\nload average at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
