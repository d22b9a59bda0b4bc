"""`stagegraph index CONFIG --dataset D`: build (or check) every index and model a pipeline needs."""

from __future__ import annotations

import argparse
import time

from stagegraph.cli.app import Exit, add_config_arg, add_dataset_args, environment, load_dataset, load_pipeline, say


def register(sub) -> None:
    p = sub.add_parser("index", help="build (or check) every index and model a pipeline needs")
    add_config_arg(p)
    add_dataset_args(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args)
    dataset = load_dataset(args)
    env = environment(args, dataset)
    for step in pipeline.steps:
        t0 = time.perf_counter()
        step.stage.warm_up(env)
        say(args, f"{step.name}: ready in {time.perf_counter() - t0:.1f} s")
    say(args, f"Artefacts are under {env.work_dir}/; `stagegraph eval` and `search` reuse them.")
    return Exit.OK
