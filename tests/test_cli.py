"""The command line: eval/index/search on a tiny BEIR folder with stub stages, and exit codes."""

import json
import textwrap

import pytest
from stubs import register_stubs

from stagegraph.cli.app import Exit, main

EXIT_OK, EXIT_BAD_INPUT = Exit.OK, Exit.BAD_INPUT

register_stubs()

CONFIG = """
pipeline:
  - parallel:
      - {type: stub_retriever, name: a, k: 20}
      - {type: stub_retriever, name: b, k: 20, seed: 1}
  - {type: stub_fuse, name: pool, k: 10}
  - {type: stub_rerank, name: rr, k: 5}
"""


@pytest.fixture
def beir_dir(tmp_path):
    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    docs = [json.dumps({"_id": f"d{i}", "title": f"title {i}", "text": f"text {i}"}) for i in range(40)]
    (root / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    queries = [json.dumps({"_id": f"q{i}", "text": f"question {i}"}) for i in range(6)]
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{(3 * i) % 40}\t1" for i in range(6)]
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def test_eval_writes_the_report_contract(beir_dir, config, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--quiet", "--work-dir", str(tmp_path / "w"), "eval", str(config), "--dataset", str(beir_dir), "--out", str(out)])
    assert code == EXIT_OK
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] and report["split"] == "test" and report["mode"] == "online"
    assert report["config"]["pipeline"][1]["type"] == "stub_fuse"
    for name in ["a", "b", "pool", "rr"]:
        stage = report["stages"][name]
        assert set(stage["latency_ms"]) >= {"p50", "p95", "p99", "mean", "max"}
        assert stage["queries"] == 6
        assert set(stage["metrics"]) >= {"recall@10", "recall@100", "ndcg@10", "mrr@10", "map"}
        lines = (out / "runs" / f"{name}.trec").read_text().splitlines()
        assert lines and len(lines[0].split()) == 6
    assert "rr" in capsys.readouterr().out


def test_second_eval_reads_the_cache_and_says_so(beir_dir, config, tmp_path):
    args = ["--quiet", "--work-dir", str(tmp_path / "w"), "eval", str(config), "--dataset", str(beir_dir)]
    assert main(args + ["--out", str(tmp_path / "o1")]) == EXIT_OK
    assert main(args + ["--out", str(tmp_path / "o2")]) == EXIT_OK
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert all(s["cache_hit"] for s in report["stages"].values())
    assert main(args + ["--no-cache", "--out", str(tmp_path / "o3")]) == EXIT_OK
    report = json.loads((tmp_path / "o3" / "report.json").read_text())
    assert not any(s["cache_hit"] for s in report["stages"].values())


def test_search_prints_each_stage(beir_dir, config, tmp_path, capsys):
    code = main(["--quiet", "--work-dir", str(tmp_path / "w"), "search", str(config), "question 1", "--dataset", str(beir_dir)])
    assert code == EXIT_OK
    out = capsys.readouterr().out
    assert "question 1" in out and "end to end" in out
    header = next(line for line in out.splitlines() if "where / snippet" in line)
    assert [cell.strip() for cell in header.split("┃")][-5:-1] == ["a", "b", "pool", "rr"]  # one column per stage
    assert "time: a " in out and " · rr " in out
    assert "found by: a " in out and ", b " in out


def test_index_warms_every_stage(beir_dir, config, tmp_path, capsys):
    assert main(["--work-dir", str(tmp_path / "w"), "index", str(config), "--dataset", str(beir_dir)]) == EXIT_OK
    assert "pool: ready" in capsys.readouterr().out


def test_bad_inputs_exit_2_with_one_clear_line(beir_dir, config, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.yaml"), "--dataset", str(beir_dir)]) == EXIT_BAD_INPUT
    assert "no such pipeline config file" in capsys.readouterr().err
    assert main(["--quiet", "eval", str(config), "--dataset", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert "No dataset" in capsys.readouterr().err
    assert main(["search", str(config), "   ", "--dataset", str(beir_dir)]) == EXIT_BAD_INPUT
    assert "query is empty" in capsys.readouterr().err
    assert main([]) == EXIT_BAD_INPUT


def test_every_subcommand_has_help(capsys):
    for command in ["eval", "index", "search", "compare", "sweep"]:
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert "usage: stagegraph " + command in capsys.readouterr().out


def test_global_flags_work_after_the_subcommand(beir_dir, config, tmp_path, capsys):
    code = main(["eval", str(config), "--dataset", str(beir_dir), "--quiet", "--work-dir", str(tmp_path / "w")])
    assert code == EXIT_OK
    assert (tmp_path / "w" / "cache").is_dir()


def test_an_unknown_metric_is_one_line_and_exit_2(beir_dir, config, tmp_path, capsys):
    code = main(["--quiet", "--work-dir", str(tmp_path / "w"), "eval", str(config), "--dataset", str(beir_dir), "--metrics", "bleu@4"])
    assert code == Exit.BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown metric 'bleu'") and "valid metrics" in err[0]


def test_a_stage_that_cannot_load_its_model_exits_3(beir_dir, tmp_path, capsys):
    path = tmp_path / "ce.yaml"
    path.write_text(
        "pipeline:\n  - {type: stub_retriever, name: a, k: 20}\n"
        f"  - {{type: cross_encoder, name: rr, depth: 20, model: {tmp_path / 'no-such-model'}}}\n"
    )
    code = main(["--quiet", "--work-dir", str(tmp_path / "w"), "eval", str(path), "--dataset", str(beir_dir)])
    assert code == Exit.STAGE_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load the cross-encoder" in err[0] and "Traceback" not in err[0]


def test_an_unexpected_error_is_one_line_with_a_hint_and_debug_shows_the_traceback(beir_dir, config, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr("stagegraph.evaluation.evaluate.evaluate", broken)
    args = ["--quiet", "--work-dir", str(tmp_path / "w"), "eval", str(config), "--dataset", str(beir_dir)]
    assert main(args) == Exit.INTERNAL
    err = capsys.readouterr().err
    assert "unexpected KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        main(["--debug", *args])


def test_warnings_are_one_line_each_and_repeats_are_counted(tmp_path, capsys):
    root = tmp_path / "ds"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"heat flow {i} wing"})
                                                 for i in range(5)) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": f"q{i}", "text": "the of and"}) for i in range(8)) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td0\t1\n" for i in range(8)))
    import subprocess
    import sys

    done = subprocess.run(  # a real process: pytest would capture the warnings itself
        [sys.executable, "-c", "import sys; from stagegraph.cli import main; sys.exit(main())",
         "--work-dir", str(tmp_path / "w"), "eval", "bm25", "--dataset", str(root), "--quiet", "--mode", "batch"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == Exit.OK, done.stderr
    warning_lines = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(done.stderr.splitlines()) == len(warning_lines)  # nothing else: no source lines, no tracebacks
    assert len(warning_lines) == 6, warning_lines  # five shown, then the count
    assert all("has no terms after analysis" in line for line in warning_lines[:5])
    assert warning_lines[5] == "warning: ... and 3 more EmptyQueryWarning warnings like these"
