"""Scale-out on Ray: its overhead and its correctness against a local run, on this machine.

    nice -n 5 .venv/bin/python benchmarks/scale_out.py [--dataset ../shared/datasets/scifact]
                                                        [--docs 2000] [--work /tmp/scale-out]

Prints one table (a script, not a timed test: run it on a quiet machine):

* encoding docs/s: the first `--docs` documents with all-MiniLM-L6-v2, locally (this process,
  every core) and through `stagegraph.scale.encode` with 1 and 2 Ray workers (each call starts its
  actors and loads the model once per worker, as an index build does); the largest difference from
  the local embeddings;
* batch evaluation queries/s: the bundled `hybrid` graph (BM25 | dense -> RRF) on the dataset's test
  queries, locally and on 1 and 2 workers, first run (actors start and warm up) and second run
  (warm actors), and whether every TREC run file equals the local one byte for byte;
* Ray's start-up (a local cluster), an actor call's round trip and a task's cost;
* peak memory of this process and every process it started (Ray's included), sampled from /proc.

On 2 cores the point is the overhead and the correctness, not a speed-up: a local run already
uses both cores, and a Ray worker holds one.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")


class TreeMemory:
    """Peak resident memory of this process and all its descendants, sampled every 0.2 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self) -> int:
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parents[int(stat.parent.name)] = int(fields[1])
            except (OSError, ValueError, IndexError):
                continue
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            pid = frontier.pop()
            for child, parent in parents.items():
                if parent == pid and child not in tree:
                    tree.add(child)
                    frontier.append(child)
        total = 0
        for pid in tree:
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            except (OSError, ValueError, IndexError):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(0.2)

    def __enter__(self) -> TreeMemory:
        self.peak = self._tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def run_files(report, out: Path) -> dict[str, bytes]:
    from stagegraph.evaluation.writer import save_report

    save_report(report, out)
    return {p.name: p.read_bytes() for p in sorted((out / "runs").glob("*.trec"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"))
    parser.add_argument("--docs", type=int, default=2000, help="documents to encode (default 2000)")
    parser.add_argument("--work", default="/tmp/scale-out", help="work directory for indexes and run files")
    parser.add_argument("--workers", default="1,2", help="worker counts to try (default 1,2)")
    args = parser.parse_args()

    import stagegraph as sg
    from stagegraph.indexes.encoder import Encoder
    from stagegraph.scale import RayCluster, RayExecutor
    from stagegraph.scale.encode import ray_encoder

    work = Path(args.work)
    counts = [int(w) for w in args.workers.split(",")]
    dataset = sg.load_dataset(args.dataset, progress=False)
    texts = dataset.corpus.doc_texts()[: args.docs]
    rows: list[tuple[str, ...]] = []

    # -- encoding ------------------------------------------------------------------------------
    encoder = Encoder(progress=False)
    encoder.encode(texts[:64])  # the model loaded and warm, as a build finds it
    with TreeMemory() as memory:
        started = time.perf_counter()
        local = encoder.encode(texts)
        seconds = time.perf_counter() - started
    rows.append(("encode", "local", f"{len(texts) / seconds:,.1f} docs/s", f"{seconds:.1f} s", gib(memory.peak), "-"))
    for workers in counts:
        with RayCluster(workers=workers) as cluster, TreeMemory() as memory:
            started = time.perf_counter()
            embedded = ray_encoder(cluster, workers, progress=False)(encoder, texts)
            seconds = time.perf_counter() - started
        diff = float(np.abs(embedded - local).max())
        rows.append(("encode", f"ray x{workers}", f"{len(texts) / seconds:,.1f} docs/s", f"{seconds:.1f} s",
                     gib(memory.peak), f"max |diff| {diff:.1e}"))

    # -- batch evaluation ----------------------------------------------------------------------
    pipe = sg.Pipeline.from_yaml("hybrid")
    env = sg.Environment(dataset.corpus, work_dir=work / "work", progress=True)
    pipe.warm_up(env)  # indexes built (or found) once, outside every figure
    env.progress = False
    with TreeMemory() as memory:
        report = sg.evaluate(pipe, dataset, mode="batch", env=env, progress=False)
    reference = run_files(report, work / "runs-local")
    queries = report.queries
    rows.append(("evaluate", "local", f"{report.end_to_end.throughput_qps:,.1f} q/s", f"{report.end_to_end.wall_ms / 1e3:.1f} s",
                 gib(memory.peak), f"{queries} queries"))
    overhead: list[tuple[str, ...]] = []
    for workers in counts:
        started = time.perf_counter()
        with RayCluster(workers=workers) as cluster:
            start_up = time.perf_counter() - started
            executor = RayExecutor(cluster, workers=workers, progress=False)
            try:
                for attempt in ("first run", "warm actors"):
                    with TreeMemory() as memory:
                        t0 = time.perf_counter()
                        distributed = sg.evaluate(pipe, dataset, mode="batch", env=env, progress=False, executor=executor)
                        seconds = time.perf_counter() - t0
                    same = run_files(distributed, work / f"runs-ray{workers}") == reference
                    rows.append(("evaluate", f"ray x{workers}, {attempt}", f"{queries / seconds:,.1f} q/s", f"{seconds:.1f} s",
                                 gib(memory.peak), "run files " + ("identical" if same else "DIFFER")))
            finally:
                executor.close()
            if workers == counts[-1]:
                overhead = measure_overhead(cluster, start_up)

    print(f"\nScale-out on Ray: {args.dataset} ({len(dataset.corpus)} docs), {os.cpu_count()} CPUs, "
          f"ray {__import__('ray').__version__}\n")
    header = ("work", "where", "throughput", "wall", "peak memory", "check")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print()
    for name, value in overhead:
        print(f"{name}: {value}")


def measure_overhead(cluster, start_up: float) -> list[tuple[str, str]]:
    ray = cluster.ray

    @ray.remote(num_cpus=1)
    class Echo:
        def ping(self, x):
            return x

    @ray.remote(num_cpus=1)
    def noop(x):
        return x

    actor = Echo.remote()
    ray.get(actor.ping.remote(0))
    n = 300
    t0 = time.perf_counter()
    for i in range(n):
        ray.get(actor.ping.remote(i))
    call = (time.perf_counter() - t0) / n
    ray.get(noop.remote(0))
    t0 = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n)])
    task = (time.perf_counter() - t0) / n
    ray.kill(actor)
    return [
        ("local cluster start-up", f"{start_up:.1f} s"),
        ("actor call round trip", f"{call * 1e3:.2f} ms (sequential, {n} calls)"),
        ("task", f"{task * 1e3:.2f} ms each ({n} tasks submitted at once)"),
    ]


if __name__ == "__main__":
    main()
