"""`stagegraph index CONFIG --dataset D`: build (or check) every index and model a pipeline needs.

With `--executor ray` the dense encoding runs on a Ray cluster (`stagegraph.scale.encode`); the
index and the embedding cache it writes are the ones a local build writes."""

from __future__ import annotations

import argparse
import time

from stagegraph.cli.app import (
    Exit,
    add_config_arg,
    add_dataset_args,
    add_executor_args,
    environment,
    executor_config,
    load_dataset,
    load_pipeline,
    opened_executor,
    say,
)
from stagegraph.pipeline import threads
from stagegraph.pipeline.stage import bind_stage, release_stage


def register(sub) -> None:
    p = sub.add_parser("index", help="build (or check) every index and model a pipeline needs")
    add_config_arg(p)
    add_dataset_args(p)
    add_executor_args(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args)
    config = executor_config(args, pipeline)
    dataset = load_dataset(args)
    env = environment(args, dataset)
    with opened_executor(args, config) as executor:
        if executor is not None:  # dense encoding sharded over the cluster
            env.encode = executor.encoder()
        threads.apply(threads.threads_for(1))  # builds and encoding: every core
        for step in pipeline.steps:
            t0 = time.perf_counter()
            release_stage(bind_stage(step.stage, env))
            say(args, f"{step.name}: ready in {time.perf_counter() - t0:.1f} s")
    say(args, f"Artefacts are under {env.work_dir}/; `stagegraph eval` and `search` reuse them.")
    return Exit.OK
