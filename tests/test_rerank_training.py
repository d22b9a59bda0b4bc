"""Fine-tuning a reranker: data preparation, the loss, and `stagegraph train-reranker` end to end."""

import json

import numpy as np
import pytest
from tiny_models import WORDS, make_tiny_sentence_transformer

from stagegraph.corpora.types import Corpus, Qrels, Queries
from stagegraph.pipeline.compose import Pipeline
from stagegraph.training.train import mining_graph
from stagegraph.pipeline.ranking import Ranking
from stagegraph.stages.rerank.blend import METADATA_FILE
from stagegraph.training.finetune import TrainConfig, build_groups, split_train_dev, truncate_layers


def _toy(n_docs=30, n_queries=12):
    corpus = Corpus([f"d{i}" for i in range(n_docs)], [""] * n_docs, [f"{WORDS[25 + i % 30]} text {i}" for i in range(n_docs)])
    queries = Queries([f"q{i}" for i in range(n_queries)], [f"{WORDS[25 + i % 30]} query" for i in range(n_queries)])
    judged = {f"q{i}": {f"d{i}": 2, f"d{i + 1}": 1, f"d{i + 2}": 0} for i in range(n_queries - 1)}
    return corpus, queries, Qrels(judged)  # the last query has no judgment


def test_split_is_seeded_disjoint_and_keeps_only_judged_queries():
    corpus, queries, qrels = _toy()
    cfg = TrainConfig(dev_fraction=0.3, min_dev=2, seed=5)
    fit, dev = split_train_dev(queries, qrels, corpus, cfg)
    assert not set(fit.ids) & set(dev.ids)
    assert set(fit.ids) | set(dev.ids) == set(queries.ids) - {"q11"}
    assert len(dev) == 3
    again = split_train_dev(queries, qrels, corpus, cfg)
    assert again[1].ids == dev.ids
    other = split_train_dev(queries, qrels, corpus, cfg.model_copy(update={"seed": 6}))
    assert other[1].ids != dev.ids
    capped = split_train_dev(queries, qrels, corpus, cfg.model_copy(update={"max_dev": 1, "min_dev": 1}))
    assert len(capped[1]) == 1


def test_groups_never_use_a_judged_relevant_passage_as_negative_and_change_per_epoch():
    corpus, queries, qrels = _toy()
    rng = np.random.default_rng(0)
    mined = [Ranking.from_scores(np.arange(len(corpus)), rng.random(len(corpus))) for _ in range(len(queries))]
    cfg = TrainConfig(negatives=4, mine_depth=10, positives_per_query=1, seed=1)
    first = build_groups(queries, mined, qrels, corpus, cfg, epoch=0)
    assert len(first) == 11  # one group per judged query; the unjudged one has none
    for group in first:
        qid = queries.ids[queries.texts.index(group.query)]
        relevant = {corpus.row_of(d) for d, g in qrels.for_query(qid).items() if g >= 1}
        assert group.positive in relevant
        assert len(group.negatives) == 4 and not set(group.negatives) & relevant
        top = set(mined[queries.ids.index(qid)].doc_rows[:10].tolist())
        assert set(group.negatives) <= top  # hard negatives: from the first stage's top mine_depth
    assert build_groups(queries, mined, qrels, corpus, cfg, epoch=0) == first
    assert build_groups(queries, mined, qrels, corpus, cfg, epoch=1) != first
    capped = build_groups(queries, mined, qrels, corpus, cfg.model_copy(update={"max_pairs": 12}), epoch=0)
    assert len(capped) == 2  # 12 pairs // (1 positive + 4 negatives)


def test_listwise_loss_rewards_the_positive_in_column_zero():
    import torch

    from stagegraph.training.finetune import _group_loss

    cfg = TrainConfig(negatives=3)
    right = torch.tensor([[3.0, 0.0, 0.0, 0.0]])
    wrong = torch.tensor([[0.0, 3.0, 0.0, 0.0]])
    for loss in ("listwise", "bce"):
        c = cfg.model_copy(update={"loss": loss})
        assert _group_loss(right, c) < _group_loss(wrong, c)


def test_truncate_layers_keeps_the_first_layers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    base = make_tiny_sentence_transformer(tmp_path / "base")
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    first = model.base_model.encoder.layer[0]
    truncate_layers(model, 1)
    assert len(model.base_model.encoder.layer) == 1 and model.config.num_hidden_layers == 1
    assert model.base_model.encoder.layer[0] is first


def _write_beir(root, corpus, queries, qrels):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": i, "title": t, "text": x}) for i, t, x in zip(corpus.ids, corpus.titles, corpus.texts))
    )
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": i, "text": t}) for i, t in queries))
    rows = [f"{q}\t{d}\t{g}" for q, docs in qrels.judgments.items() for d, g in docs.items()]
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")


def test_train_reranker_command_writes_a_model_the_reranker_loads(tmp_path):
    from stagegraph.cli.app import main
    from stagegraph.pipeline.stage import Environment
    from stagegraph.stages.rerank.cross_encoder import CrossEncoderReranker

    corpus, queries, qrels = _toy()
    _write_beir(tmp_path / "data", corpus, queries, qrels)
    config = tmp_path / "graph.yaml"
    config.write_text("pipeline:\n  - {type: bm25, name: bm25, k: 20}\n  - {type: cross_encoder, name: rerank, depth: 8, k: 5, max_length: 64}\n")
    base = make_tiny_sentence_transformer(tmp_path / "base")
    out, report = tmp_path / "model", tmp_path / "result.json"
    rc = main([
        "--quiet", "--work-dir", str(tmp_path / "work"), "train-reranker", str(config), "--dataset", str(tmp_path / "data"),
        "--base", str(base), "--out", str(out), "--layers", "1", "--epochs", "2", "--negatives", "2",
        "--max-length", "32", "--dev-fraction", "0.3", "--json", str(report),
    ])
    result = json.loads(report.read_text())
    assert rc == (0 if result["dev"]["blended"]["ndcg@10"] > result["dev"]["first_stage"]["ndcg@10"] else 1)
    assert result["mined_by"] == "bm25" and result["fit_queries"] + result["dev"]["queries"] == 11
    assert result["pairs"] > 0 and len(result["epoch_loss"]) == 2
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["blend"] == result["blend"] and meta["train"]["layers"] == 1
    assert 0.0 <= meta["blend"]["alpha"] <= 1.0
    # the blend saved is the best on dev: it is never below the first stage there (alpha 0 is the first stage)
    assert result["dev"]["blended"]["ndcg@10"] >= result["dev"]["first_stage"]["ndcg@10"]
    stage = CrossEncoderReranker(str(out), max_length=32, depth=8, k=5)
    stage.warm_up(Environment(corpus, work_dir=tmp_path / "work", progress=False))
    assert stage.blend.alpha == meta["blend"]["alpha"]
    assert stage.bound.scoring.scorer.model.config.num_hidden_layers == 1
    first = [Ranking.from_scores(np.arange(8), np.linspace(1, 0, 8)) for _ in range(2)]
    assert all(len(r) == 5 for r in stage.run(queries.select([0, 1]), [first]))


def test_candidates_from_a_run_file_replace_mining_and_unknown_ids_are_refused(tmp_path, capsys):
    from stagegraph.cli.app import main

    corpus, queries, qrels = _toy()
    _write_beir(tmp_path / "data", corpus, queries, qrels)
    config = tmp_path / "graph.yaml"
    config.write_text("pipeline:\n  - {type: bm25, name: bm25, k: 20}\n  - {type: cross_encoder, name: rerank, depth: 8, k: 5, max_length: 64}\n")
    run = tmp_path / "first.trec"
    lines = [f"{q} Q0 d{(i + j) % 30} {j + 1} {10 - j} other" for i, q in enumerate(queries.ids) for j in range(10)]
    run.write_text("\n".join(lines) + "\n")
    base = make_tiny_sentence_transformer(tmp_path / "base")
    common = ["--quiet", "--work-dir", str(tmp_path / "work"), "train-reranker", str(config), "--dataset",
              str(tmp_path / "data"), "--base", str(base), "--layers", "1", "--epochs", "1", "--negatives", "2",
              "--max-length", "32", "--dev-fraction", "0.3"]
    report = tmp_path / "result.json"
    rc = main([*common, "--candidates", str(run), "--out", str(tmp_path / "model"), "--json", str(report)])
    result = json.loads(report.read_text())
    assert rc in (0, 1) and result["mined_by"] == "first.trec" and result["pairs"] > 0
    assert result["dev"]["depth"] == 8  # the pipeline's reranker depth still sets the dev check
    assert not (tmp_path / "work" / "bm25").exists()  # nothing was mined: the BM25 index was never built
    bad = tmp_path / "bad.trec"
    bad.write_text("q0 Q0 not-a-doc 1 1.0 x\n")
    capsys.readouterr()
    assert main([*common, "--candidates", str(bad), "--out", str(tmp_path / "m2")]) == 2
    assert "not in the corpus" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


def test_negatives_are_mined_from_the_reranker_input(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text(
        "pipeline:\n  - parallel:\n      - {type: bm25, name: a, k: 50}\n      - {type: bm25, name: b, k: 50, k1: 1.2}\n"
        "  - {type: pool, name: pool, method: rrf, k: 40}\n  - {type: cross_encoder, name: rerank, depth: 40}\n"
    )
    miner, reranker = mining_graph(Pipeline.from_yaml(config))
    assert reranker.name == "rerank" and miner.output == "pool" and set(miner.names) == {"a", "b", "pool"}
    plain = tmp_path / "plain.yaml"
    plain.write_text("pipeline:\n  - {type: bm25, name: a, k: 50}\n")
    miner, reranker = mining_graph(Pipeline.from_yaml(plain))
    assert reranker is None and miner.output == "a"


def test_bad_training_settings_are_refused():
    with pytest.raises(ValueError, match="negatives\n  Input should be greater than or equal to 1"):
        TrainConfig(negatives=0)
    with pytest.raises(ValueError, match="loss\n  Input should be 'listwise' or 'bce'"):
        TrainConfig(loss="pointwise")


def test_a_time_budget_shrinks_the_plan_after_timing_the_first_steps(tmp_path):
    from stagegraph.training.finetune import CALIBRATION_STEPS, load_base, train_cross_encoder

    corpus, queries, qrels = _toy()
    base = make_tiny_sentence_transformer(tmp_path / "base")
    rng = np.random.default_rng(0)
    mined = [Ranking.from_scores(np.arange(len(corpus)), rng.random(len(corpus))) for _ in range(len(queries))]
    cfg = TrainConfig(base=str(base), layers=1, epochs=3, negatives=2, positives_per_query=1, batch_groups=1,
                      max_length=32, time_budget_s=1e-6)
    model, tokenizer = load_base(cfg)
    stats = train_cross_encoder(
        model, tokenizer, lambda e: build_groups(queries, mined, qrels, corpus, cfg, e), corpus, cfg, progress=False
    )
    assert stats.planned_steps == 33 and stats.stopped_early
    assert stats.steps == CALIBRATION_STEPS + 1 and stats.epochs_done == 1


def test_cached_reranker_trains_once_per_data_and_settings(tmp_path):
    from stagegraph.corpora.types import Dataset
    from stagegraph.training.train import cached_reranker

    corpus, queries, qrels = _toy()
    dataset = Dataset("toy", corpus, queries, {"train": qrels})
    config = tmp_path / "graph.yaml"
    config.write_text("pipeline:\n  - {type: bm25, name: bm25, k: 20}\n  - {type: cross_encoder, name: rerank, depth: 8, max_length: 64}\n")
    base = make_tiny_sentence_transformer(tmp_path / "base")
    cfg = TrainConfig(base=str(base), layers=1, epochs=1, negatives=2, max_length=32, max_pairs=9, min_dev=2)
    said: list[str] = []
    kwargs = dict(work_dir=tmp_path / "work", progress=False, say=said.append)
    first, result = cached_reranker(Pipeline.from_yaml(config), dataset, cfg, **kwargs)
    assert result is not None and (first / METADATA_FILE).is_file() and first.parent == tmp_path / "work" / "models"
    again, cached = cached_reranker(Pipeline.from_yaml(config), dataset, cfg, **kwargs)
    assert again == first and cached is None and "fine-tuned earlier" in said[-1]
    other, _ = cached_reranker(Pipeline.from_yaml(config), dataset, cfg.model_copy(update={"seed": 1}), **kwargs)
    assert other != first


def test_an_earlier_reranker_can_be_the_base_of_a_new_fine_tune(tmp_path):
    from stagegraph.stages.rerank.pair_head import PairBertForSequenceClassification, from_bert
    from stagegraph.training.finetune import load_base, save_model

    base = make_tiny_sentence_transformer(tmp_path / "base")
    first = from_bert(str(base), layers=2)
    from transformers import AutoTokenizer

    save_model(first, AutoTokenizer.from_pretrained(str(base)), tmp_path / "first")
    model, _ = load_base(TrainConfig(base=str(tmp_path / "first"), layers=None))
    assert isinstance(model, PairBertForSequenceClassification) and model.config.num_hidden_layers == 2
    import torch

    for a, b in zip(first.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_fine_tuning_learns_on_a_small_fixed_case(tmp_path):
    """The trained model ranks each training group's positive above its negatives far more often than
    the untrained one, and its loss falls: the loop learns, it does not just run."""
    import torch

    from stagegraph.training.finetune import _group_loss, load_base, train_cross_encoder

    corpus, queries, qrels = _toy(n_docs=30, n_queries=12)
    base = make_tiny_sentence_transformer(tmp_path / "base")
    cfg = TrainConfig(base=str(base), layers=None, epochs=12, negatives=3, mine_depth=30, positives_per_query=1,
                      batch_groups=4, lr=1e-3, head_lr=1e-2, max_length=32, head="cosine", freeze_embeddings=False, seed=0, device="cpu")
    rng = np.random.default_rng(0)
    mined = [Ranking.from_scores(np.arange(len(corpus)), rng.random(len(corpus))) for _ in range(len(queries))]
    groups = build_groups(queries, mined, qrels, corpus, cfg, epoch=0)
    model, tokenizer = load_base(cfg)

    def measure() -> tuple[float, float]:
        model.eval()
        size = 1 + cfg.negatives
        texts = [corpus.doc_text(r) for g in groups for r in (g.positive, *g.negatives)]
        feats = tokenizer([g.query for g in groups for _ in range(size)], texts, truncation="longest_first",
                          max_length=cfg.max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**feats).logits.view(len(groups), size)
        return float(_group_loss(logits, cfg)), float((logits.argmax(dim=1) == 0).float().mean())

    loss_before, top_before = measure()
    train_cross_encoder(model, tokenizer, lambda epoch: groups, corpus, cfg, progress=False)
    loss_after, top_after = measure()
    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)
    assert top_after >= 0.8 and top_after > top_before + 0.3, (top_before, top_after)
