"""The README's Python examples, run as written, from a directory with its own `pipeline/` and
`stages/` packages (which must not shadow stagegraph's).

Each ```python block of README.md runs in a fresh interpreter. One substitution is made: no
pretrained cross-encoder can be downloaded here, so the chapter's default model id is replaced by a
tiny local cross-encoder (real loading code, random weights); the retrievers, pool and evaluation run
for real on the bundled sample.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import make_tiny_cross_encoder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
OWN_DOCUMENTS = README.split("## Your own documents", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project folder whose own `pipeline`, `stages`, `corpora` and `indexes` packages are decoys."""
    root = tmp_path_factory.mktemp("user-project")
    for name in ("pipeline", "stages", "corpora", "indexes"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('the user project\\'s own {name} package was imported')\n")
    model = make_tiny_cross_encoder(root / "models" / "tiny-ce", max_length=512)
    shutil.copytree(REPO / "docs" / "examples", root / "docs" / "examples")
    return root, model


def _env() -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        # indexes and embeddings of the sample are shared with the rest of the suite (built once)
        "STAGEGRAPH_HOME": os.environ.get("STAGEGRAPH_HOME", str(REPO / ".stagegraph")),
        "PYTHONPATH": "",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


@pytest.fixture(scope="module")
def notes(project):
    """The shell commands of "Your own documents", run as written in the project folder (they make notes.sg)."""
    root, model = project
    (block,) = re.findall(r"```bash\n(.*?)```", OWN_DOCUMENTS, flags=re.S)
    script = "set -euo pipefail\n" + block.replace(DEFAULT_RERANKER, str(model))
    done = subprocess.run(["bash", "-c", script], cwd=root, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the README's commands failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_your_own_documents_commands_run_as_written(notes):
    assert "5 added, 0 updated" in notes and "published generation 1" in notes
    assert "nothing changed: generation 1 stays" in notes  # --sync on an unchanged folder
    assert "quantisation.md#" in notes and "cuda-setup.md" not in notes.split("found by")[0]  # the filter held (one row per document)
    assert "notes.sg · test · 4 queries" in notes


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2
    assert any("import stagegraph as sg" in b for b in BLOCKS)
    assert any("CrossEncoderReranker(" in b and ".rerank(" in b for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_as_written(project, notes, index):
    root, model = project
    code = BLOCKS[index].replace(DEFAULT_RERANKER, str(model))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"README block {index} failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"
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
