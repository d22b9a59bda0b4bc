"""The distribution as a user installs it: a wheel with one top-level package, its package data, and
a fresh virtual environment where the command line, the pinned expectations and the README's
example work without the repository on the path."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tiny_models import make_tiny_cross_encoder

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("stagegraph-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"stagegraph"}
    for expected in [
        "stagegraph/pipeline/compose.py", "stagegraph/stages/rerank/cross_encoder.py", "stagegraph/cli/app.py",
        "stagegraph/configs/hybrid-rerank.yaml", "stagegraph/configs/demo-expectations.yaml",
        "stagegraph/configs/expectations/bm25.yaml", "stagegraph/corpora/sample/corpus.jsonl",
        "stagegraph/corpora/sample/qrels/test.tsv", "stagegraph/corpora/sample/DATASHEET.md",
    ]:
        assert expected in names, expected
    top_level = [n for n in names if n.endswith("top_level.txt")]
    assert not top_level or zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["stagegraph"]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed; the dependencies come from this environment's site-packages
    (a .pth line), so nothing is downloaded and the repository itself is not importable there."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps-from-dev-venv.pth").write_text(ours + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _run(venv, args, cwd, **env):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": "", **env}
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)


def test_installed_package_is_imported_from_the_venv_not_the_repository(venv, tmp_path):
    done = _run(venv, [str(venv / "bin" / "python"), "-c", "import stagegraph, stagegraph.pipeline as p; print(p.__file__)"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(venv)), done.stdout


def test_the_installed_command_line_finds_its_configs_and_pins(venv, tmp_path):
    cli = str(venv / "bin" / "stagegraph")
    done = _run(venv, [cli, "demo", "--help"], tmp_path)
    assert done.returncode == 0 and "usage: stagegraph demo" in done.stdout, done.stderr
    listed = _run(venv, [cli, "check-expectations", "--list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "bm25-scifact-test" in listed.stdout and "hybrid-rrf-npl-test" in listed.stdout


@pytest.mark.dataset
def test_the_installed_command_line_checks_a_pin_on_a_shared_dataset(venv, tmp_path):
    if not (SHARED / "med").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared datasets are missing at {SHARED}")
        pytest.skip("needs ../shared/datasets")
    done = _run(venv, [str(venv / "bin" / "stagegraph"), "check-expectations", "--id", "bm25-med-test"], tmp_path,
                STAGEGRAPH_DATASETS=str(SHARED), STAGEGRAPH_HOME=str(tmp_path / "work"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"bm25-med-test\s+ndcg@10\s+0\.\d+\s+0\.\d+", done.stdout), done.stdout


def test_the_readme_example_runs_against_the_installed_package(venv, tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "sg.evaluate" in b)
    model = make_tiny_cross_encoder(tmp_path / "tiny-ce", max_length=512)
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("raise ImportError('shadowed')\n")
    code = example.replace("cross-encoder/ms-marco-MiniLM-L-6-v2", str(model))
    done = _run(venv, [str(venv / "bin" / "python"), "-c", code], tmp_path,
                STAGEGRAPH_HOME=os.environ.get("STAGEGRAPH_HOME", str(REPO / ".stagegraph")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "['bm25', 'dense', 'pool', 'rerank']" in done.stdout
