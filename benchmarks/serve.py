"""`stagegraph serve` under load: closed and open loop, three pipelines, micro-batching on and off.

    nice -n 5 .venv/bin/python benchmarks/serve.py                 # ~5 minutes on 2 cores
    .venv/bin/python benchmarks/serve.py --pipelines bm25 --seconds 3

Everything runs on this machine, over loopback only, and stops by itself: every level is bounded in
requests and seconds. Steps:

1. the bundled sample's corpus (`corpora/sample/corpus.jsonl`) is ingested into a collection under
   `--out` (`stagegraph ingest --config hybrid --id-field _id`, once);
2. for each pipeline (BM25 only; hybrid = BM25 | dense MiniLM-L6 -> RRF; hybrid-rerank = hybrid ->
   a cross-encoder over the pool's top 30 at 256 tokens) a server is started
   (`stagegraph serve ... --port 0`) and driven with the sample's queries by
   * closed loops of 1, 4 and 16 clients (each sends its next request when the last one answered),
   * open loops at constant arrival rates of 0.5x, 1x and 1.5x the best closed-loop throughput:
     requests are sent at their scheduled times whatever the server does, and latency is counted
     from the scheduled time, so queueing shows instead of being hidden (coordinated omission);
   per level: achieved requests/s (answered 200), P50/P95/P99 of those, the error and 503 rates,
   and the server's own queue and compute time from each answer's Server-Timing header;
3. BM25 only: HTTP overhead, one client, `POST /v1/search` against an in-process `stack.search` of
   the same collection and config, the two taking turns query by query: P50 of each and the difference;
4. micro-batching on against off: two hybrid-rerank servers, the same closed loops of 16 clients on
   `/v1/search` and on `/v1/rerank` (8 short documents a call), in alternating rounds.

The cross-encoder: all-MiniLM-L6-v2's packaged weights cut to 2 layers with a random one-logit head
(the demo reranker's architecture, so the same cost per pair; scores are meaningless, speed is not),
or `--reranker DIR` (e.g. a model from `stagegraph train-reranker`). The load average is printed
before and after each part: on a shared machine it says what ran beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from loadgen import Tally, blocking_post, closed_loop, open_loop, request_bytes  # noqa: E402 - benchmarks/loadgen.py (scripts run with benchmarks/ on sys.path)

CLI = [sys.executable, "-c", "import sys; from stagegraph.cli.app import main; sys.exit(main(sys.argv[1:]))"]
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    from stagegraph.evaluation.report import machine_info

    return f"{machine_info()['cpu_model']}, {len(os.sched_getaffinity(0))} usable cores"


# -- setup ------------------------------------------------------------------------------------------
def ensure_collection(out: Path) -> Path:
    root = out / "sample.sg"
    if (root / "collection.json").is_file():
        return root
    print(f"ingesting corpora/sample/corpus.jsonl into {root} (once) ...", flush=True)
    subprocess.run([*CLI, "-q", "ingest", str(ROOT / "corpora/sample/corpus.jsonl"), "--collection", str(root),
                    "--config", "hybrid", "--id-field", "_id"], check=True, cwd=ROOT)
    return root


def speed_reranker(out: Path) -> Path:
    target = out / "models" / "minilm-L2-random-head"
    if (target / "config.json").is_file():
        return target
    import torch

    from stagegraph.training.finetune import TrainConfig, load_base, save_model

    torch.manual_seed(0)
    model, tokenizer = load_base(TrainConfig(layers=2, head="cls"))
    target.mkdir(parents=True, exist_ok=True)
    save_model(model.eval(), tokenizer, target)
    return target


def write_configs(out: Path, reranker: Path) -> dict[str, Path]:
    import yaml

    from stagegraph.pipeline.config import load_config

    hybrid = load_config("hybrid")
    rerank = json.loads(json.dumps(hybrid))
    rerank["name"] = "hybrid-rerank"
    rerank["pipeline"].append({"type": "cross_encoder", "name": "rerank", "model": str(reranker), "depth": 30, "k": 10,
                               "max_length": 256, "batch_size": 16, "blend": 1.0})
    paths = {}
    for name, config in (("bm25", load_config("bm25")), ("hybrid", hybrid), ("hybrid-rerank", rerank)):
        paths[name] = out / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def queries() -> list[str]:
    from stagegraph.corpora.registry import load_dataset

    return list(load_dataset("sample", progress=False).queries.texts)


class Server:
    def __init__(self, config: Path, collection: Path, *extra: str):
        self.proc = subprocess.Popen([*CLI, "-q", "serve", str(config), "--collection", str(collection), "--port", "0", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        deadline = time.monotonic() + 300
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"the server for {config.name} exited before listening")
            found = LISTENING.search(line)
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def http_overhead(server: Server, config: Path, collection: Path, texts: list[str], n: int) -> dict:
    from stagegraph.collection import Stack
    from stagegraph.collection.collection import Collection
    from stagegraph.pipeline.compose import Pipeline

    stack = Stack(Pipeline.from_yaml(config), Collection.open(collection))
    sock = socket.create_connection((server.host, server.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    http, local = [], []
    try:
        for i in range(n + 20):
            q = texts[i % len(texts)]
            payload = request_bytes("/v1/search", {"query": q, "k": 10})
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for which in order:
                t0 = time.perf_counter_ns()
                if which == 0:
                    assert blocking_post(sock, payload) == 200
                    ns = time.perf_counter_ns() - t0
                    if i >= 20:
                        http.append(ns)
                else:
                    stack.search(q, k=10)
                    ns = time.perf_counter_ns() - t0
                    if i >= 20:
                        local.append(ns)
    finally:
        sock.close()
        stack.close()
    h, l = np.percentile(http, 50) / 1e6, np.percentile(local, 50) / 1e6
    return {"http_p50_ms": h, "in_process_p50_ms": l, "overhead_p50_ms": h - l, "pairs": n}


# -- report -----------------------------------------------------------------------------------------
HEADER = ("| pipeline | level | requests | req/s | P50 ms | P95 ms | P99 ms | errors | 503s | 503 P99 ms client / server "
          "| server queue ms | server compute ms |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def fmt(v, digits=1) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def table_row(pipeline: str, r: dict) -> str:
    return (f"| {pipeline} | {r['level']} | {r['requests']} | {fmt(r['rps'])} | {fmt(r['p50'], 2)} | {fmt(r['p95'], 2)} "
            f"| {fmt(r['p99'], 2)} | {r['error_rate']:.1%}{' ' + str(r['errors']) if r['errors'] else ''} | {r['rate_503']:.1%} | {fmt(r['p99_503_ms'], 1)} / {fmt(r['p99_503_server_ms'], 2)} "
            f"| {fmt(r['queue_ms'], 2)} | {fmt(r['compute_ms'], 2)} |")


def drive(server: Server, payloads: list[bytes], args, pipeline: str, rows: list[str], results: dict) -> None:
    levels = []
    for clients in (1, 4, 16):
        t = asyncio.run(closed_loop(server.host, server.port, payloads, clients, args.seconds, args.max_requests))
        row = t.row(f"closed, {clients} client{'s' if clients > 1 else ''}")
        levels.append(row)
        rows.append(table_row(pipeline, row))
        print(rows[-1], flush=True)
    saturation = max(r["rps"] for r in levels)
    for factor, name in ((0.5, "below"), (1.0, "at"), (1.5, "above")):
        rate = max(0.5, saturation * factor)
        t = asyncio.run(open_loop(server.host, server.port, payloads, rate, args.seconds, args.max_requests,
                                  grace=args.deadline_ms / 1000.0 + 5))
        row = t.row(f"open, {rate:,.1f}/s ({name} saturation)")
        levels.append(row)
        rows.append(table_row(pipeline, row))
        print(rows[-1], flush=True)
    healthy = socket.create_connection((server.host, server.port))
    healthy.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
    levels.append({"healthy_after": b"200" in healthy.recv(4096)})
    healthy.close()
    results[pipeline] = levels


def batching_comparison(configs, collection, texts, args, results) -> list[str]:
    on = Server(configs["hybrid-rerank"], collection, "--batching", "on", "--deadline-ms", str(args.deadline_ms))
    off = Server(configs["hybrid-rerank"], collection, "--batching", "off", "--deadline-ms", str(args.deadline_ms))
    search = [request_bytes("/v1/search", {"query": q, "k": 10}) for q in texts]
    docs = [t for t in texts]
    rerank = [request_bytes("/v1/rerank", {"query": q, "documents": [docs[(i + j) % len(docs)] for j in range(8)]})
              for i, q in enumerate(texts)]
    tallies = {(mode, kind): Tally() for mode in ("on", "off") for kind in ("search", "rerank")}
    try:
        for round_ in range(args.rounds):
            for mode, server in ((("on", on), ("off", off)) if round_ % 2 == 0 else (("off", off), ("on", on))):
                for kind, payloads in (("search", search), ("rerank", rerank)):
                    t = asyncio.run(closed_loop(server.host, server.port, payloads, 16, args.seconds, args.max_requests))
                    total = tallies[(mode, kind)]
                    total.latencies += t.latencies
                    total.statuses += t.statuses
                    total.queue += t.queue
                    total.compute += t.compute
                    total.elapsed += t.elapsed
    finally:
        on.stop()
        off.stop()
    lines = ["| micro-batching | endpoint (16 clients, closed loop) | requests | req/s | P50 ms | P95 ms | P99 ms | server queue ms | server compute ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    results["batching"] = {}
    for (mode, kind), t in tallies.items():
        r = t.row(kind)
        results["batching"][f"{mode}/{kind}"] = r
        lines.append(f"| {mode} | {'/v1/search (hybrid-rerank)' if kind == 'search' else '/v1/rerank (8 documents)'} "
                     f"| {r['requests']} | {fmt(r['rps'])} | {fmt(r['p50'], 1)} | {fmt(r['p95'], 1)} | {fmt(r['p99'], 1)} "
                     f"| {fmt(r['queue_ms'], 1)} | {fmt(r['compute_ms'], 1)} |")
    return lines


def main() -> None:
    try:  # the client's own event loop: uvloop when installed (the server's uvicorn takes it too)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "out" / "serve-bench"))
    ap.add_argument("--pipelines", default="bm25,hybrid,hybrid-rerank")
    ap.add_argument("--reranker", help="cross-encoder directory (default: MiniLM cut to 2 layers, random head)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each level (default 5)")
    ap.add_argument("--max-requests", type=int, default=3000, help="most requests per level (default 3000)")
    ap.add_argument("--deadline-ms", type=float, default=5000.0, help="the servers' --deadline-ms (default 5000)")
    ap.add_argument("--overhead-queries", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the batching comparison")
    ap.add_argument("--no-batching-comparison", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    collection = ensure_collection(out)
    reranker = Path(args.reranker) if args.reranker else speed_reranker(out)
    configs = write_configs(out, reranker)
    texts = queries()
    payloads = [request_bytes("/v1/search", {"query": q, "k": 10}) for q in texts]
    rows, results, notes = [HEADER], {"machine": machine(), "load": {}}, []
    for pipeline in args.pipelines.split(","):
        results["load"][f"{pipeline} before"] = load()
        server = Server(configs[pipeline], collection, "--deadline-ms", str(args.deadline_ms))
        try:
            drive(server, payloads, args, pipeline, rows, results)
            if pipeline == "bm25":
                results["overhead"] = http_overhead(server, configs["bm25"], collection, texts, args.overhead_queries)
                o = results["overhead"]
                notes.append(f"HTTP overhead, BM25 only, one client, {o['pairs']} queries each way in turns: "
                             f"HTTP P50 {o['http_p50_ms']:.3f} ms, in-process stack.search P50 {o['in_process_p50_ms']:.3f} ms, "
                             f"overhead {o['overhead_p50_ms']:.3f} ms")
                print(notes[-1], flush=True)
        finally:
            code = server.stop()
        results["load"][f"{pipeline} after"] = load()
        notes.append(f"{pipeline}: load average before {results['load'][f'{pipeline} before']}, after "
                     f"{results['load'][f'{pipeline} after']}; server exit {code} after SIGTERM; healthy after the "
                     f"overload: {results[pipeline][-1]['healthy_after']}")
    batching = []
    if not args.no_batching_comparison and "hybrid-rerank" in args.pipelines:
        results["load"]["batching before"] = load()
        batching = batching_comparison(configs, collection, texts, args, results)
        results["load"]["batching after"] = load()
        notes.append(f"micro-batching comparison: load average before {results['load']['batching before']}, "
                     f"after {results['load']['batching after']}")
    print()
    print(f"machine: {machine()}")
    print("\n".join(rows))
    print()
    print("\n".join(batching))
    print()
    for note in notes:
        print(note)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    shutil.rmtree(out / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
