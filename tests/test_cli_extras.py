"""A command that needs an optional extra which is not installed names the install line, not a bug."""

from __future__ import annotations

import builtins

import pytest

from stagegraph.cli.app import main


@pytest.mark.parametrize("module, extra", [("fastapi", "serve")])
def test_serve_without_its_extra_names_the_pip_line(tmp_path, capsys, monkeypatch, module, extra):
    from stagegraph.collection import Collection

    with Collection.create(tmp_path / "c", {"pipeline": [{"type": "bm25", "name": "bm25", "k": 5}]}) as store:
        store.upsert([{"id": "a", "text": "heat flow"}])
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == module or name.startswith(module.split(".")[0] + "."):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    assert main(["serve", "bm25", "--collection", str(tmp_path / "c"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f'pip install "stagegraph[{extra}]"' in err and "a bug" not in err


def test_only_the_optional_modules_get_an_install_line():
    from stagegraph.cli.app import missing_extra

    assert missing_extra(ModuleNotFoundError("x", name="ray.data")) == (
        "this needs the optional module 'ray', which is not installed: pip install \"stagegraph[ray]\"")
    assert missing_extra(ModuleNotFoundError("x", name="onnxruntime")).endswith('pip install "stagegraph[onnx]"')
    assert missing_extra(ModuleNotFoundError("x", name="nowhere")) is None  # a bug in stagegraph: reported as one
    assert missing_extra(ImportError("x")) is None


def test_a_config_the_collection_was_not_built_for_names_the_exact_rebuild_and_it_works(tmp_path, capsys):
    """`search hybrid` on a BM25-only collection: one line with the rebuild command, which, run as
    printed (NEW_DIR filled in), gives a collection that config searches."""
    import re
    import shlex

    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(4):
        (folder / f"n{i}.md").write_text(f"note {i} about heat flow and wing pressure\n")
    root = tmp_path / "c.sg"
    assert main(["ingest", str(folder), "--collection", str(root), "--config", "bm25", "-q"]) == 0
    assert main(["search", "hybrid", "heat flow", "--collection", str(root), "-q"]) == 2
    err = capsys.readouterr().err
    assert "stage 'dense' needs an index the collection" in err and "its pipeline has the stages bm25" in err
    command = re.search(r"`(stagegraph ingest [^`]+)`", err).group(1)
    assert command == f"stagegraph ingest {folder.resolve()} --collection NEW_DIR --config hybrid"
    argv = [a if a != "NEW_DIR" else str(tmp_path / "new.sg") for a in shlex.split(command)[1:]]
    assert main([*argv, "-q"]) == 0  # the fix, as printed
    assert main(["search", "hybrid", "heat flow", "--collection", str(tmp_path / "new.sg"), "-q"]) == 0
    assert "n0" in capsys.readouterr().out
