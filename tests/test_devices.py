"""Device selection (`stagegraph.indexes.devices`) and the `device` setting of the encoder, reranker and fine-tuning.

The CUDA-only tests at the end run where torch sees a GPU (they were run on an H200) and skip elsewhere.
"""

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_cross_encoder, make_tiny_sentence_transformer

from stagegraph.corpora.types import Corpus, Queries
from stagegraph.indexes.devices import DeviceError, resolve_device
from stagegraph.indexes.encoder import Encoder
from stagegraph.errors import StageError
from stagegraph.pipeline.ranking import Ranking
from stagegraph.pipeline.stage import Environment
from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker
from stagegraph.training.finetune import TrainConfig, train_cross_encoder

HAS_CUDA = torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without a CUDA GPU")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def corpus():
    words = "gpu vram quantisation gguf onnx runtime embedding rerank dense sparse index".split()
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(30)]
    return Corpus([f"d{i}" for i in range(30)], [""] * 30, texts)


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory):
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("dev") / "ce")


def test_auto_follows_what_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device(None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device(" CPU ") == "cpu"


def test_cuda_index_beyond_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceError, match=r"sees 1 CUDA GPU"):
        resolve_device("cuda:1")


def test_a_missing_gpu_or_a_bad_name_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="set device: cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="is not a device"):
        resolve_device("gpu")


@needs_no_cuda
def test_stages_fail_at_warm_up_when_the_gpu_is_not_there(tiny_ce, corpus, tmp_path):
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    with pytest.raises(StageError, match="sees no CUDA GPU"):
        CrossEncoderReranker(str(tiny_ce), device="cuda").warm_up(env)
    from stagegraph.stages.retrieve.dense import DenseRetriever  # imported here: FAISS is not needed by the GPU tests

    bi = make_tiny_sentence_transformer(tmp_path / "bi")
    with pytest.raises(StageError, match="sees no CUDA GPU"):
        DenseRetriever(model=str(bi), device="cuda").warm_up(env)


@needs_no_cuda
def test_fine_tuning_on_a_missing_gpu_fails_before_training(tiny_ce, corpus):
    with pytest.raises(StageError, match="cannot fine-tune"):
        train_cross_encoder(object(), None, lambda epoch: [], corpus, TrainConfig(device="cuda"), progress=False)


def test_the_device_is_a_speed_setting_not_part_of_the_fingerprint(tiny_ce, tmp_path):
    from stagegraph.stages.retrieve.dense import DenseRetriever

    assert CrossEncoderReranker(str(tiny_ce), device="cpu").fingerprint() == CrossEncoderReranker(str(tiny_ce)).fingerprint()
    bi = str(make_tiny_sentence_transformer(tmp_path / "bi"))
    assert DenseRetriever(model=bi, device="cpu").fingerprint() == DenseRetriever(model=bi, device="cuda").fingerprint()


@needs_cuda
def test_reranking_on_the_gpu_gives_the_cpu_order(tiny_ce, corpus, tmp_path):
    env = Environment(corpus, work_dir=tmp_path, progress=False)
    queries = Queries(["q1", "q2"], ["gguf quantisation", "dense embedding index"])
    rng = np.random.default_rng(0)
    upstream = [Ranking.from_scores(rng.choice(30, 20, replace=False), rng.random(20)) for _ in range(2)]
    runs = {}
    for device in ("cpu", "cuda"):
        stage = CrossEncoderReranker(str(tiny_ce), max_length=64, depth=20, k=20, blend=1.0, device=device)
        stage.warm_up(env)
        runs[device] = stage.run(queries, [upstream])
    for cpu, gpu in zip(runs["cpu"], runs["cuda"]):
        np.testing.assert_allclose(gpu.provenance[stage.name].model_score, cpu.provenance[stage.name].model_score, atol=1e-4)


@needs_cuda
def test_encoding_on_the_gpu_matches_the_cpu(tmp_path):
    bi = make_tiny_sentence_transformer(tmp_path / "bi")
    texts = ["gguf files on a small gpu", "int8 quantisation of a reranker", "faiss flat index"]
    cpu = Encoder(str(bi), device="cpu", progress=False).encode(texts)
    gpu_encoder = Encoder(str(bi), device="cuda", progress=False)
    assert gpu_encoder.device == "cuda"
    np.testing.assert_allclose(gpu_encoder.encode(texts), cpu, atol=1e-4)
