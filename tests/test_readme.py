"""The README and the docs pages, run as written.

* Every ```python block of README.md and docs/*.md runs in a fresh interpreter, from a user's project
  folder whose own `pipeline/`, `stages/`, `corpora/` and `indexes/` packages are decoys (they must
  not shadow stagegraph's).
* The README's quickstart runs as a user types it: its shell block in that folder (`source
  .venv/bin/activate` finds the environment the tests run in), then its server command in the
  background, and its `curl` once the server says it is listening; the server must stop cleanly.
* Every other shell command of the README and the docs is checked without being run (they take
  minutes to hours, a cluster, or the network): each `stagegraph ...` command must parse with the
  real command line's parser, each `python benchmarks/X.py ...` may use only flags its `--help` names,
  and each `bash .ci/X` must exist.

Two substitutions are made, and only these: no pretrained cross-encoder can be downloaded here, so the
chapter's default model id is replaced by a tiny local cross-encoder (real loading code, random
weights); and the server is given a free port (`--port`) in place of its default 8000.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_models import make_tiny_cross_encoder

from stagegraph.cli.app import build_parser, hoist_global_flags

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
README = (REPO / "README.md").read_text(encoding="utf-8")
PAGES = {"README.md": README} | {
    f"docs/{p.name}": p.read_text(encoding="utf-8") for p in sorted((REPO / "docs").glob("*.md"))
}
BLOCKS = [(page, block) for page, text in PAGES.items() for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]
QUICKSTART = README.split("## Quickstart: your own documents", 1)[1].split("\n## ", 1)[0]
SHELL_BLOCKS = [(page, block) for page, text in PAGES.items() for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project folder: decoy packages, the docs' example files, and `.venv` = this environment."""
    root = tmp_path_factory.mktemp("user-project")
    for name in ("pipeline", "stages", "corpora", "indexes"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('the user project\\'s own {name} package was imported')\n")
    model = make_tiny_cross_encoder(root / "models" / "tiny-ce", max_length=512)
    shutil.copytree(REPO / "docs" / "examples", root / "docs" / "examples")
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return root, model


def _env() -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        # indexes and embeddings of the sample are shared with the rest of the suite (built once)
        "STAGEGRAPH_HOME": os.environ.get("STAGEGRAPH_HOME", str(REPO / ".stagegraph")),
        "PYTHONPATH": "",
    }


def _bash(script: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def notes(project):
    """The quickstart's first shell block, run as written in the project folder (it makes notes.sg)."""
    root, _ = project
    block = re.findall(r"```bash\n(.*?)```", QUICKSTART, flags=re.S)[0]
    assert block.startswith("source .venv/bin/activate")
    done = _bash(block, root)
    assert done.returncode == 0, f"the README's quickstart failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_quickstart_runs_as_written(notes):
    assert "5 added, 0 updated" in notes and "published generation 1" in notes
    assert "nothing changed: generation 1 stays" in notes  # --sync on an unchanged folder
    found = notes.split("found by")[0]
    assert "quantisation.md#" in found and "cuda-setup.md" not in found  # the filter held (one row per document)
    assert "notes.sg · test · 4 queries" in notes


def test_the_quickstart_fits_in_forty_lines():
    code = [line for block in re.findall(r"```\w*\n(.*?)```", QUICKSTART, flags=re.S) for line in block.splitlines()]
    assert len(code) < 40, f"the quickstart's code is {len(code)} lines"
    assert len(README.splitlines()) < 350


def test_the_quickstart_server_answers_its_curl(project, notes):
    root, _ = project
    serve_block, curl_block = re.findall(r"```bash\n(.*?)```", QUICKSTART, flags=re.S)[1:3]
    assert serve_block.strip().startswith("stagegraph serve") and "curl" in curl_block
    port = str(free_port())
    server = subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && exec {serve_block.strip()} --port {port}"],
                              cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("listening on" in line for line in lines):
            assert server.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "the server did not say it was listening:\n" + "".join(lines)
            time.sleep(0.2)
        done = _bash(curl_block.replace("localhost:8000", f"localhost:{port}"), root, timeout=120)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert [hit["doc_id"] for hit in answer["hits"]][:1] == ["quantisation.md"], answer
        assert all(hit["metadata"]["tags"] and "gpu" in hit["metadata"]["tags"] for hit in answer["hits"])
    finally:
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=60)
    assert rc == 0, "".join(lines)


def test_the_pages_have_python_examples():
    readme = [block for page, block in BLOCKS if page == "README.md"]
    assert any("import stagegraph as sg" in b and "sg.open(" in b for b in readme)
    assert any("CrossEncoderReranker(" in b and ".rerank(" in b for b in readme)
    assert any(page.startswith("docs/") for page, _ in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"{page}-{i}" for i, (page, _) in enumerate(BLOCKS)])
def test_python_example_runs_as_written(project, notes, index):
    root, model = project
    page, block = BLOCKS[index]
    code = block.replace(DEFAULT_RERANKER, str(model))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{page} block failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"
    out = done.stdout
    if "sg.evaluate" in code:
        lines = out.splitlines()
        assert lines[0] == "Pipeline" and any("pool [pool" in line for line in lines)
        assert any(line.startswith("1 ") for line in lines), out  # the first hit's line
        assert "['bm25', 'dense', 'pool', 'rerank']" in out
    if ".rerank(" in code:
        assert "a.md" in out and "b.md" in out
    if "sg.open(" in code:
        lines = out.splitlines()
        assert lines[0].startswith("1 quantisation.md 2024 ")  # the filter: gpu-tagged notes from 2024 on
        assert lines[-1] == "2 ['new-note']"  # the upsert published generation 2 and the stack moved to it


# -- every other command: checked, not run ---------------------------------------------------------
def _commands(block: str) -> list[list[str]]:
    """The command lines of a shell block: continuations joined, comments and output lines dropped,
    `a && b` and `a; b` split, leading VAR=value assignments removed."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "||", "|", "&"):
                while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
                    command.pop(0)
                if command:
                    out.append(command)
                command = []
            else:
                command.append(word)
    return out


PARSER = build_parser()
HELP: dict[str, str] = {}


def _check_stagegraph(argv: list[str]) -> str | None:
    try:
        PARSER.parse_args(hoist_global_flags(argv))
    except SystemExit:
        return "the command line refuses it"
    return None


def _check_benchmark(argv: list[str]) -> str | None:
    script = next((a for a in argv[1:] if a.startswith("benchmarks/")), None)
    if script is None:
        return None
    if not (REPO / script).is_file():
        return f"{script} does not exist"
    if script not in HELP:
        done = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                              cwd=REPO, env=_env(), timeout=120)
        HELP[script] = done.stdout if done.returncode == 0 else ""
    if not HELP[script]:
        return f"{script} --help failed"
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    unknown = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", HELP[script]))
    return f"{script} has no {', '.join(unknown)}" if unknown else None


SHELL_COMMANDS = [(page, cmd) for page, block in SHELL_BLOCKS for cmd in _commands(block)]


def test_every_command_the_pages_show_is_checked():
    kinds = {Path(cmd[0]).name for _, cmd in SHELL_COMMANDS}
    assert {"stagegraph", "python", "bash"} <= kinds
    assert sum(Path(cmd[0]).name == "stagegraph" for _, cmd in SHELL_COMMANDS) >= 30


@pytest.mark.parametrize("page,argv", SHELL_COMMANDS, ids=[f"{p}:{' '.join(c)[:60]}" for p, c in SHELL_COMMANDS])
def test_shown_command_is_valid(page, argv):
    name = Path(argv[0]).name
    if name == "stagegraph":
        problem = _check_stagegraph(argv[1:])
    elif name.startswith("python"):
        problem = _check_benchmark(argv)
    elif name == "bash" and len(argv) > 1 and argv[1].startswith(".ci/"):
        problem = None if (REPO / argv[1]).is_file() else f"{argv[1]} does not exist"
    else:
        problem = None  # curl, pip, ray, source, export: not ours to check
    assert problem is None, f"{page}: `{shlex.join(argv)}`: {problem}"


def test_the_checker_catches_a_wrong_command():
    assert _check_stagegraph(["search", "hybrid", "q", "--colection", "x"]) is not None
    assert _check_stagegraph(["search", "hybrid", "q", "--collection", "x"]) is None
    assert _check_benchmark(["python", "benchmarks/rerank.py", "--no-such-flag"]) is not None
    assert _commands("A=1 stagegraph eval x \\\n  --out y  # note\n# only a comment\n") == [["stagegraph", "eval", "x", "--out", "y"]]


def test_argparse_is_what_the_checker_relies_on():
    """parse_args exits on an unknown flag (the checker's signal), and does not run the command."""
    assert isinstance(PARSER, argparse.ArgumentParser)
    args = PARSER.parse_args(["ingest", "nowhere", "--collection", "nowhere.sg"])
    assert args.command == "ingest" and not Path("nowhere.sg").exists()
