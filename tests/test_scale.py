"""Scale-out on Ray (`stagegraph.scale`): the same results as a local run, on a local cluster.

One local Ray cluster (2 CPUs, loopback, usage reporting and auth off) serves the whole module.
Checked here:

* evaluation sharded by query: BM25 | MiniLM dense -> RRF pool on the bundled sample writes the
  same TREC run files, byte for byte (ties included), the same metrics and funnel as a local batch
  run, and reports each worker's share;
* encoding sharded by document (Ray Data, the model loaded once per worker): embeddings equal the
  local encoder's to 1e-5 and an exact index over them ranks alike, through `stagegraph index
  --executor ray` (the embedding cache it writes is read by a local run) and through a collection's
  ingest (the generation it publishes searches like a locally built one);
* faults: a worker killed while its shards are queued is restarted and retried, the result
  unchanged; an unreachable address fails in seconds naming it; Ctrl-C on `stagegraph index
  --executor ray` exits 130, stops the cluster it started and leaves no embedding half-written;
* the `executor:` setting in YAML and Python, and its one-line errors.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

import stagegraph as sg  # noqa: E402
from stagegraph.cli import main  # noqa: E402
from stagegraph.evaluation.writer import save_report  # noqa: E402
from stagegraph.pipeline.executor import ExecutorConfig  # noqa: E402
from stagegraph.scale import ClusterError, RayCluster, RayExecutor  # noqa: E402
from stagegraph.scale.encode import ray_encoder  # noqa: E402
from tiny_models import WORDS, make_tiny_sentence_transformer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("STAGEGRAPH_HOME") or REPO / ".stagegraph")  # the sample's cached embeddings
CLI = [sys.executable, "-c", "import sys; from stagegraph.cli import main; sys.exit(main())"]
HYBRID = "hybrid"  # bundled: BM25 top-100 | MiniLM Flat top-100 -> RRF pool of 100


@pytest.fixture(scope="session")
def cluster():
    with RayCluster(workers=2) as ray_cluster:
        assert ray_cluster.started and ray_cluster.ray.cluster_resources()["CPU"] == 2
        yield ray_cluster
    assert not ray_cluster.ray.is_initialized()  # it started the cluster, so it stopped it


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st"))


def synthetic_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]


def write_beir(root: Path, texts: list[str], queries: list[str]) -> Path:
    root.mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for i, q in enumerate(queries):
            f.write(json.dumps({"_id": f"q{i}", "text": q}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{(7 * i) % len(texts)}\t1\n" for i in range(len(queries))))
    return root


def run_files(report, out: Path) -> dict[str, bytes]:
    save_report(report, out)
    return {p.name: p.read_bytes() for p in sorted((out / "runs").glob("*.trec"))}


# -- evaluation sharded by query ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_runs(cluster, tmp_path_factory):
    dataset = sg.load_dataset("sample", progress=False)
    pipe = sg.Pipeline.from_yaml(HYBRID)
    env = sg.Environment(dataset.corpus, work_dir=WORK, progress=False)
    local = sg.evaluate(pipe, dataset, mode="batch", env=env, progress=False)
    executor = RayExecutor(cluster, workers=2, progress=False)
    try:
        distributed = sg.evaluate(pipe, dataset, mode="batch", env=env, progress=False, executor=executor)
    finally:
        executor.close()
    out = tmp_path_factory.mktemp("runs")
    return local, distributed, run_files(local, out / "local"), run_files(distributed, out / "ray")


def test_ray_evaluation_writes_the_local_run_files_byte_for_byte(sample_runs):
    local, distributed, local_files, ray_files = sample_runs
    assert list(ray_files) == ["bm25.trec", "dense.trec", "pool.trec"]
    for name in local_files:
        assert ray_files[name] == local_files[name], f"{name} differs from the local batch run"
    # the pool's rankings tie often (the file writes each tie one float32 step down, in the ranking's order),
    # so the order of tied documents is part of what is compared
    ties = sum(int((r.scores[1:] == r.scores[:-1]).sum()) for r in local.runs[1]["pool"])
    assert ties > 100, "the pool's run has many exact ties, so their order is part of what is compared"


def test_ray_evaluation_reports_the_local_metrics_and_each_workers_share(sample_runs):
    local, distributed, _, _ = sample_runs
    assert (local.executor, distributed.executor) == ("local", "ray")
    for name, stage in local.stages.items():
        assert distributed.stages[name].metrics == stage.metrics, name
        assert distributed.stages[name].branches == stage.branches, name
        assert distributed.stages[name].throughput_qps > 0
    shares = distributed.workers
    assert [w.worker for w in shares] == [0, 1]
    assert sum(w.queries for w in shares) == local.queries == 116
    assert all(w.shards == 4 and w.seconds > 0 for w in shares)
    assert len({w.pid for w in shares}) == 2 and os.getpid() not in {w.pid for w in shares}
    assert not local.workers
    from stagegraph.evaluation.console import render_report
    from stagegraph.evaluation.html import render_html

    assert "Run on ray with 2 workers" in render_report(distributed, width=200)
    page = render_html(distributed)
    assert "Workers (ray)" in page and f"<td>{shares[1].pid}</td>" in page
    assert "Workers" not in render_html(local)


class KillingExecutor(RayExecutor):
    """Kills one worker process right after the shards are handed out (fault injection)."""

    killed: int | None = None

    def actors(self, pipeline, env):
        actors = super().actors(pipeline, env)
        if self.killed is None:
            self.pids = self.cluster.ray.get([a.pid.remote() for a in actors])
        return actors

    def execute(self, pipeline, queries, env, **kwargs):
        original = self.cluster.ray.wait

        def wait_after_kill(*args, **kw):
            if self.killed is None:
                self.killed = self.pids[1]
                os.kill(self.killed, signal.SIGKILL)
            return original(*args, **kw)

        self.cluster.ray.wait = wait_after_kill
        try:
            return super().execute(pipeline, queries, env, **kwargs)
        finally:
            self.cluster.ray.wait = original


def test_a_killed_worker_is_restarted_and_its_shards_retried_with_the_same_result(cluster, tmp_path):
    texts = synthetic_texts(3000)
    queries = sg.Queries([f"q{i}" for i in range(400)], synthetic_texts(400, seed=11))
    corpus = sg.Corpus([f"d{i}" for i in range(len(texts))], [""] * len(texts), texts)
    pipe = sg.Pipeline.from_config({"pipeline": [{"type": "bm25", "name": "bm25", "k": 50}]})
    env = sg.Environment(corpus, work_dir=tmp_path, progress=False)
    local = pipe.bind(env).execute(queries, mode="batch")
    executor = KillingExecutor(cluster, workers=2, progress=False)
    try:
        result = pipe.execute(queries, env=env, mode="batch", executor=executor)
    finally:
        executor.close()
    assert executor.killed == executor.pids[1]
    with pytest.raises(ProcessLookupError):
        os.kill(executor.killed, 0)  # it really died
    restarted = result.workers[1]
    assert restarted.pid != executor.killed, "the killed worker's shards must have run on its restarted process"
    assert result.workers[0].pid == executor.pids[0]
    for a, b in zip(local.final, result.final):
        assert np.array_equal(a.doc_rows, b.doc_rows) and np.array_equal(a.scores, b.scores)
    assert sum(w.queries for w in result.workers) == len(queries)


def test_an_unreachable_cluster_fails_in_seconds_naming_the_address():
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=r"127\.0\.0\.1:9 .*ray start --head"):
        RayCluster("127.0.0.1:9").__enter__()
    with pytest.raises(ClusterError, match="is not HOST:PORT"):
        RayCluster("nowhere").__enter__()
    assert time.perf_counter() - started < 10


def test_the_cli_refuses_an_unreachable_cluster_with_one_line(tmp_path):
    proc = subprocess.run(
        [*CLI, "--work-dir", str(tmp_path), "eval", "bm25", "--dataset", "sample",
         "--mode", "batch", "--executor", "ray", "--ray-address", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


# -- encoding sharded by document ----------------------------------------------------------------------
def test_ray_encoding_equals_the_local_encoder_and_ranks_alike(cluster, tiny_model):
    texts = synthetic_texts(700)
    from stagegraph.indexes.dense import DenseIndex
    from stagegraph.indexes.encoder import Encoder

    encoder = Encoder(tiny_model, batch_size=32, progress=False)
    local = encoder.encode(texts)
    distributed = ray_encoder(cluster, 2, progress=False)(encoder, texts)
    assert distributed.shape == local.shape and distributed.dtype == np.float32
    np.testing.assert_allclose(distributed, local, rtol=0, atol=1e-5)
    queries = encoder.encode(synthetic_texts(20, seed=3))
    a = DenseIndex.build(local, "Flat", corpus_fingerprint="c", progress=False).search(queries, 10)
    b = DenseIndex.build(distributed, "Flat", corpus_fingerprint="c", progress=False).search(queries, 10)
    assert np.array_equal(a[1], b[1])


def test_stagegraph_index_on_ray_writes_the_cache_a_local_run_reads(cluster, tiny_model, tmp_path, capsys):
    data = write_beir(tmp_path / "synthetic", synthetic_texts(500), synthetic_texts(10, seed=5))
    config = tmp_path / "dense.yaml"
    config.write_text(f"pipeline:\n  - {{type: dense, name: dense, k: 10, model: {tiny_model}, index: Flat}}\n")
    ray_work, local_work = tmp_path / "ray-work", tmp_path / "local-work"
    assert main(["--quiet", "--work-dir", str(ray_work), "index", str(config), "--dataset", str(data),
                 "--executor", "ray", "--workers", "2"]) == 0
    assert main(["--quiet", "--work-dir", str(local_work), "index", str(config), "--dataset", str(data)]) == 0
    (ray_file,) = (ray_work / "embeddings").glob("*/*.npy")
    (local_file,) = (local_work / "embeddings").glob("*/*.npy")
    assert ray_file.relative_to(ray_work) == local_file.relative_to(local_work)  # the same cache key
    np.testing.assert_allclose(np.load(ray_file), np.load(local_file), rtol=0, atol=1e-5)
    # A local evaluation over the Ray-built work directory reads those embeddings (no re-encoding).
    stamp = ray_file.stat().st_mtime_ns
    assert main(["--quiet", "--work-dir", str(ray_work), "eval", str(config), "--dataset", str(data),
                 "--mode", "batch", "--out", str(tmp_path / "out")]) == 0
    assert ray_file.stat().st_mtime_ns == stamp


def test_ingest_on_ray_publishes_a_generation_that_searches_like_a_local_one(cluster, tiny_model, tmp_path):
    from stagegraph.collection import ingest

    rng = random.Random(3)
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(60):
        (folder / f"note{i:02d}.md").write_text(f"# note {i}\n\n" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200))))
    config = {"pipeline": [{"type": "dense", "name": "dense", "k": 10, "model": tiny_model, "index": "Flat",
                            "max_seq_length": 128}]}  # the tiny model's positions
    executor = RayExecutor(cluster, workers=2, progress=False)
    ray_report = ingest([folder], tmp_path / "ray", pipeline=config, progress=False, encode=executor.encoder(False))
    local_report = ingest([folder], tmp_path / "local", pipeline=config, progress=False)
    assert ray_report.chunks == local_report.chunks > 60
    queries = ["protein cancer cell", "heat flow wing pressure", "dense vector rank fusion", "query document index"]
    found = {}
    for name in ("ray", "local"):
        with sg.open(config, collection=tmp_path / name) as stack:
            found[name] = [[(h.id, h.score) for h in stack.search(q, k=10).hits] for q in queries]
    for a, b in zip(found["ray"], found["local"]):
        assert [d for d, _ in a] == [d for d, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)


def test_ctrl_c_during_ray_encoding_exits_130_and_leaves_nothing_half_written(tmp_path):
    """A fresh process starts its own local cluster; SIGINT while it encodes stops everything."""
    data = write_beir(tmp_path / "synthetic", synthetic_texts(4000, seed=2), ["cell"])
    config = tmp_path / "dense.yaml"
    config.write_text("pipeline:\n  - {type: dense, name: dense, k: 10, index: Flat}\n")  # MiniLM: slow enough to interrupt
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [*CLI, "--work-dir", str(work), "index", str(config), "--dataset", str(data),
         "--executor", "ray", "--workers", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "RAY_ADDRESS": ""},
    )
    seen = ""
    deadline = time.monotonic() + 240
    while "Encoding" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stderr.read(1)
    assert "Encoding" in seen, seen
    time.sleep(2.0)  # the actors are encoding now
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + rest
    assert not list(work.glob("embeddings/*/*.npy")), "no embedding may be published from an interrupted encoding"
    assert not [p for p in work.rglob("*") if ".tmp" in p.name], "no temporary file may be left"
    time.sleep(1.0)
    session = f"_{proc.pid}"  # Ray names the session directory after the driver's pid
    alive = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "ray" in text and "session_" in text and session in text:
            alive.append(text)
    assert not alive, f"the cluster the command started is still running: {alive[:2]}"


# -- the setting ---------------------------------------------------------------------------------------
def test_executor_round_trips_through_yaml_and_checks_its_fields():
    pipe = sg.Pipeline.from_yaml("executor: {type: ray, workers: 3}\npipeline:\n  - {type: bm25, name: bm25}\n")
    assert pipe.executor == ExecutorConfig(type="ray", workers=3)
    again = sg.Pipeline.from_yaml(pipe.to_yaml())
    assert again.executor == pipe.executor and again.fingerprint() == pipe.fingerprint()
    assert sg.Pipeline.from_yaml("pipeline:\n  - {type: bm25}\n").executor.type == "local"
    assert "executor" not in sg.Pipeline.from_yaml("pipeline:\n  - {type: bm25}\n").to_config()
    with pytest.raises(sg.InputError, match=r"workers: .*greater than or equal to 1.*executor: ray"):
        sg.Pipeline.from_yaml("executor: {type: ray, workers: 0}\npipeline:\n  - {type: bm25}\n")
    with pytest.raises(sg.InputError, match=r"type: Input should be 'local' or 'ray'"):
        ExecutorConfig.of("spark")


def test_cli_executor_flags_are_checked_before_any_work(tmp_path, capsys):
    assert main(["--work-dir", str(tmp_path), "eval", "bm25", "--dataset", "sample", "--ray-address", "h:1"]) == 2
    assert "--ray-address and --workers go with --executor ray" in capsys.readouterr().err
    assert main(["--work-dir", str(tmp_path), "eval", "bm25", "--dataset", "sample", "--executor", "ray"]) == 2
    assert "add --mode batch" in capsys.readouterr().err
    with pytest.raises(sg.InputError, match="batch mode only"):
        sg.evaluate(sg.BM25Retriever(k=10), sg.load_dataset("sample", progress=False), mode="online", executor="ray")
